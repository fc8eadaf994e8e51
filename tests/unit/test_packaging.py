"""The client distribution (client/: the gRPC stubs, the Python client and
cloudctl) installs and runs alone: a billing system or a laptop needs neither
libvirt, numpy, Celery nor an etcd client to talk to the cloud."""

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CLIENT = REPO / "client"
# What only the control plane and the agents need (distribution -> module).
SERVER_ONLY = {"libvirt-python": "libvirt", "numpy": "numpy", "celery": "celery",
               "etcd-sdk-python": "pyetcd", "redis": "redis", "lxml": "lxml", "pycdlib": "pycdlib",
               "flask": "flask", "smallcloud": "control"}
# Third-party modules the client may import, and the distribution giving each.
CLIENT_MODULES = {"grpc": "grpcio", "google": "protobuf", "click": "click", "rich": "rich"}


def client_dependencies() -> set[str]:
    project = tomllib.loads((CLIENT / "pyproject.toml").read_text())["project"]
    return {d.split(">")[0].split("=")[0].split("[")[0].strip() for d in project["dependencies"]}


def imported_top_modules() -> dict[str, str]:
    """Every top-level module cloudclient imports -> the first file importing it."""
    found: dict[str, str] = {}
    for path in sorted((CLIENT / "cloudclient").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level
                     else [])
            for name in names:
                found.setdefault(name.split(".")[0], str(path.relative_to(REPO)))
    return found


def test_the_client_declares_no_server_dependency():
    assert client_dependencies().isdisjoint(SERVER_ONLY)


def test_the_client_imports_only_the_stdlib_its_stubs_and_its_declared_dependencies():
    allowed = set(sys.stdlib_module_names) | {"cloudclient", "cloudapi"}
    for module, where in imported_top_modules().items():
        if module in allowed:
            continue
        assert module in CLIENT_MODULES, f"{where} imports {module!r}, not a dependency of the client"
        assert CLIENT_MODULES[module] in client_dependencies(), (module, where)


BLOCKER = """
import importlib.abc, sys
BLOCKED = set(sys.argv[1].split(","))
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"the client imported {name}")
sys.meta_path.insert(0, Block())
sys.argv = ["cloudctl", *sys.argv[2:]]
from cloudclient.cli import main
main()
"""


def test_cloudctl_runs_with_the_server_side_modules_missing():
    blocked = ",".join([*SERVER_ONLY.values(), "compute_agent", "dashboard", "localcloud"])
    for args in (["--help"], ["instance", "create", "--help"], ["usage", "--help"], ["events", "--help"]):
        run = subprocess.run([sys.executable, "-c", BLOCKER, blocked, *args], capture_output=True,
                             text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        assert "Usage:" in run.stdout
