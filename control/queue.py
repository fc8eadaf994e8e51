"""Sending work to the Celery workers. The queue carries ids, never objects."""

from __future__ import annotations

from celery import Celery
from kombu.exceptions import OperationalError

from control.errors import Unavailable

BUILD_INSTANCE = "cloud.build_instance"
DELETE_INSTANCE = "cloud.delete_instance"
INSTANCE_OPERATION = "cloud.instance_operation"


class TaskQueue:
    def __init__(self, app: Celery):
        self.app = app

    def send(self, task_name: str, *args: str) -> None:
        try:
            self.app.send_task(task_name, args=list(args))
        except OperationalError as exc:
            raise Unavailable(f"task queue (Redis) unavailable: {exc}") from exc
