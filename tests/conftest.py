"""Fixtures shared by the integration tests: a whole local cloud on free ports,
with real etcd, Redis, Celery worker, compute agent, libvirtd and QEMU."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cloudclient.client import CloudClient

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


def log_wait(started: float, timeout_s: float, what) -> None:
    """With WAIT_LOG=<file>, append how long a wait took against its bound, with
    the test's name: how the bounds beside the waits were measured."""
    path = os.environ.get("WAIT_LOG")
    if path:
        test = os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0]
        with open(path, "a") as log:
            log.write(f"{time.monotonic() - started:.2f}\t{timeout_s}\t{test}\t{str(what)[:80]}\n")


def _instance_summary(instance) -> str:
    summary = (f"status {instance.status}, task {instance.task_state or '-'}, "
               f"power {instance.power_state or '-'}, host {instance.host or '-'}")
    return summary + (f", fault {instance.fault.message!r}" if instance.HasField("fault") else "")


class ApiClient(CloudClient):
    """The public API's stubs, logged in, with helpers to wait on instances."""

    # Measured here: a real guest is ACTIVE 0.6-4.9 s after its create (4 at once
    # on a loaded machine: 4.9 s; DESIGN.md says up to 7 s), one on the fake driver
    # in under 1 s; a real guest's delete is gone in 0.1-3.7 s. Callers waiting
    # for more (several boots in a row), or for less, pass their own bound.
    BOOT_TIMEOUT_S = 30
    GONE_TIMEOUT_S = 15

    def wait_status(self, instance_id: str, statuses: set[str], timeout_s: float = BOOT_TIMEOUT_S):
        """The instance once its status is one of `statuses`. Fails the test
        (AssertionError) after timeout_s, saying what the instance last was."""
        from cloudapi.v1 import compute_pb2 as pb

        started = time.monotonic()
        deadline = started + timeout_s
        while True:
            current = self.instances.GetInstance(pb.GetInstanceRequest(id_or_name=instance_id))
            if current.status in statuses:
                log_wait(started, timeout_s, f"{instance_id} {current.status}")
                return current
            if time.monotonic() > deadline:
                raise AssertionError(f"instance {instance_id} not {'/'.join(sorted(statuses))} after "
                                     f"{timeout_s} s: {_instance_summary(current)}")
            time.sleep(0.1)

    def wait_gone(self, instance_id: str, timeout_s: float = GONE_TIMEOUT_S) -> bool:
        """True once the instance is gone (NOT_FOUND). Fails the test
        (AssertionError) after timeout_s, saying what the instance last was."""
        from cloudapi.v1 import compute_pb2 as pb

        started = time.monotonic()
        deadline = started + timeout_s
        while True:
            try:
                current = self.instances.GetInstance(pb.GetInstanceRequest(id_or_name=instance_id))
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    log_wait(started, timeout_s, f"{instance_id} gone")
                    return True
                raise
            if time.monotonic() > deadline:
                raise AssertionError(f"instance {instance_id} still there after {timeout_s} s: "
                                     f"{_instance_summary(current)}")
            time.sleep(0.1)


def until(check, timeout_s: float = 30, what="", every_s: float = 0.1):
    """Call check() until it returns something true, and return that; fail the
    test (AssertionError) after timeout_s, with what check() last returned.
    `what` names the condition; a callable `what` is called for the message
    (to show the state at that moment)."""
    started = time.monotonic()
    deadline = started + timeout_s
    while True:
        result = check()
        if result:
            log_wait(started, timeout_s, what() if callable(what) else (what or check))
            return result
        if time.monotonic() >= deadline:
            label = what() if callable(what) else (what or check)
            raise AssertionError(f"timed out after {timeout_s} s waiting for {label} "
                                 f"(last: {result!r:.500})")
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
    cmdline = json.loads((image_dir / "image.json").read_text())["cmdline"]  # as the catalog has it
    return cache.ensure("image-" + sums["kernel"][:8], "qcow2", cmdline,
                        sums["disk"], sums["kernel"], sums["initrd"])


def start_cloud(name: str, **settings):
    """A private cloud on free ports. `settings` go to LocalCloud (e.g.
    agent_settings={"driver": "fake"} for tests about scale, not hypervisors)."""
    from localcloud.cloud import LocalCloud, Ports

    root = Path(tempfile.mkdtemp(prefix=f"smallcloud-{name}-"))
    control_settings = {"heartbeat_interval_s": 1, **settings.pop("control_settings", {})}
    cloud = LocalCloud(root, ports=Ports.free(), host_name=f"test-{name}-{uuid.uuid4().hex[:6]}",
                       image_dirs=[str(IMAGE_DIR)], control_settings=control_settings, **settings)
    _CLOUD_FAILURES_AT_START[id(cloud)] = _failures_so_far()
    try:
        cloud.up()
        store = make_store(cloud)
        from control.store import keys
        from localcloud.processes import wait_until
        wait_until(lambda: store.get(keys.host(cloud.host_name)) is not None, 60,
                   "registration of the compute agent")
    except BaseException:
        stop_cloud(cloud, name)  # leave no daemons behind, keep the logs
        raise
    return cloud, store


