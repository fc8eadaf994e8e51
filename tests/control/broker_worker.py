"""A Celery worker built by control/celery_app.py with one task that marks
files (for test_broker_reconnect.py): python -m tests.control.broker_worker URL DIR"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from control.celery_app import create_celery_app
from control.config import ControlConfig

TASK = "test.mark"


def main(url: str, marks: Path) -> None:
    app = create_celery_app(ControlConfig(redis_url=url))

    @app.task(name=TASK)
    def mark(name: str, seconds: float) -> None:
        (marks / f"{name}.started").touch()
        time.sleep(seconds)
        (marks / f"{name}.done").touch()

    app.worker_main(["worker", "--pool=threads", "--concurrency=2", "--loglevel=INFO",
                     "--without-gossip", "--without-mingle", "--without-heartbeat"])


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
