"""Render the API reference (docs/api.md) from the proto files' comments.

    python docs/gen_api_docs.py           # write docs/api.md (what `make docs` runs)
    python docs/gen_api_docs.py --check   # exit 1 if docs/api.md is stale

protoc (grpc_tools) parses proto/cloudapi/v1/*.proto with source info, so every
service, RPC, message, field, enum and enum value comes with the comments
written next to it. Every service, RPC, field, enum and enum value must have
one: the missing ones are listed, and the command exits with status 1.
"""

from __future__ import annotations

import argparse
import importlib.resources
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PROTO_DIR = PROTO_ROOT / "cloudapi" / "v1"
OUTPUT = ROOT / "docs" / "api.md"

# FileDescriptorProto / DescriptorProto / ... field numbers, as SourceCodeInfo paths use them.
FILE_MESSAGE, FILE_ENUM, FILE_SERVICE, FILE_SYNTAX = 4, 5, 6, 12
MESSAGE_FIELD, MESSAGE_NESTED, MESSAGE_ENUM = 2, 3, 4
ENUM_VALUE = 2
SERVICE_METHOD = 2

SCALARS = {1: "double", 2: "float", 3: "int64", 4: "uint64", 5: "int32", 6: "fixed64",
           7: "fixed32", 8: "bool", 9: "string", 12: "bytes", 13: "uint32", 15: "sfixed32",
           16: "sfixed64", 17: "sint32", 18: "sint64"}
TYPE_MESSAGE, TYPE_ENUM = 11, 14
LABEL_REPEATED = 3


@dataclass
class Comment:
    text: str
    line: int  # 1-based line of the element


def descriptor_set(protos: list[Path]):
    """The protos as a FileDescriptorSet with source info (comments)."""
    from google.protobuf import descriptor_pb2
    from grpc_tools import protoc

    include = importlib.resources.files("grpc_tools") / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set.pb"
        args = ["protoc", f"-I{PROTO_ROOT}", f"-I{include}", "--include_source_info",
                f"--descriptor_set_out={out}", *[str(p.relative_to(PROTO_ROOT)) for p in protos]]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed on " + " ".join(args[4:]))
        files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    return files


def _clean(raw: str) -> str:
    lines = [line[1:] if line.startswith(" ") else line for line in raw.strip("\n").split("\n")]
    return "\n".join(lines).strip()


def comments(file) -> dict[tuple[int, ...], Comment]:
    found = {}
    for loc in file.source_code_info.location:
        parts = [p for p in (_clean(loc.leading_comments), _clean(loc.trailing_comments)) if p]
        found[tuple(loc.path)] = Comment("\n".join(parts), loc.span[0] + 1 if loc.span else 0)
    return found


def file_comment(file) -> str:
    """The comment block at the top of the file (before `syntax`)."""
    for loc in file.source_code_info.location:
        if tuple(loc.path) == (FILE_SYNTAX,):
            blocks = [*loc.leading_detached_comments, loc.leading_comments]
            return "\n\n".join(_clean(c) for c in blocks if c.strip())
    return ""


def _anchor(full_name: str) -> str:
    return full_name.lstrip(".")


def _link(type_name: str, package: str) -> str:
    name = type_name.lstrip(".")
    short = name[len(package) + 1:] if name.startswith(package + ".") else name
    if name.startswith("google."):
        return f"`{short}`"
    return f"[{short}](#{_anchor(name)})"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _limits():
    """The request size limits (control/api/limits.py)."""
    sys.path[:0] = [str(ROOT), str(ROOT / "client")]
    from control.api import limits

    return limits


def _limit_text(limit, field) -> str:
    """A field's limit for its description: "(at most 63 characters)"."""
    unit = "bytes" if SCALARS.get(field.type) == "bytes" else "characters"
    parts = []
    if limit.items:
        parts.append(f"at most {limit.items} items")
    if limit.length:
        parts.append(f"{'each ' if limit.items else ''}at most {limit.length} {unit}")
    return "(" + ", ".join(parts) + ")"


