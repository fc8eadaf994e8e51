"""Fixtures shared by the integration tests: a whole local cloud on free ports,
with real etcd, Redis, Celery worker, compute agent, libvirtd and QEMU."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from control.client import CloudClient

REPO = Path(__file__).resolve().parent.parent
IMAGE_DIR = REPO / "images" / "build"
OUTPUT = REPO / "test-output"


# --- programs run by this test process must be in scripts/programs.txt --------
# tests/unit/test_programs.py finds them in the source; this catches at run time
# what a scan can't see (a program named in a variable, say).
_UNLISTED_RUNS: dict[str, str] = {}


def _audit_programs(event: str, args: tuple) -> None:
    if event == "subprocess.Popen":
        executable, argv = args[0], args[1]
    elif event in ("os.exec", "os.posix_spawn"):
        executable, argv = args[0], args[1]
    else:
        return
    if isinstance(argv, (str, bytes)):
        argv = [argv.split()[0]] if argv.split() else []
    path = os.fsdecode(executable or (argv[0] if argv else ""))
    if not path or path == sys.executable or ("/" in path and os.path.abspath(path).startswith(str(REPO))):
        return  # the project's own python and venv programs
    from tests.programs import listed_programs

    name = os.path.basename(path)
    if name not in listed_programs() and not name.startswith("python"):
        _UNLISTED_RUNS.setdefault(name, " ".join(map(os.fsdecode, argv))[:200])


sys.addaudithook(_audit_programs)


def pytest_sessionfinish(session, exitstatus):
    if _UNLISTED_RUNS:
        lines = "\n".join(f"  {name}: {argv}" for name, argv in sorted(_UNLISTED_RUNS.items()))
        print(f"\nprograms run by the tests but missing from scripts/programs.txt:\n{lines}",
              file=sys.stderr)
        session.exitstatus = 1


class ApiClient(CloudClient):
    """The public API's stubs, logged in, with helpers to wait on instances."""

    def wait_status(self, instance_id: str, statuses: set[str], timeout_s: float = 120):
        from cloudapi.v1 import compute_pb2 as pb

        deadline = time.monotonic() + timeout_s
        while True:
            current = self.instances.GetInstance(pb.GetInstanceRequest(id_or_name=instance_id))
            if current.status in statuses or time.monotonic() > deadline:
                return current
            time.sleep(0.1)

    def wait_gone(self, instance_id: str, timeout_s: float = 60) -> bool:
        from cloudapi.v1 import compute_pb2 as pb

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                self.instances.GetInstance(pb.GetInstanceRequest(id_or_name=instance_id))
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    return True
                raise
            time.sleep(0.1)
        return False


def until(check, timeout_s: float = 30, what: str = "", every_s: float = 0.1):
    """Call check() until it returns something true, and return that; fail the
    test after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what or check}"
        time.sleep(every_s)


def cached_image(cache_dir: Path, image_dir: Path = IMAGE_DIR, kernel: str = "vmlinuz"):
    """The built guest image as an agent's image cache holds it: the agent's own
    ImageCache, fed from the build directory instead of the control plane."""
    import hashlib

    from compute_agent.image_cache import ImageCache

    files = {"disk": image_dir / "disk.qcow2", "kernel": image_dir / kernel,
             "initrd": image_dir / "initrd.img"}
    sums = {part: hashlib.sha256(path.read_bytes()).hexdigest() for part, path in files.items()}
    cache = ImageCache(cache_dir, lambda _image_id, part: [files[part].read_bytes()])
    return cache.ensure("image-" + sums["kernel"][:8], "qcow2", "console=ttyS0 root=/dev/vda rw quiet",
                        sums["disk"], sums["kernel"], sums["initrd"])


def start_cloud(name: str, **settings):
    """A private cloud on free ports. `settings` go to LocalCloud (e.g.
    agent_settings={"driver": "fake"} for tests about scale, not hypervisors)."""
    from localcloud.cloud import LocalCloud, Ports

    root = Path(tempfile.mkdtemp(prefix=f"smallcloud-{name}-"))
    control_settings = {"heartbeat_interval_s": 1, **settings.pop("control_settings", {})}
    cloud = LocalCloud(root, ports=Ports.free(), host_name=f"test-{name}-{uuid.uuid4().hex[:6]}",
                       image_dirs=[str(IMAGE_DIR)], control_settings=control_settings, **settings)
    try:
        cloud.up()
        store = make_store(cloud)
        from control import keys
        from localcloud.processes import wait_until
        wait_until(lambda: store.get(keys.host(cloud.host_name)) is not None, 60,
                   "registration of the compute agent")
    except BaseException:
        stop_cloud(cloud, name)  # leave no daemons behind, keep the logs
        raise
    return cloud, store


def make_store(cloud):
    from control.store import Store

    return Store(cloud.etcd_endpoints, timeout_s=3)


def stop_cloud(cloud, name: str) -> None:
    # Keep the logs for a failed run to read.
    target = OUTPUT / "logs" / name
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(cloud.root / "logs", target, dirs_exist_ok=True)
    cloud.destroy_everything()


@pytest.fixture(scope="session", autouse=True)
def libvirtd():
    """One libvirtd for the whole run, before any cloud: started here (and
    stopped at the end) only if the host does not already run one."""
    from localcloud.cloud import LocalCloud

    owner = LocalCloud(Path(tempfile.mkdtemp(prefix="smallcloud-libvirtd-")))
    owner.ensure_libvirtd()
    yield
    owner.destroy_everything()


@pytest.fixture(scope="session")
def cloud_and_store() -> Iterator[tuple]:
    cloud, store = start_cloud("main")
    yield cloud, store
    stop_cloud(cloud, "main")


@pytest.fixture(scope="session")
def cloud(cloud_and_store):
    return cloud_and_store[0]


@pytest.fixture(scope="session")
def store(cloud_and_store):
    return cloud_and_store[1]


def login(cloud, user: str = "demo", project: str = "") -> ApiClient:
    client = ApiClient(cloud.endpoint)
    client.login(user, cloud.password(user), project)
    return client


@pytest.fixture(scope="session")
def api(cloud) -> ApiClient:
    """The demo project's member."""
    return login(cloud)


@pytest.fixture(scope="session")
def admin(cloud) -> ApiClient:
    return login(cloud, "admin")
