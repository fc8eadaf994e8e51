"""An in-process Store for fast tests of pure logic: no etcd, no threads of its
own except one per callback watch (Store.watch).

It keeps etcd's semantics where the control plane relies on them, and passes
the same contract tests as the real Store (tests/store_contract.py):

- one global revision, starting at 1 and bumped once per transaction that
  changes something (all its writes share it; a transaction that changes
  nothing, such as a delete of a missing key, keeps the revision);
- per key a create revision and a mod revision; a missing key's mod revision
  is 0, so `expect` of a record with mod_revision 0 holds for an absent key;
- transactions compared and applied atomically under one lock, refused as
  etcd refuses them (InvalidArgument: a key both put and deleted, more than
  128 compares or operations, a request over etcd's 1.5 MiB default);
- history kept until `compact`, so reads at a past revision and watches from a
  start revision work; older ones raise RevisionCompacted;
- watches (ChangeFeed) that queue every change, in revision order, one batch
  per transaction, with previous values;
- leases with a TTL in whole seconds, at least 2 (etcd's minimum with its
  default election timeout), expired by `clock` (injectable: ManualClock);
  expiry is checked at the start of every call, so with a ManualClock it
  happens on the first call after `advance`.

Maintenance calls answer for one member, "memory", whose sizes are the bytes
of keys and JSON values kept (history included); the "file" only shrinks on
`defragment`. There are never alarms.

Not modelled: several members, failures (nothing raises Unavailable), watch
responses carrying several revisions, and etcd's removal, at compaction, of
the deletes made at the compaction revision itself.
"""

from __future__ import annotations

import builtins
import itertools
import json
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from control.errors import InvalidArgument, OutOfRange
from control.store.etcd import Change, ChangeFeed, MemberStatus, Record, RevisionCompacted, Store, Txn

MAX_TXN_OPS = 128                # etcd's --max-txn-ops default
MAX_REQUEST_BYTES = 1536 * 1024  # etcd's --max-request-bytes default
MIN_LEASE_TTL_S = 2              # etcd's minimum with --election-timeout 1000 ms
ENDPOINT = "memory"


class ManualClock:
    """A clock for leases that moves only when told: MemoryStore(clock=ManualClock())."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass(frozen=True)
class _Kv:
    value: str  # the JSON stored
    create_revision: int
    mod_revision: int
    lease: int = 0


@dataclass(frozen=True)
class _Event:
    """One key's change in one revision: kv None, deleted; prev None, created."""

    key: str
    kv: _Kv | None
    prev: _Kv | None


def _load(kv: _Kv | None) -> dict[str, Any] | None:
    return None if kv is None else json.loads(kv.value)


class MemoryChangeFeed(ChangeFeed):
    """A ChangeFeed the MemoryStore fills directly (under its lock: never blocks)."""

    def __init__(self, prefixes: builtins.list[str], after_revision: int, max_pending: int,
                 cancel: Callable[[int], None], with_prev: bool):
        super().__init__(prefixes, after_revision, max_pending, cancel)
        self.with_prev = with_prev

    def _offer(self, batch: builtins.list[Change]) -> None:
        if self._closed.is_set() or self._failed:
            return
        self._deliver(batch)


@dataclass
class _Lease:
    ttl_s: int
    expires: float


