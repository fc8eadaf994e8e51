"""Starting and stopping the daemons a local cloud needs, each with a pid file
and a log file under one directory, so `down` stops exactly what `up` started."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def wait_until(check: Callable[[], bool], timeout_s: float, what: str,
               pid: int | None = None) -> None:
    """Until check() is true, for at most timeout_s. With the pid of the daemon
    being waited for, a daemon that exits (say its port was taken meanwhile)
    fails at once instead of after the whole timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pid is not None and not alive(pid):
            raise RuntimeError(f"{what} exited before it was ready (see its log)")
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{what} did not become ready within {timeout_s:.0f}s")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child of ours is not alive.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


class ProcessSet:
    """Named daemons under `root`: pids in root/pids, logs in root/logs."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.pids = self.root / "pids"
        self.logs = self.root / "logs"
        self.pids.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)

    def pid(self, name: str) -> int | None:
        path = self.pids / f"{name}.pid"
        try:
            pid = int(path.read_text())
        except (OSError, ValueError):
            return None
        return pid if alive(pid) else None

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> int:
        """Start `argv` unless it already runs; return its pid."""
        if (pid := self.pid(name)) is not None:
            return pid
        log = open(self.logs / f"{name}.log", "ab")
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True,
                                   env={**os.environ, **(env or {})})
        (self.pids / f"{name}.pid").write_text(str(process.pid))
        return process.pid

    def stop(self, name: str, timeout_s: float = 15.0) -> bool:
        """SIGTERM, then SIGKILL after timeout_s. Returns whether it was running."""
        pid = self.pid(name)
        (self.pids / f"{name}.pid").unlink(missing_ok=True)
        if pid is None:
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while alive(pid) and time.monotonic() < deadline:
            _reap(pid)
            time.sleep(0.1)
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
        _reap(pid)
        return True

    def kill(self, name: str) -> None:
        """SIGKILL, for fault tests."""
        pid = self.pid(name)
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            _reap(pid)

    def running(self) -> list[str]:
        return sorted(p.stem for p in self.pids.glob("*.pid") if self.pid(p.stem))


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
