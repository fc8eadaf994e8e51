"""The stored state's schema version, and the steps that bring old state up to it.

etcd holds one key, keys.schema_version(): {"version": N}. Every API server and
Celery worker calls migrate(store) when it starts, before it serves:

- no version key and no record: a new cloud; the current version is written;
- no version key but records: version 0, the layout of commit 57c6319 (the
  last before the version key); the steps from 0 are applied;
- a version newer than this code knows: SchemaTooNew, and the process does not
  start (an older release must not write records it cannot read).

Safe with several replicas starting at once, without a leader lock (the lock's
lease would add a wait of its TTL when a replica died holding it, and a step
must be safe to run twice anyway): every write of a step is a transaction that
compares the version key (a replica that finds the version moved stops and
re-reads) and the rewritten record's mod_revision (two replicas rewriting one
record: one wins, the other re-reads it and finds nothing left to do). The
step's last transaction moves the version on, compared likewise, so it moves
once. A rewrite is idempotent: it returns None for a record already in the new
shape. Rewrites go in batches (etcd refuses a transaction of more than 128
operations), so a big store migrates in many transactions, each guarded.

Adding a step: append a Step to MIGRATIONS (its `version` is the one it makes,
len(MIGRATIONS) is the current version), naming the prefixes whose records it
rewrites and a rewrite function from a record's old value to its new one. The
models still read the old shapes (a replica of the previous release may write
one during a rolling upgrade); the step lets a later release stop reading them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from tenacity import retry, retry_if_exception_type, stop_after_delay, wait_fixed

from control.errors import CloudError, Conflict, Unavailable
from control.store import keys
from control.store.etcd import Record, Txn

log = logging.getLogger(__name__)

BATCH = 100  # rewrites per transaction (+ the version compare), under etcd's 128 operations
ATTEMPTS = 50  # transactions lost to another replica before giving up (each loss is progress)


class StoreLike(Protocol):
    """What migrate needs: the etcd Store, or the unit tests' MemoryStore."""

    def get(self, key: str) -> Record | None: ...
    def list(self, prefix: str) -> list[Record]: ...
    def commit(self, txn: Txn) -> bool: ...


class SchemaTooNew(CloudError):
    """The store was migrated by a newer release than this one."""


@dataclass(frozen=True)
class Step:
    """Version `version` - 1 -> `version`: rewrite every record under `prefixes`."""

    version: int
    what: str
    prefixes: tuple[str, ...] = ()
    # A record's value in the new shape, or None if it needs no change (already new).
    rewrite: Callable[[Record], dict[str, Any] | None] = lambda record: None


MIGRATIONS: list[Step] = [
    # 0 -> 1: the layout of 57c6319 read as is. The reorganisation of issue 16
    # moved code, not keys; the shapes that change with it (quota limits and
    # usage as name -> amount maps, allocations over several providers) are read
    # in both shapes by their models. This step stamps the version, so the next
    # change of shape has a version to start from.
    Step(1, "stamp the version on the layout of commit 57c6319"),
]

CURRENT = len(MIGRATIONS)


def stored_version(store: StoreLike) -> tuple[int, Record | None]:
    """The store's schema version and its record (None: no version key; then 0)."""
    record = store.get(keys.schema_version())
    return (int(record.value["version"]), record) if record else (0, None)


def _guard(txn: Txn, record: Record | None) -> Txn:
    """Commit only if the version key is still as read."""
    return txn.expect(record) if record else txn.expect_absent(keys.schema_version())


def _is_new_cloud(store: StoreLike) -> bool:
    # Leader locks are leased and come and go; anything else is state.
    leaders = keys.leader("x")[:-1]
    return not any(not r.key.startswith(leaders) for r in store.list(keys.PREFIX + "/"))


def _rewrite_batch(store: StoreLike, step: Step, record: Record | None) -> bool | None:
    """Try to commit one batch of `step`'s rewrites. True: committed (more may
    remain); False: none remain; None: lost to a concurrent write (read again)."""
    changes = []
    for prefix in step.prefixes:
        for found in store.list(prefix):
            new = step.rewrite(found)
            if new is not None and new != found.value:
                changes.append((found, new))
            if len(changes) == BATCH:
                break
    if not changes:
        return False
    txn = _guard(Txn(), record)
    for found, new in changes[:BATCH]:
        txn.expect(found).put(found.key, new)
    return True if store.commit(txn) else None


def migrate(store: StoreLike) -> int:
    """Bring the store to CURRENT; return the version it was at (0: no version key,
    new cloud or not). Idempotent: on a current store it only reads. Raises
    SchemaTooNew on a newer store."""
    first: int | None = None
    lost = 0  # transactions lost to another writer: each is another's progress, but bounded
    while lost < ATTEMPTS:
        version, record = stored_version(store)
        first = version if first is None else first
        if version > CURRENT:
            raise SchemaTooNew(
                f"the state store has schema version {version}, and this release knows versions up "
                f"to {CURRENT}: it was upgraded by a newer release; run that release (or newer), "
                "not this one")
        if version == CURRENT:
            return first
        if record is None and _is_new_cloud(store):
            # (Lost: another replica stamped it; read it again.)
            if store.commit(_guard(Txn(), None).put(keys.schema_version(), {"version": CURRENT})):
                log.info("new cloud: schema version %d", CURRENT)
                return first
            lost += 1
            continue
        step = MIGRATIONS[version]
        batch = _rewrite_batch(store, step, record)
        if batch is False:  # every record rewritten: move the version on
            if store.commit(_guard(Txn(), record).put(keys.schema_version(), {"version": step.version})):
                log.info("schema migrated to version %d: %s", step.version, step.what)
                continue
        if batch is not True:
            lost += 1
    raise Conflict("the schema migration kept losing to concurrent writes; start again")


@retry(retry=retry_if_exception_type(Unavailable), wait=wait_fixed(1), stop=stop_after_delay(60),
       reraise=True)
def migrate_at_start(store: StoreLike) -> int:
    """migrate(), waiting up to a minute for etcd to answer (it may start with us)."""
    return migrate(store)
