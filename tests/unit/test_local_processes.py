"""localcloud's waits: a daemon that dies while it is waited for fails the wait
at once (a test cloud whose API lost its port used to wait the full minute)."""

import subprocess
import sys
import time

import pytest

from localcloud.processes import wait_until


def test_a_daemon_that_exits_fails_the_wait_at_once():
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.2)"])
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="the API server exited before it was ready"):
        wait_until(lambda: False, 30, "the API server", pid=process.pid)
    assert time.monotonic() - started < 5  # measured 0.3 s; the wait's bound is 30 s


def test_a_live_daemon_is_waited_for_until_ready():
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        ready_at = time.monotonic() + 0.5
        wait_until(lambda: time.monotonic() > ready_at, 10, "the agent", pid=process.pid)
    finally:
        process.kill()
        process.wait()


def test_down_never_stops_the_machines_libvirtd_or_virtlogd(tmp_path):
    """libvirtd and virtlogd are the machine's, shared by every cloud and test run
    on it: a run that stopped "its" libvirtd at its end killed the guests of a run
    that had found it running (CI: 47 failures, "Failed to connect socket").
    Here they stand as an earlier version recorded them, as this cloud's."""
    from localcloud.cloud import LocalCloud

    cloud = LocalCloud(tmp_path / "cloud")
    stand_ins = {}
    for name in ("libvirtd", "virtlogd"):
        stand_ins[name] = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        cloud.procs.pids.mkdir(parents=True, exist_ok=True)
        (cloud.procs.pids / f"{name}.pid").write_text(str(stand_ins[name].pid))
    try:
        cloud.down()
        assert {name: p.poll() for name, p in stand_ins.items()} == \
            {"libvirtd": None, "virtlogd": None}
    finally:
        for p in stand_ins.values():
            p.kill()
            p.wait()