class MemoryStore(Store):
    """Store's interface over dicts in this process (see the module's docstring).

    A subclass of Store so that code typed for Store takes it; it overrides
    every method that talks to etcd and inherits only those written in terms
    of the others (commit, apply, update, put_if_absent)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._lock = threading.RLock()
        self._kvs: dict[str, _Kv] = {}
        self._revision = 1
        self._compacted = 0  # reads and watches before this revision fail
        # Every revision since the compaction: (revision, its events in order).
        self._history: list[tuple[int, list[_Event]]] = []
        self._leases: dict[int, _Lease] = {}
        self._feeds: dict[int, MemoryChangeFeed] = {}
        self._ids = itertools.count(7 << 56)  # lease and watch ids, etcd-sized
        self._db_size = 0  # the high-water mark of the bytes kept, until a defragment

    # ------------------------------------------------------------------ writing

    def _write(self, puts: Iterable[tuple[str, str, int]], deletes: Iterable[str]) -> int:
        """Apply puts (key, JSON, lease) then deletes as one revision (none if
        nothing changes); tell the watches. Call with the lock held."""
        revision = self._revision + 1
        events = []
        for key, value, lease in puts:
            prev = self._kvs.get(key)
            kv = _Kv(value, prev.create_revision if prev else revision, revision, lease)
            self._kvs[key] = kv
            events.append(_Event(key, kv, prev))
        for key in deletes:
            if (prev := self._kvs.pop(key, None)) is not None:
                events.append(_Event(key, None, prev))
        if not events:
            return self._revision
        self._revision = revision
        self._history.append((revision, events))
        for feed in self._feeds.values():
            self._offer(feed, revision, events)
        return revision

    def _offer(self, feed: MemoryChangeFeed, revision: int, events: list[_Event]) -> None:
        if revision <= feed.after_revision:
            return
        batch = [Change(e.key, _load(e.kv), revision, _load(e.prev) if feed.with_prev else None)
                 for e in events if e.key.startswith(feed.prefixes)]
        if batch:
            feed._offer(batch)

    def _check(self, txn: Txn) -> None:
        """Refuse, as etcd does, what it would refuse (nothing is written)."""
        compares = len(txn.unchanged) + len(txn.absent) + len(txn.empty)
        ops = len(txn.puts) + len(txn.deletes) + len(txn.prefix_deletes)
        if compares > MAX_TXN_OPS or ops > MAX_TXN_OPS:
            raise InvalidArgument("the state store refused the write: "
                                  "etcdserver: too many operations in txn request")
        if any(k in txn.deletes or k.startswith(tuple(txn.prefix_deletes)) for k in txn.puts):
            raise InvalidArgument("the state store refused the write: "
                                  "etcdserver: duplicate key given in txn request")
        size = sum(len(k) + len(json.dumps(v)) for k, v in txn.puts.items()) + \
            sum(map(len, [*txn.unchanged, *txn.absent, *txn.empty, *txn.deletes, *txn.prefix_deletes]))
        if size > MAX_REQUEST_BYTES:
            raise InvalidArgument("the state store refused the write: etcdserver: request is too large")

    def _holds(self, txn: Txn) -> bool:
        return (all((kv.mod_revision if (kv := self._kvs.get(k)) else 0) == rev
                    for k, rev in txn.unchanged.items())
                and not any(k in self._kvs for k in txn.absent)
                and not any(k.startswith(p) for p in txn.empty for k in self._kvs))

    def commit_at(self, txn: Txn) -> int | None:
        self._check(txn)
        puts = [(k, json.dumps(v, sort_keys=True), 0) for k, v in txn.puts.items()]
        with self._lock:
            self._expire()
            if not self._holds(txn):
                return None
            deletes = [*txn.deletes, *(k for p in txn.prefix_deletes for k in self._keys(p))]
            return self._write(puts, deletes)

    def put(self, key: str, value: dict[str, Any]) -> None:
        with self._lock:
            self._expire()
            self._write([(key, json.dumps(value, sort_keys=True), 0)], [])

    # ------------------------------------------------------------------ reading

    def _keys(self, prefix: str) -> builtins.list[str]:
        return sorted(k for k in self._kvs if k.startswith(prefix))

    def get(self, key: str) -> Record | None:
        with self._lock:
            self._expire()
            kv = self._kvs.get(key)
            return Record(key, json.loads(kv.value), kv.mod_revision) if kv else None

    def list(self, prefix: str) -> builtins.list[Record]:
        return self.list_at_revision(prefix)[0]

    def list_at_revision(self, prefix: str, revision: int | None = None,
                         ) -> tuple[builtins.list[Record], int]:
        with self._lock:
            self._expire()
            kvs = {k: self._kvs[k] for k in self._keys(prefix)}
            if revision is not None:
                self._readable(revision)
                for rev, events in reversed(self._history):  # undo what came after
                    if rev <= revision:
                        break
                    for e in events:  # (a key changes at most once in a revision)
                        if e.key.startswith(prefix):
                            if e.prev is None:
                                del kvs[e.key]
                            else:
                                kvs[e.key] = e.prev
            records = [Record(k, json.loads(kvs[k].value), kvs[k].mod_revision) for k in sorted(kvs)]
            return records, self._revision if revision is None else revision

    def _readable(self, revision: int) -> None:
        if revision > self._revision:
            raise OutOfRange(f"revision {revision} is a future revision (the store is at "
                             f"{self._revision})")
        if revision < self._compacted:
            raise RevisionCompacted(revision - 1, self._compacted)

    def creation(self, key: str) -> tuple[int, int]:
        with self._lock:
            self._expire()
            kv = self._kvs.get(key)
            return (kv.create_revision if kv else 0), self._revision

    def revision(self) -> int:
        with self._lock:
            self._expire()
            return self._revision

    def ping(self) -> None:
        self.revision()

    # ------------------------------------------------------------------ watching

    def watch_changes(self, prefixes: builtins.list[str], after_revision: int, prev: bool = True,
                      max_pending: int = 10_000) -> ChangeFeed:
        with self._lock:
            self._expire()
            watch_id = next(self._ids)
            feed = MemoryChangeFeed(prefixes, after_revision, max_pending,
                                    lambda _: self._drop_feed(watch_id), prev)
            feed.watch_id = watch_id
            if after_revision + 1 < self._compacted:
                feed._fail(RevisionCompacted(after_revision, self._compacted))
                return feed
            for revision, events in self._history:
                self._offer(feed, revision, events)
            self._feeds[watch_id] = feed
        return feed

    def _drop_feed(self, watch_id: int) -> None:
        with self._lock:
            self._feeds.pop(watch_id, None)

    def watch(self, prefix: str, after_revision: int,
              on_changes: Callable[[builtins.list[Change]], None],
              on_error: Callable[[Exception], None]) -> None:
        """Like Store.watch: on_changes and on_error from a thread of this watch's own
        (it ends when the store is closed)."""
        feed = self.watch_changes([prefix], after_revision, prev=False, max_pending=sys.maxsize)

        def deliver() -> None:
            while not feed.closed:
                try:
                    batch = feed.get()
                except Exception as exc:  # the watch ended (compacted)
                    on_error(exc)
                    return
                if batch:
                    on_changes(batch)

        threading.Thread(target=deliver, name=f"memory-watch-{prefix}", daemon=True).start()

    def close(self) -> None:
        with self._lock:
            feeds = builtins.list(self._feeds.values())
        for feed in feeds:
            feed.close()

    def compact(self, revision: int) -> None:
        with self._lock:
            self._readable(revision)
            if revision <= self._compacted:
                raise RevisionCompacted(revision - 1, self._compacted)
            self._compacted = revision
            # Events from the compaction revision on stay: a read at it undoes
            # only later ones, and a watch may start at it.
            self._history = [(rev, events) for rev, events in self._history if rev >= revision]

    # ------------------------------------------------------------------ leases

    def _grant(self, ttl_s: float) -> int:
        # Store asks etcd for whole seconds, rounded up; etcd raises that to its minimum.
        ttl = max(MIN_LEASE_TTL_S, int(ttl_s + 0.999))
        lease_id = next(self._ids)
        self._leases[lease_id] = _Lease(ttl, self._clock() + ttl)
        return lease_id

    def _revoke(self, lease_id: int) -> None:
        if self._leases.pop(lease_id, None) is not None:
            self._write([], [k for k, kv in sorted(self._kvs.items()) if kv.lease == lease_id])

    def _expire(self) -> None:
        """Revoke the leases whose time is up, each in its own revision as etcd does."""
        now = self._clock()
        for lease_id, lease in sorted(self._leases.items(), key=lambda item: item[1].expires):
            if lease.expires > now:
                break
            self._revoke(lease_id)

    def create_leased(self, key: str, value: dict[str, Any], ttl_s: float) -> int | None:
        with self._lock:
            self._expire()
            if key in self._kvs:
                return None
            lease_id = self._grant(ttl_s)
            self._write([(key, json.dumps(value, sort_keys=True), lease_id)], [])
            return lease_id

    def put_expiring(self, key: str, value: dict[str, Any], ttl_s: float) -> None:
        with self._lock:
            self._expire()
            self._write([(key, json.dumps(value, sort_keys=True), self._grant(ttl_s))], [])

    def keep_alive(self, lease_id: int) -> bool:
        with self._lock:
            self._expire()
            lease = self._leases.get(lease_id)
            if lease is None:
                return False
            lease.expires = self._clock() + lease.ttl_s
            return True

    def revoke_lease(self, lease_id: int) -> None:
        with self._lock:
            self._expire()
            self._revoke(lease_id)

    # ------------------------------------------------------------------ maintenance

    def _bytes_kept(self) -> int:
        """Keys and values of every revision kept: the history since the
        compaction, and the values written before it that are still current."""
        kept = [(e.key, e.kv) for _, events in self._history for e in events]
        kept += [(k, kv) for k, kv in self._kvs.items() if kv.mod_revision < self._compacted]
        return sum(len(k) + (len(kv.value) if kv else 0) for k, kv in kept)

    def member_statuses(self) -> builtins.list[MemberStatus]:
        with self._lock:
            in_use = self._bytes_kept()
            self._db_size = max(self._db_size, in_use)
            return [MemberStatus(ENDPOINT, member_id=1, version="memory", db_size=self._db_size,
                                 db_size_in_use=in_use, is_leader=True, revision=self._revision)]

    def alarms(self) -> builtins.list[tuple[int, str]]:
        return []

    def disarm_nospace(self) -> None:
        pass

    def defragment(self, address: str) -> None:
        with self._lock:
            self._db_size = self._bytes_kept()