def make_store(cloud):
    from control.store.etcd import Store

    return Store(cloud.etcd_endpoints, timeout_s=3)


# --- each private cloud's logs: kept when something failed while it ran ------
# Under test-output/logs/<name>-<time>-<unique>, so two clouds of one name (two
# modules, two runs) never overwrite each other's. A cloud whose tests all
# passed leaves nothing there, unless KEEP_TEST_LOGS=1.
_SESSION: pytest.Session | None = None
_CLOUD_FAILURES_AT_START: dict[int, int] = {}
_KEPT_LOGS: list[Path] = []


def pytest_sessionstart(session):
    global _SESSION
    _SESSION = session


def _failures_so_far() -> int:
    return _SESSION.testsfailed if _SESSION is not None else 0


def stop_cloud(cloud, name: str) -> None:
    """Stop every process of the cloud and remove its files; first keep its logs
    if a test failed while it ran, or if this is called while an exception is
    on its way out (a failed start, a `finally:` after a failed assertion)."""
    failed = (sys.exc_info()[0] is not None
              or _failures_so_far() > _CLOUD_FAILURES_AT_START.pop(id(cloud), 0))
    if failed or os.environ.get("KEEP_TEST_LOGS") == "1":
        unique = cloud.root.name.rsplit("-", 1)[-1]  # mkdtemp's random part
        target = OUTPUT / "logs" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{unique}"
        shutil.copytree(cloud.root / "logs", target, dirs_exist_ok=True)
        if failed:
            _KEPT_LOGS.append(target)
            print(f"logs of the cloud {name!r} kept in {target}", file=sys.stderr)
    cloud.destroy_everything()


def pytest_terminal_summary(terminalreporter):
    if _KEPT_LOGS:
        terminalreporter.write_sep("-", "logs of the private clouds that saw a failure")
        for path in _KEPT_LOGS:
            terminalreporter.write_line(str(path.relative_to(REPO)))
        # CI prints only this report: the daemons' first tracebacks go with it.
        for path in _KEPT_LOGS:
            for line in first_tracebacks(path):
                terminalreporter.write_line(line)


def first_tracebacks(logs: Path, most: int = 3, lines: int = 30) -> list[str]:
    """The first `most` tracebacks (up to `lines` lines each, from the log line
    that announced it) in the daemon logs kept in `logs`."""
    found: list[str] = []
    for log in sorted(logs.glob("*.log")):
        text = log.read_text(errors="replace").splitlines()
        starts = [n for n, line in enumerate(text) if line.startswith("Traceback")]
        for n in starts[:most - found.count("")]:
            found += ["", f"--- {log.relative_to(REPO)}, line {n + 1}:"]
            found += text[max(0, n - 1):n + lines]
    return found


# --- a skip must be meant ------------------------------------------------------
# Under `make test` (STRICT_SKIPS=1) and in CI (CI=true), a skip fails the test
# unless it is listed here: node id (`*` matches anything) -> what its reason says.
ALLOWED_SKIPS = {
    # The contract suite runs against both drivers; these two are about files on disk.
    "tests/compute_agent/test_driver_contract.py::test_tenant_files_are_private_*[fake]":
        "the fake driver keeps no files",
    "tests/compute_agent/test_driver_contract.py::test_init_host_makes_existing_files_private[fake]":
        "the fake driver keeps no files",
}


def _allowed_skip(nodeid: str, reason: str) -> bool:
    return any(re.fullmatch(re.escape(pattern).replace(r"\*", ".*"), nodeid) and why in reason
               for pattern, why in ALLOWED_SKIPS.items())


def _strict_skips() -> bool:
    return (os.environ.get("STRICT_SKIPS") == "1"
            or os.environ.get("CI", "").lower() in ("1", "true", "yes"))


def _refuse_skip(report) -> None:
    """Turn a skip that is not allowed into a failure that says why."""
    if not report.skipped or hasattr(report, "wasxfail") or not _strict_skips():
        return
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    if _allowed_skip(report.nodeid, reason):
        return
    report.outcome = "failed"
    report.longrepr = (f"skipped ({reason}), and this skip is not in ALLOWED_SKIPS "
                       f"(tests/conftest.py): with STRICT_SKIPS=1 or CI=true a skip fails")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    _refuse_skip(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    report = yield
    _refuse_skip(report)  # a whole module skipped (pytest.importorskip at its top)
    return report


@pytest.fixture(scope="session", autouse=True)
def libvirtd(request):
    """libvirtd before any cloud: started here if the host does not already run
    one, and left running (it is the machine's: other runs share it). Not for a
    run of the unit tier alone (`make unit`: no daemons)."""
    if all(item.nodeid.startswith("tests/unit/") for item in request.session.items):
        yield
        return
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
