"""The Redis password in redis_url, and how long an enqueue may retry."""

from __future__ import annotations

from control import deadlines
from control.celery_app import create_celery_app
from control.config import ControlConfig, url_password
from control.queue import TaskQueue


def test_url_password():
    assert url_password("redis://127.0.0.1:6379/0") is None
    assert url_password("redis://:pw@127.0.0.1:6379/0") == "pw"
    assert url_password("redis://:p%40ss@h:6379/0") == "p@ss"
    assert url_password("sentinel://a:26379/0;sentinel://:pw@b:26379/0") == "pw"


def test_enqueue_retries_only_while_serving_a_call_and_within_its_deadline():
    queue = TaskQueue(create_celery_app(ControlConfig()), retry_s=10)
    assert queue._budget() == 0  # a loop or a task: one attempt
    token = deadlines.start(None)  # a call without a deadline
    try:
        assert queue._budget() == 10
    finally:
        deadlines.end(token)
    token = deadlines.start(4.0)
    try:
        assert 1.9 < queue._budget() <= 2.0  # half what is left
    finally:
        deadlines.end(token)
