"""A Celery worker outlives a restart of its Redis: Redis killed (-9) while
the worker runs a task and waits for the next, then started again. The worker
reconnects, acknowledges the task it was running and takes new ones. With
Celery 5.7's own Redis transport it exits instead ("Unrecoverable error",
AttributeError): control/celery_app.py's RedisTransport. Real Redis (with a
password, in the URL as deployed), real worker process, no control plane."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from control.celery_app import create_celery_app
from control.config import ControlConfig, url_password
from control.metering.metrics import redis_client
from localcloud.processes import free_port, port_open, wait_until
from tests.conftest import until
from tests.control.broker_worker import TASK

REPO = Path(__file__).resolve().parents[2]


PASSWORD = "s3cret-pass_word"


class Redis:
    def __init__(self, port: int, log: Path):
        self.port, self.log = port, log
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--requirepass", PASSWORD], stdout=log, stderr=subprocess.STDOUT)
        wait_until(lambda: port_open(self.port), 10, "redis")

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()


@pytest.fixture
def broker(tmp_path):
    redis = Redis(free_port(), tmp_path / "redis.log")
    redis.start()
    yield redis, f"redis://:{PASSWORD}@127.0.0.1:{redis.port}/0"
    redis.kill()


def test_the_password_in_the_url_is_used(broker):
    redis, url = broker
    assert url_password(url) == PASSWORD
    assert redis_client(url).ping()  # the metrics' client
    with socket.create_connection(("127.0.0.1", redis.port), timeout=2) as conn:
        conn.sendall(b"PING\r\n")
        assert conn.recv(100).startswith(b"-NOAUTH")


def wait_file(path: Path, timeout_s: float = 20) -> bool:
    deadline = time.monotonic() + timeout_s
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return path.exists()


def test_worker_outlives_a_redis_restart_during_a_task(broker, tmp_path):
    redis, url = broker
    marks = tmp_path / "marks"
    marks.mkdir()
    log = open(tmp_path / "worker.log", "wb")
    worker = subprocess.Popen([sys.executable, "-m", "tests.control.broker_worker", url, str(marks)],
                              cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    app = create_celery_app(ControlConfig(redis_url=url))
    try:
        app.send_task(TASK, args=["during", 3])
        assert wait_file(marks / "during.started"), "the worker took no task"
        # The worker waits (BRPOP) for its next task while it runs this one.
        until(lambda: any(c.get("cmd") == "brpop" for c in redis_client(url).client_list()), 10,
              "the worker blocked in BRPOP")
        redis.kill()
        time.sleep(1)  # deliberate: Redis stays down for 1 s, the worker's connection lost
        redis.start()
        app.send_task(TASK, args=["after", 0])
        assert wait_file(marks / "after.done"), \
            f"no task ran after the restart (worker exit code {worker.poll()}): " \
            + (tmp_path / "worker.log").read_text()[-3000:]
        assert wait_file(marks / "during.done"), "the task in flight did not finish"
        assert worker.poll() is None
    finally:
        worker.terminate()
        worker.wait(30)
        log.close()
