"""The proto files document every service, RPC, field, enum and enum value, and
docs/api.md is rendered from them (`make docs`)."""

import functools
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
PROTOS = sorted(p.name for p in (ROOT / "proto" / "cloudapi" / "v1").glob("*.proto"))


@functools.cache
def generated() -> tuple[str, tuple[str, ...]]:
    spec = importlib.util.spec_from_file_location("gen_api_docs", ROOT / "docs" / "gen_api_docs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    text, missing = module.generate()
    return text, tuple(missing)


@pytest.mark.parametrize("proto", PROTOS)
def test_every_service_rpc_and_field_has_a_comment(proto):
    missing = [m for m in generated()[1] if m.startswith(f"cloudapi/v1/{proto}:")]
    assert not missing, ("add a comment (a `// ...` line before it, or one after it on the "
                         "same line) to:\n  " + "\n  ".join(missing))


def test_api_md_is_current():
    current = (ROOT / "docs" / "api.md").read_text()
    assert current == generated()[0], "docs/api.md is stale: run `make docs`"


def test_reference_covers_every_proto_and_service():
    text = generated()[0]
    for proto in PROTOS:
        assert f"## cloudapi/v1/{proto}" in text
    assert "### service EventService" in text
    assert ("| `Watch` | [WatchRequest](#cloudapi.v1.WatchRequest) | stream [Event](#cloudapi.v1.Event) |"
            in text)
    assert "| `page_token` = 2 | `string` |" in text
