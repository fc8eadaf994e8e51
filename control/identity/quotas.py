"""Project quotas: limits, and the usage that instances (and any other named
resource: networks, floating_ips, volume_gb, ...) hold.

Quotas are by name: limits and usage are maps of quota name -> amount, so a new
kind of resource gets a limit and is charged through these same functions
(control/resources.py says which quota each resource class counts against).

Usage is claimed in the same etcd transaction that creates what holds it (an
instance record; compare-and-swap on the project's usage record) and released
in the one that deletes it or records its failed build. Never check-then-write.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, Field, model_validator

from control.errors import Conflict, ResourceExhausted
from control.identity.accounts import check_project, expect_project_into
from control.models import Resources
from control.resources import INSTANCE_CLASSES, INSTANCES, quota_of
from control.store import keys
from control.store.etcd import Record, Store, Txn

UNLIMITED = -1
NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")  # a quota's name, e.g. floating_ips
# The quotas an instance counts against, in the order refusals check them.
FIELDS = (INSTANCES, *(c.quota for c in INSTANCE_CLASSES))


class QuotaValues(BaseModel):
    """Amounts per quota name: a project's limits, its usage, or what something
    asks. In usage and asks an absent name is 0; in limits it has no limit."""

    resources: dict[str, int] = Field(default_factory=dict)

    def __init__(self, **data: Any) -> None:
        # Also QuotaValues(instances=1, vcpus=2, ...): see _flat.
        super().__init__(**data)

    @model_validator(mode="before")
    @classmethod
    def _flat(cls, data: Any) -> Any:
        """Read the shape before named quotas, {"instances": 1, "vcpus": 2, ...}
        (stored usage records, and keyword arguments): the instance quotas
        default to 0 there, as that shape's fields did."""
        if not isinstance(data, dict) or not data or (set(data) == {"resources"}
                                                      and isinstance(data["resources"], dict)):
            return data
        named = data.get("resources")
        flat = {k: v for k, v in data.items() if not (k == "resources" and isinstance(v, dict))}
        return {"resources": {**dict.fromkeys(FIELDS, 0), **(named if isinstance(named, dict) else {}),
                              **flat}}

    # The instance quotas, as attributes (the wire's and the CLI's fields).
    @property
    def instances(self) -> int:
        return self.get("instances")

    @property
    def vcpus(self) -> int:
        return self.get("vcpus")

    @property
    def memory_mb(self) -> int:
        return self.get("memory_mb")

    @property
    def disk_gb(self) -> int:
        return self.get("disk_gb")

    def get(self, name: str, default: int = 0) -> int:
        return self.resources.get(name, default)

    def others(self) -> dict[str, int]:
        """The named quotas besides the instance ones (the wire's `resources` map)."""
        return {n: v for n, v in self.resources.items() if n not in FIELDS}

    @classmethod
    def of(cls, resources: Resources, instances: int = 1) -> QuotaValues:
        """What instances of size `resources` count against."""
        return cls(resources={INSTANCES: instances, **{
            c.quota: getattr(resources, c.field) for c in INSTANCE_CLASSES}})

    @classmethod
    def charge(cls, amounts: dict[str, int]) -> QuotaValues:
        """What amounts per resource class (e.g. {"IPV4_ADDRESS": 1}) count against."""
        charged: dict[str, int] = {}
        for rc, amount in amounts.items():
            charged[quota_of(rc)] = charged.get(quota_of(rc), 0) + amount
        return cls(resources=charged)

    def __add__(self, other: QuotaValues) -> QuotaValues:
        names = dict.fromkeys([*self.resources, *other.resources])
        return QuotaValues(resources={n: self.get(n) + other.get(n) for n in names})

    def __sub__(self, other: QuotaValues) -> QuotaValues:
        names = dict.fromkeys([*self.resources, *other.resources])
        return QuotaValues(resources={n: self.get(n) - other.get(n) for n in names})

    def __eq__(self, other: object) -> bool:
        """As amounts: an absent name equals 0 (do not compare limits with this)."""
        if not isinstance(other, QuotaValues):
            return NotImplemented
        return ({n: v for n, v in self.resources.items() if v}
                == {n: v for n, v in other.resources.items() if v})

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value


def exceeded(project: str, limits: QuotaValues, usage: QuotaValues, ask: QuotaValues) -> str | None:
    """Why `ask` does not fit, or None if it does. Each name asked is checked,
    in the ask's order; a name without a limit is unlimited."""
    for name, amount in ask.resources.items():
        limit = limits.get(name, UNLIMITED)
        if limit != UNLIMITED and usage.get(name) + amount > limit:
            return (f"quota exceeded for {name} in project {project}: limit {limit}, "
                    f"in use {usage.get(name)}, asked {amount}")
    return None


def overrides(stored: dict[str, Any]) -> dict[str, int]:
    """A project's stored limits: {"resources": {name: limit}}, or the shape
    before named quotas, {name: limit} (only the overridden ones)."""
    if set(stored) == {"resources"} and isinstance(stored["resources"], dict):
        return dict(stored["resources"])
    return dict(stored)


class Quotas:
    def __init__(self, store: Store, defaults: QuotaValues):
        self.store = store
        self.defaults = defaults

    def limits(self, project: str) -> QuotaValues:
        record = self.store.get(keys.quota_limits(project))
        return QuotaValues(resources={**self.defaults.resources,
                                      **(overrides(record.value) if record else {})})

    def usage(self, project: str) -> QuotaValues:
        record = self.store.get(keys.quota_usage(project))
        return QuotaValues(**record.value) if record else QuotaValues()

    def set_limits(self, project: str, changes: dict[str, int]) -> QuotaValues:
        """Set limits by name (-1: unlimited); the other names keep theirs."""
        key = keys.quota_limits(project)
        for _ in range(8):
            record = self.store.get(key)
            merged = {**(overrides(record.value) if record else {}), **changes}
            txn = Txn().put(key, QuotaValues(resources=merged).model_dump())
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
