"""A stuck etcd watch stream (control/store/etcd.py) must not fail every later watch:
the scheduler's host table (control/placement/scheduler.py) is built on watches. Real
etcd (the session cloud's); a stuck stream is made with a real socket that
accepts connections and never answers."""

from __future__ import annotations

import socket
import time
import uuid

import grpc
import pytest
from pyetcd import etcdrpc
from pyetcd.watch import Watcher

from control.errors import Unavailable
from control.store import keys
from control.store.etcd import Store


def silent_listener() -> tuple[socket.socket, int]:
    """A TCP port that completes connections (the kernel does) but never speaks."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    return server, server.getsockname()[1]


def watch_and_collect(store: Store, prefix: str) -> tuple[list, list]:
    changes: list = []
    errors: list = []
    store.watch(prefix, store.revision(), changes.extend, errors.append)
    return changes, errors


def wait_for(check, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture
def fresh_store(cloud):
    store = Store(cloud.etcd_endpoints, timeout_s=1)
    yield store
    store.close()


def test_a_stuck_watch_stream_is_replaced(fresh_store):
    """A watch stream that never answers (seen in CI: every build of a worker
    failed with WatchTimedOut for 30 s, until it was restarted; later one create
    failed UNAVAILABLE when the scheduler's first watch timed out): the watch
    gets a new stream and works, the first time it is asked for."""
    server, port = silent_listener()
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stuck = Watcher(etcdrpc.WatchStub(channel), timeout=1)
        fresh_store._client.watcher = stuck
        prefix = keys.PREFIX + f"/watch-test/{uuid.uuid4().hex}/"
        changes, errors = watch_and_collect(fresh_store, prefix)
        assert fresh_store._client.watcher is not stuck
        fresh_store.put(prefix + "a", {"x": 1})
        assert wait_for(lambda: changes), "the new watch saw nothing"
        assert changes[0].key == prefix + "a" and not errors
    finally:
        server.close()


def test_a_watch_that_times_out_twice_is_unavailable(fresh_store, monkeypatch):
    """If the new stream does not answer either, etcd is down for this client:
    Unavailable, which the API answers as UNAVAILABLE (retry later)."""
    server, port = silent_listener()
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        monkeypatch.setattr(fresh_store._client, "get_watcher",
                            lambda: Watcher(etcdrpc.WatchStub(channel), timeout=1))
        fresh_store._client.watcher = fresh_store._client.get_watcher()
        prefix = keys.PREFIX + f"/watch-test/{uuid.uuid4().hex}/"
        with pytest.raises(Unavailable, match="WatchTimedOut"):
            watch_and_collect(fresh_store, prefix)
    finally:
        server.close()
