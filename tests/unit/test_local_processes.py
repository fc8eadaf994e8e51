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
