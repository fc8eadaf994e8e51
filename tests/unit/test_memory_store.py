"""The store contract (tests/store_contract.py) against the in-memory store
(control/store/memory.py), and what only it has: a clock tests move by hand.
No daemons: the whole file runs in well under a second."""

from __future__ import annotations

import inspect

import pytest

from control.errors import ResourceExhausted
from control.store.etcd import Change, Store, Txn
from control.store.memory import ManualClock, MemoryStore
from tests.store_contract import Backend, StoreContract


class TestMemoryStore(StoreContract):
    @pytest.fixture
    def backend(self):
        clock = ManualClock()
        store = MemoryStore(clock=clock)
        # Changes are queued as they are committed: a feed's get returns at once;
        # Store.watch's thread calls back within milliseconds.
        yield Backend(store, clock.advance, expiry_lag_s=0.0, delivery_s=2.0)
        store.close()


def test_every_etcd_call_is_overridden():
    """MemoryStore inherits from Store only what is written in terms of the other calls."""
    inherited = {name for name, member in inspect.getmembers(MemoryStore, inspect.isfunction)
                 if not name.startswith("__") and member is getattr(Store, name, None)}
    assert inherited == {"_safe", "_replace_watch_stream", "_member",  # never called
                         "commit", "apply", "update", "put_if_absent"}


def test_leases_expire_by_the_clock_on_the_next_call():
    clock = ManualClock()
    store = MemoryStore(clock=clock)
    store.create_leased("/lock/a", {"holder": "one"}, ttl_s=10)
    feed = store.watch_changes(["/lock/"], store.revision())
    clock.advance(9.9)
    assert store.get("/lock/a") is not None and feed.get(timeout=0) is None
    clock.advance(0.1)
    assert feed.get(timeout=0) is None  # nothing called the store yet
    deleted_at = store.revision()
    assert feed.get(timeout=0) == [Change("/lock/a", None, deleted_at, {"holder": "one"})]


def test_a_watcher_that_falls_behind_is_told_so():
    store = MemoryStore()
    feed = store.watch_changes(["/k/"], store.revision(), max_pending=3)
    for i in range(4):
        store.commit(Txn().put(f"/k/{i}", {}))
    for _ in range(3):
        assert feed.get(timeout=0)
    with pytest.raises(ResourceExhausted):
        feed.get(timeout=0)


def test_a_closed_store_ends_its_watches():
    store = MemoryStore()
    feed = store.watch_changes(["/k/"], store.revision())
    store.close()
    assert feed.closed and feed.get(timeout=0) is None
    store.commit(Txn().put("/k/a", {}))  # no feed left to tell


def test_sizes_shrink_with_compaction_then_defragmentation():
    store = MemoryStore()
    for i in range(10):
        store.commit(Txn().put("/k/a", {"i": i, "pad": "x" * 100}))
    (before,) = store.member_statuses()
    store.compact(store.revision())
    (compacted,) = store.member_statuses()
    assert compacted.db_size_in_use < before.db_size_in_use == compacted.db_size
    store.defragment(compacted.endpoint)
    (defragmented,) = store.member_statuses()
    assert defragmented.db_size == defragmented.db_size_in_use == compacted.db_size_in_use
