"""Project quotas: limits, and the usage that instances hold.

Usage is claimed in the same etcd transaction that creates the instance record
(compare-and-swap on the project's usage record) and released in the one that
deletes it or records its failed build. Never check-then-write.
"""

from __future__ import annotations

from pydantic import BaseModel

from control.errors import Conflict, ResourceExhausted
from control.identity.accounts import check_project, expect_project_into
from control.models import Resources
from control.store import keys
from control.store.etcd import Record, Store, Txn

UNLIMITED = -1
FIELDS = ("instances", "vcpus", "memory_mb", "disk_gb")


class QuotaValues(BaseModel):
    instances: int = 0
    vcpus: int = 0
    memory_mb: int = 0
    disk_gb: int = 0

    @classmethod
    def of(cls, resources: Resources, instances: int = 1) -> QuotaValues:
        return cls(instances=instances, vcpus=resources.vcpus, memory_mb=resources.memory_mb,
                   disk_gb=resources.disk_gb)

    def __add__(self, other: QuotaValues) -> QuotaValues:
        return QuotaValues(**{f: getattr(self, f) + getattr(other, f) for f in FIELDS})

    def __sub__(self, other: QuotaValues) -> QuotaValues:
        return QuotaValues(**{f: getattr(self, f) - getattr(other, f) for f in FIELDS})


def exceeded(project: str, limits: QuotaValues, usage: QuotaValues, ask: QuotaValues) -> str | None:
    """Why `ask` does not fit, or None if it does."""
    for f in FIELDS:
        limit = getattr(limits, f)
        if limit != UNLIMITED and getattr(usage, f) + getattr(ask, f) > limit:
            return (f"quota exceeded for {f} in project {project}: limit {limit}, "
                    f"in use {getattr(usage, f)}, asked {getattr(ask, f)}")
    return None


class Quotas:
    def __init__(self, store: Store, defaults: QuotaValues):
        self.store = store
        self.defaults = defaults

    def limits(self, project: str) -> QuotaValues:
        record = self.store.get(keys.quota_limits(project))
        return QuotaValues(**{**self.defaults.model_dump(), **(record.value if record else {})})

    def usage(self, project: str) -> QuotaValues:
        record = self.store.get(keys.quota_usage(project))
        return QuotaValues(**record.value) if record else QuotaValues()

    def set_limits(self, project: str, changes: dict[str, int]) -> QuotaValues:
        key = keys.quota_limits(project)
        for _ in range(8):
            record = self.store.get(key)
            merged = {**(record.value if record else {}), **changes}
            txn = Txn().put(key, merged)
            txn.expect(record) if record else txn.expect_absent(key)
            guard = expect_project_into(self.store, txn, project)  # none for a deleted project
            if self.store.commit(txn):
                return self.limits(project)
            check_project(self.store, guard)
        raise Conflict(f"quota of {project} is changing too often; try again")

    def claim_into(self, txn: Txn, project: str, ask: QuotaValues) -> None:
        """Add the claim of `ask` to `txn`, or raise ResourceExhausted saying why it does not fit.
        The claim holds only while the project exists: what claims quota (an
        instance) is never written for a project deleted meanwhile."""
        expect_project_into(self.store, txn, project)
        key = keys.quota_usage(project)
        record = self.store.get(key)
        usage = QuotaValues(**record.value) if record else QuotaValues()
        if (why := exceeded(project, self.limits(project), usage, ask)) is not None:
            raise ResourceExhausted(why)
        _expect(txn, key, record)
        txn.put(key, (usage + ask).model_dump())

    def release_into(self, txn: Txn, project: str, held: QuotaValues) -> None:
        """Add the release of `held` to `txn`."""
        key = keys.quota_usage(project)
        record = self.store.get(key)
        usage = QuotaValues(**record.value) if record else QuotaValues()
        _expect(txn, key, record)
        txn.put(key, (usage - held).model_dump())


def _expect(txn: Txn, key: str, record: Record | None) -> None:
    if record is None:
        txn.expect_absent(key)
    else:
        txn.expect(record)
