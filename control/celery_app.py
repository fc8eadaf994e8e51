"""The Celery application, built from a ControlConfig (one factory for the API and workers)."""

from __future__ import annotations

from celery import Celery

from control.config import ControlConfig


def visibility_timeout_s(config: ControlConfig) -> int:
    return int(config.longest_task_s() + 120)


def create_celery_app(config: ControlConfig) -> Celery:
    app = Celery("cloud", broker=config.redis_url)
    # sentinel:// URLs: Celery asks the sentinels for the master of this name.
    sentinel = {"master_name": config.redis_sentinel_master} \
        if config.redis_url.startswith("sentinel://") else {}
    app.conf.update(
        # A task is acknowledged only when it finished, and a worker that dies
        # mid-task hands it back: tasks are written to be safe to run twice.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # Redis redelivers unacknowledged tasks after this: above the longest task
        # (else a slow task would run twice at once). A task lost with a killed
        # worker comes back after it; the reconciler fails its instance sooner.
        broker_transport_options={"visibility_timeout": visibility_timeout_s(config),
                                  "socket_connect_timeout": 2,
                                  "socket_timeout": 5, **sentinel},
        broker_connection_timeout=2,
        broker_connection_retry_on_startup=True,
        # Publishing to a Redis that is down fails fast, so the API can say so.
        task_publish_retry_policy={"max_retries": 1, "interval_start": 0,
                                   "interval_step": 0.2, "interval_max": 0.5},
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        worker_hijack_root_logger=False,
    )
    return app
