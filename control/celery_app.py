"""The Celery application, built from a ControlConfig (one factory for the API and workers)."""

from __future__ import annotations

from celery import Celery
from kombu.transport import redis as kombu_redis

from control.config import ControlConfig, url_password


class _KeepClient:
    """A kombu Redis transport that keeps its client once its connection is closed.

    Celery 5.7 cleans up a lost broker connection twice: collect(), which
    drops the transport's client, then close(). When the channel's first
    close failed (the worker was waiting in BRPOP on the dead socket), the
    second hands the worker's in-flight tasks back to Redis through that
    client: AttributeError, and the worker exits ("Unrecoverable error"); the
    acks of the tasks it was running fail the same way. So a Redis restart or
    a Sentinel failover during a task killed every worker. Kept, the client
    reaches Redis again (the new master after a failover). The same path
    (maybe_restore_messages -> restore_visible) is reported upstream in
    celery/celery#10205; drop this class once kombu keeps its client.
    """

    _kept = None

    @property
    def client(self):
        return self._kept

    @client.setter
    def client(self, value) -> None:
        if value is not None:
            self._kept = value


class RedisTransport(_KeepClient, kombu_redis.Transport):
    pass


class SentinelTransport(_KeepClient, kombu_redis.SentinelTransport):
    pass


def visibility_timeout_s(config: ControlConfig) -> int:
    return int(config.longest_task_s() + 120)


def create_celery_app(config: ControlConfig) -> Celery:
    sentinel_url = config.redis_url.startswith("sentinel://")
    transport = SentinelTransport if sentinel_url else RedisTransport
    app = Celery("cloud", broker=config.redis_url)
    # sentinel:// URLs: Celery asks the sentinels for the master of this name,
    # giving them the URLs' password too (kombu gives it only to the master).
    sentinel = {"master_name": config.redis_sentinel_master,
                "sentinel_kwargs": {"password": url_password(config.redis_url),
                                    "socket_connect_timeout": 2, "socket_timeout": 5}} \
        if sentinel_url else {}
    app.conf.update(
        # kombu's transport, made to outlive a Redis restart (above).
        broker_transport=f"{__name__}:{transport.__name__}",
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
        # Publishing to a Redis that is down fails fast; the API tries again
        # within its call's deadline (control/queue.py), then says so.
        task_publish_retry_policy={"max_retries": 1, "interval_start": 0,
                                   "interval_step": 0.2, "interval_max": 0.5},
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        worker_hijack_root_logger=False,
    )
    return app