class Renderer:
    def __init__(self, files):
        self.files = sorted(files.file, key=lambda f: f.name)
        self.limits = _limits()
        self.missing: list[str] = []
        self.maps: dict[str, tuple] = {}  # map entry type -> (key field, value field)
        for f in self.files:
            for m in self._messages(f.message_type, f".{f.package}"):
                if m[1].options.map_entry:
                    self.maps[m[0]] = (m[1].field[0], m[1].field[1])

    def _messages(self, messages, scope, path=(FILE_MESSAGE,)):
        """(full name, message, path) of every message, nested ones too, in file order."""
        for i, m in enumerate(messages):
            name = f"{scope}.{m.name}"
            here = (*path, i)
            yield name, m, here
            yield from self._messages(m.nested_type, name, (*here, MESSAGE_NESTED))

    def _need(self, found: dict, path: tuple, what: str, file) -> str:
        comment = found.get(path)
        if comment is None or not comment.text:
            line = f":{comment.line}" if comment else ""
            self.missing.append(f"{file.name}{line}: {what} has no comment")
            return ""
        return comment.text

    def _type(self, field, package: str) -> str:
        if field.type_name in self.maps:
            key, value = self.maps[field.type_name]
            return f"map<{self._type(key, package)}, {self._type(value, package)}>"
        name = (_link(field.type_name, package) if field.type in (TYPE_MESSAGE, TYPE_ENUM)
                else f"`{SCALARS.get(field.type, '?')}`")
        if field.label == LABEL_REPEATED:
            return f"repeated {name}"
        if field.proto3_optional:
            return f"optional {name}"
        return name

    def render(self) -> str:
        out = ["# API reference", "",
               "Generated from `proto/cloudapi/v1/*.proto` by `make docs` "
               "(`docs/gen_api_docs.py`): edit the comments in the protos, not this file.", "",
               "Every RPC but `IdentityService.Login` needs a token (`authorization: Bearer "
               "<token>` metadata); `HostService` is served only on the agents' listener, over "
               "mutual TLS (each host's certificate). The API server also serves gRPC health "
               "checking and, unless `reflection_enabled` is off, server reflection (`grpcurl`).",
               "", *self._limits_intro(), "", "## Contents", ""]
        for f in self.files:
            out.append(f"- [{f.name}](#{_anchor(f.name)})")
            for s in f.service:
                out.append(f"  - [{s.name}](#{_anchor(f'{f.package}.{s.name}')})")
        out.append("")
        for f in self.files:
            out += self._file(f)
        return "\n".join(out).rstrip() + "\n"

    def _limits_intro(self) -> list[str]:
        limits = self.limits
        public = limits.receive_limit(limits.public_services())
        agents = limits.receive_limit(limits.agent_listener_services())
        return ["Every string and bytes field of a request has a maximum length, and every "
                "repeated field a maximum number of items (one table: `control/api/limits.py`; "
                "each field's is in its description, \"(at most ...)\"). A string's length counts "
                "characters, a bytes field's bytes. The control plane refuses a request over a "
                "limit with `INVALID_ARGUMENT` naming the field and its limit (e.g. `user_data is "
                "70000 bytes; at most 65536`) before anything is written. A message larger than "
                f"a server receives at all ({public} bytes on the API port, {agents} on the agent "
                "listener: the largest request the limits allow, plus 1 MiB) is refused by gRPC "
                "with `RESOURCE_EXHAUSTED`. `ComputeAgent`'s requests are built by the control "
                "plane from fields checked this way; the agents do not check them again."]

    def _file(self, f) -> list[str]:
        found = comments(f)
        pkg = f.package
        out = [f'<a id="{_anchor(f.name)}"></a>', "", f"## {f.name}", ""]
        if text := file_comment(f):
            out += [text, ""]
        for si, s in enumerate(f.service):
            full = f"{pkg}.{s.name}"
            out += [f'<a id="{full}"></a>', "", f"### service {s.name}", ""]
            text = self._need(found, (FILE_SERVICE, si), f"service {full}", f)
            out += [text, ""] if text else []
            out += ["| RPC | Request | Response | Description |", "|---|---|---|---|"]
            for mi, m in enumerate(s.method):
                text = self._need(found, (FILE_SERVICE, si, SERVICE_METHOD, mi),
                                  f"rpc {full}.{m.name}", f)
                request = ("stream " if m.client_streaming else "") + _link(m.input_type, pkg)
                response = ("stream " if m.server_streaming else "") + _link(m.output_type, pkg)
                out.append(f"| `{m.name}` | {request} | {response} | {_cell(text)} |")
            out.append("")
        for name, m, path in self._messages(f.message_type, f".{pkg}"):
            if m.options.map_entry:
                continue
            out += self._message(name, m, path, found, f)
        for ei, e in enumerate(f.enum_type):
            out += self._enum(f".{pkg}.{e.name}", e, (FILE_ENUM, ei), found, f)
        return out

    def _message(self, name, m, path, found, f) -> list[str]:
        short = name.lstrip(".")
        out = [f'<a id="{short}"></a>', "", f"### {short[len(f.package) + 1:]}", ""]
        if (comment := found.get(path)) and comment.text:
            out += [comment.text, ""]
        if m.field:
            out += ["| Field | Type | Description |", "|---|---|---|"]
            oneofs = [o.name for o in m.oneof_decl]
            for fi, field in enumerate(m.field):
                text = self._need(found, (*path, MESSAGE_FIELD, fi), f"field {short}.{field.name}", f)
                if field.HasField("oneof_index") and not field.proto3_optional:
                    text = f"(one of `{oneofs[field.oneof_index]}`) {text}"
                limit = self.limits.LIMITS.get(f"{short[len(f.package) + 1:]}.{field.name}")
                if limit is not None:
                    text = f"{text} {_limit_text(limit, field)}"
                out.append(f"| `{field.name}` = {field.number} | {self._type(field, f.package)} | "
                           f"{_cell(text)} |")
        else:
            out.append("No fields.")
        out.append("")
        for ei, e in enumerate(m.enum_type):
            out += self._enum(f"{name}.{e.name}", e, (*path, MESSAGE_ENUM, ei), found, f)
        return out

    def _enum(self, name, e, path, found, f) -> list[str]:
        short = name.lstrip(".")
        out = [f'<a id="{short}"></a>', "", f"### enum {short[len(f.package) + 1:]}", ""]
        text = self._need(found, path, f"enum {short}", f)
        out += [text, ""] if text else []
        out += ["| Value | Number | Description |", "|---|---|---|"]
        for vi, v in enumerate(e.value):
            text = self._need(found, (*path, ENUM_VALUE, vi), f"enum value {short}.{v.name}", f)
            out.append(f"| `{v.name}` | {v.number} | {_cell(text)} |")
        out.append("")
        return out


def generate(protos: list[Path] | None = None) -> tuple[str, list[str]]:
    """The reference as markdown, and what lacks a comment."""
    renderer = Renderer(descriptor_set(protos or sorted(PROTO_DIR.glob("*.proto"))))
    return renderer.render(), renderer.missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="do not write; exit 1 if docs/api.md is stale or comments are missing")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    text, missing = generate()
    status = 0
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is stale: run `make docs`", file=sys.stderr)
            status = 1
    else:
        args.output.write_text(text)
        print(f"wrote {args.output}")
    for item in missing:
        print(f"missing comment: {item}", file=sys.stderr)
    return 1 if missing else status


if __name__ == "__main__":
    sys.exit(main())
