"""The schema version and its migrations (control/store/schema.py), on the
in-memory store (it passes the same contract tests as etcd)."""

from __future__ import annotations

from collections import Counter

import pytest

from control.store import keys, schema
from control.store.etcd import Record, Txn
from control.store.memory import MemoryStore


def _nested(record: Record) -> dict | None:
    """A test step's rewrite: flat quota usage -> {"resources": {...}} (None: new already)."""
    return None if "resources" in record.value else {"resources": dict(record.value)}


@pytest.fixture
def two_steps(monkeypatch):
    """MIGRATIONS with a second step that really rewrites records."""
    steps = [*schema.MIGRATIONS,
             schema.Step(2, "quota usage as a map", (keys.quota_usages(),), _nested)]
    monkeypatch.setattr(schema, "MIGRATIONS", steps)
    monkeypatch.setattr(schema, "CURRENT", len(steps))
    return steps


class CountingStore(MemoryStore):
    """Counts the committed puts of each key. `after_list`: run once, after the
    first list of a prefix starting with `after_list_of` was read (so what that
    list returned is stale when its reader writes)."""

    def __init__(self):
        super().__init__()
        self.puts: Counter[str] = Counter()
        self.after_list = None
        self.after_list_of = keys.PREFIX

    def list(self, prefix):
        found = super().list(prefix)
        if self.after_list and prefix.startswith(self.after_list_of):
            hook, self.after_list = self.after_list, None
            hook()
        return found

    def commit_at(self, txn: Txn):
        revision = super().commit_at(txn)
        if revision is not None:
            self.puts.update(list(txn.puts))
        return revision


def test_a_new_cloud_gets_the_current_version():
    store = MemoryStore()
    assert schema.migrate(store) == 0
    assert store.get(keys.schema_version()).value == {"version": schema.CURRENT}


def test_records_without_a_version_are_version_0_and_are_kept():
    store = MemoryStore()
    store.put(keys.flavor("tiny"), {"name": "tiny", "vcpus": 1})
    assert schema.migrate(store) == 0
    assert schema.stored_version(store)[0] == schema.CURRENT
    assert store.get(keys.flavor("tiny")).value == {"name": "tiny", "vcpus": 1}


def test_migrating_again_writes_nothing():
    store = MemoryStore()
    store.put(keys.flavor("tiny"), {"name": "tiny"})
    schema.migrate(store)
    revision = store.revision()
    assert schema.migrate(store) == schema.CURRENT
    assert store.revision() == revision


def test_a_store_newer_than_this_release_is_refused():
    store = MemoryStore()
    store.put(keys.schema_version(), {"version": schema.CURRENT + 1})
    store.put(keys.flavor("tiny"), {"name": "tiny"})
    with pytest.raises(schema.SchemaTooNew, match=f"version {schema.CURRENT + 1}.*newer release"):
        schema.migrate(store)
    assert store.get(keys.flavor("tiny")).value == {"name": "tiny"}


def test_a_step_rewrites_every_record_in_batches(two_steps, monkeypatch):
    monkeypatch.setattr(schema, "BATCH", 3)
    store = CountingStore()
    for n in range(10):
        store.put(keys.quota_usage(f"p{n}"), {"instances": n})
    store.put(keys.quota_usage("new"), {"resources": {"instances": 1}})
    assert schema.migrate(store) == 0
    assert schema.stored_version(store)[0] == 2
    for n in range(10):
        assert store.get(keys.quota_usage(f"p{n}")).value == {"resources": {"instances": n}}
    assert store.get(keys.quota_usage("new")).value == {"resources": {"instances": 1}}
    assert "/cloud/quota/usage/new" not in store.puts  # in the new shape already: not written
    assert all(count == 1 for key, count in store.puts.items() if key != keys.schema_version())


def test_two_replicas_migrating_at_once_apply_each_step_once(two_steps):
    """Replica B migrates the whole store between replica A's read of the records
    and its write: A's batch must fail its compares, and nothing is written twice."""
    store = CountingStore()
    for n in range(5):
        store.put(keys.quota_usage(f"p{n}"), {"instances": n})
    store.put(keys.schema_version(), {"version": 1})
    store.after_list_of = keys.quota_usages()
    store.after_list = lambda: schema.migrate(store)  # B, inside A's step 2
    assert schema.migrate(store) == 1  # A
    assert schema.stored_version(store)[0] == 2
    assert set(store.puts.values()) == {1}, store.puts  # every record, and the version: once
    for n in range(5):
        assert store.get(keys.quota_usage(f"p{n}")).value == {"resources": {"instances": n}}


def test_two_new_replicas_stamp_a_new_cloud_once():
    store = CountingStore()
    store.after_list = lambda: schema.migrate(store)  # B stamps between A's read and its write
    schema.migrate(store)
    assert store.get(keys.schema_version()).value == {"version": schema.CURRENT}
    assert store.puts[keys.schema_version()] == 1
