"""DESIGN.md convention 10, checked statically: only the store module imports
the etcd client, only the libvirt driver's package imports libvirt, and the
dashboard imports the cloud only through the client (the API stubs)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("control", "compute-agent/compute_agent", "dashboard", "localcloud", "client/cloudclient")


def importers(module: str) -> set[str]:
    """The source files (relative to the repo) that import `module` or a part of it."""
    found = set()
    for top in SOURCES:
        for path in (ROOT / top).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
                if any(n == module or n.startswith(module + ".") for n in names):
                    found.add(str(path.relative_to(ROOT)))
    return found


def test_only_the_store_imports_the_etcd_client():
    assert importers("pyetcd") == {"control/store/etcd.py"}


def test_only_the_libvirt_driver_imports_libvirt():
    assert importers("libvirt") == {"compute-agent/compute_agent/libvirt_driver/driver.py",
                                    "compute-agent/compute_agent/libvirt_driver/nat_network.py"}


def test_the_dashboard_and_the_client_import_no_server_code():
    server = ("control", "compute_agent", "localcloud")
    for module in server:
        assert not {f for f in importers(module) if f.startswith(("dashboard/", "client/"))}, module
