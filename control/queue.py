"""Sending work to the Celery workers. The queue carries ids, never objects."""

from __future__ import annotations

from celery import Celery
from kombu.exceptions import OperationalError
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_fixed

from control import deadlines
from control.errors import Unavailable

BUILD_INSTANCE = "cloud.build_instance"
DELETE_INSTANCE = "cloud.delete_instance"
INSTANCE_OPERATION = "cloud.instance_operation"


class TaskQueue:
    def __init__(self, app: Celery, retry_s: float = 0.0):
        self.app = app
        self.retry_s = retry_s

    def send(self, task_name: str, *args: str) -> None:
        """Publish one task; Unavailable if Redis cannot take it.

        While serving an API call, a Redis that cannot be reached (restarting,
        or its master dead until Sentinel promotes the replica) is tried again
        for up to retry_s and at most half the call's remaining deadline, so a
        failover of a few seconds does not reach tenants. Loops and tasks (the
        reconciler, the scaling controller) try once: they come back anyway,
        and must not stall on Redis. A publish whose reply was lost may be sent
        twice: tasks are safe to run twice."""
        budget = self._budget()
        try:
            for attempt in Retrying(stop=stop_after_delay(budget), wait=wait_fixed(0.2),
                                    retry=retry_if_exception_type(OperationalError),
                                    reraise=True):
                with attempt:
                    self.app.send_task(task_name, args=list(args))
        except OperationalError as exc:
            raise Unavailable(f"task queue (Redis) unavailable: {exc}") from exc

    def _budget(self) -> float:
        if not deadlines.serving():
            return 0.0
        left = deadlines.remaining()
        return self.retry_s if left is None else max(0.0, min(self.retry_s, left / 2))
