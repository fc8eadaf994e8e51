"""Placement: resource providers, and the allocations consumers hold on them.

A provider record (/cloud/placement/providers/{name}) is a compute host or a
pool that is not a host (an address pool, a storage pool: control/resources.py),
with inventory of any resource classes (total, reserved, allocation_ratio) and
its usage. Capacity = (total - reserved) x allocation_ratio. A consumer's
allocation (an instance's share of its host, plus shares of other providers)
is claimed in one etcd transaction that compares the mod_revision (generation)
of every provider it touches, adds the shares to their usage and records the
allocation; a loser re-reads and tries again, a bounded number of times.
Releasing is the reverse, and releasing twice is harmless.

Choosing the host is the scheduler's job (control/placement/scheduler.py): a read-only
query, separate from the claim.
"""

from __future__ import annotations

import logging

from pydantic import BaseModel, Field, model_validator

from control.config import ControlConfig
from control.errors import Conflict, NotFound, ResourceExhausted
from control.models import Allocation, Resources
from control.resources import COMPUTE_HOST, INSTANCE_CLASSES
from control.store import keys
from control.store.etcd import CAS_ATTEMPTS, Record, Store, Txn

log = logging.getLogger(__name__)

# The classes an instance asks of its compute host (kept for callers that
# audit hosts' usage; providers may hold any others).
RESOURCE_CLASSES = tuple(c.name for c in INSTANCE_CLASSES)


def amounts(resources: Resources) -> dict[str, int]:
    """An instance's size as amounts per resource class."""
    return resources.amounts()


def added(usage: dict[str, int], delta: dict[str, int], sign: int = 1) -> dict[str, int]:
    """`usage` with `delta` added (sign 1) or taken away (-1); other classes kept."""
    return {**usage, **{rc: usage.get(rc, 0) + sign * amount for rc, amount in delta.items()}}


class InventoryItem(BaseModel):
    total: int
    reserved: int = 0
    allocation_ratio: float = 1.0

    @property
    def capacity(self) -> int:
        return max(0, int((self.total - self.reserved) * self.allocation_ratio))


class Provider(BaseModel):
    host: str  # the provider's name: a compute host's, or a pool's
    # Records written before there were other kinds are compute hosts.
    kind: str = COMPUTE_HOST
    inventory: dict[str, InventoryItem]
    usage: dict[str, int] = Field(default_factory=dict)
    # Set by an admin: these reserved/allocation_ratio values survive agent reports.
    overridden: dict[str, bool] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _usage_of_every_class(self) -> Provider:
        for rc in self.inventory:
            self.usage.setdefault(rc, 0)
        return self

    @property
    def name(self) -> str:
        return self.host

    def capacity(self, rc: str) -> int:
        item = self.inventory.get(rc)
        return item.capacity if item else 0

    def free(self, rc: str) -> int:
        return self.capacity(rc) - self.usage.get(rc, 0)

    def lacking(self, need: dict[str, int]) -> list[str]:
        return [rc for rc, amount in need.items() if amount > self.free(rc)]

    def why_lacking(self, need: dict[str, int]) -> str:
        """Why `need` does not fit here ("" if it does)."""
        return "; ".join(f"{self.kind} {self.host} lacks {rc}: free {self.free(rc)}, asked {need[rc]}"
                         for rc in self.lacking(need))


class Placement:
    def __init__(self, store: Store, config: ControlConfig):
        self.store = store
        self.config = config
        self.conflicts = 0  # claims that lost a race and were retried (for benchmarks)

    # ---------------------------------------------------------------- providers

    def default_inventory(self, totals: Resources) -> dict[str, InventoryItem]:
        c = self.config
        return {
            "VCPU": InventoryItem(total=totals.vcpus, allocation_ratio=c.cpu_allocation_ratio),
            "MEMORY_MB": InventoryItem(total=totals.memory_mb, reserved=c.reserved_host_memory_mb,
                                       allocation_ratio=c.ram_allocation_ratio),
            "DISK_GB": InventoryItem(total=totals.disk_gb, reserved=c.reserved_host_disk_gb,
                                     allocation_ratio=c.disk_allocation_ratio),
        }

    def report_inventory(self, host: str, totals: Resources) -> Provider:
        """An agent's report of its host's totals. Reserved and ratios set by an
        admin are kept; the others follow the cloud's configuration."""
        return self.put_provider(host, COMPUTE_HOST, self.default_inventory(totals))

    def put_provider(self, name: str, kind: str, inventory: dict[str, InventoryItem]) -> Provider:
        """Create provider `name` of `kind` (a compute host, an address pool, ...), or
        set these classes of its inventory; its usage, its other classes and the
        reserved amounts and ratios an admin set are kept."""
        key = keys.provider(name)
        for _ in range(CAS_ATTEMPTS):
            record = self.store.get(key)
            if record is None:
                provider = Provider(host=name, kind=kind, inventory=inventory)
                if self.store.put_if_absent(key, provider.model_dump()):
                    return provider
                continue
            provider = Provider(**record.value)
            if provider.kind != kind:
                raise Conflict(f"provider {name} is a {provider.kind}, not a {kind}")
            for rc, item in inventory.items():
                if provider.overridden.get(rc) and rc in provider.inventory:
                    kept = provider.inventory[rc]
                    item = item.model_copy(update={"reserved": kept.reserved,
                                                   "allocation_ratio": kept.allocation_ratio})
                provider.inventory[rc] = item
                provider.usage.setdefault(rc, 0)
            if self.store.commit(Txn().expect(record).put(key, provider.model_dump())):
                return provider
        raise Conflict(f"provider {name} is changing too often; try again")

    def set_inventory(self, host: str, rc: str, reserved: int | None = None,
                      allocation_ratio: float | None = None) -> Provider:
        """An admin's override of a host's reserved amount or overcommit ratio."""
        key = keys.provider(host)
        changes = {k: v for k, v in (("reserved", reserved), ("allocation_ratio", allocation_ratio))
                   if v is not None}

        def change(record: Record) -> Txn:
            provider = Provider(**record.value)
            if rc not in provider.inventory:
                raise NotFound(f"host {host} has no {rc} inventory")
            provider.inventory[rc] = provider.inventory[rc].model_copy(update=changes)
            provider.overridden[rc] = True
            return Txn().expect(record).put(key, provider.model_dump())

        updated = self.store.update(key, change)
        if updated is None:
            raise NotFound(f"host {host!r} not found")
        return Provider(**updated.value)

    def provider(self, host: str) -> tuple[Provider, Record] | None:
        record = self.store.get(keys.provider(host))
        return (Provider(**record.value), record) if record else None

    def providers(self) -> list[Provider]:
        return [Provider(**r.value) for r in self.store.list(keys.providers())]

    # ---------------------------------------------------------------- claims

    def _claim_txn(self, allocation: Allocation, seen: dict[str, tuple[Provider, int]]
                   ) -> tuple[Txn, dict[str, Provider]] | None:
        """The transaction claiming every share of `allocation` on the providers as
        `seen` (name -> provider, revision), each compared at that revision, and
        the providers after it; None if one of them has no room."""
        alloc_key = keys.allocation(allocation.instance_id)
        txn = Txn().expect_absent(alloc_key).put(alloc_key, allocation.model_dump())
        claimed = {}
        for name, need in allocation.by_provider().items():
            provider, revision = seen[name]
            if provider.lacking(need):
                return None
            claimed[name] = provider.model_copy(update={"usage": added(provider.usage, need)})
            key = keys.provider(name)
            txn.expect(Record(key, {}, revision)).put(key, claimed[name].model_dump())
        return txn, claimed

    def try_claim(self, provider: Provider, revision: int, allocation: Allocation,
                  also: Txn | None = None) -> tuple[Provider, int] | None:
        """One compare-and-swap: claim `allocation` on `provider` (its host) as it
        was at `revision`, and its shares of other providers as they are now (and
        commit `also` with it, e.g. a server group's record). Returns the host's
        provider after the claim and its new revision, or None if something
        changed since (the caller re-reads) or there is no room."""
        allocation = allocation.model_copy(update={"host": provider.host})
        seen = {provider.host: (provider, revision)}
        for name in allocation.others:
            if name not in seen and (found := self.provider(name)) is not None:
                seen[name] = (found[0], found[1].mod_revision)
        if set(allocation.by_provider()) - set(seen):
            return None  # a pool it needs is gone
        built = self._claim_txn(allocation, seen)
        if built is None:
            return None
        txn, claimed = built
        if also is not None:
            txn.merge(also)
        new_revision = self.store.commit_at(txn)
        return (claimed[provider.host], new_revision) if new_revision is not None else None

    def claim(self, host: str, allocation: Allocation) -> bool:
        """Claim on `host`, re-reading and retrying when another claim got there
        first. Idempotent: if this instance already holds an allocation, returns
        whether it is on this host. False when the host has no room left."""
        for _ in range(CAS_ATTEMPTS):
            existing = self.allocation(allocation.instance_id)
            if existing is not None:
                return existing.host == host
            found = self.provider(host)
            if found is None:
                return False
            provider, record = found
            if provider.lacking(amounts(allocation.resources)):
                return False
            if self.try_claim(provider, record.mod_revision, allocation) is not None:
                return True
            self.conflicts += 1
        raise Conflict(f"too many concurrent claims on host {host}; try again")

    def claim_all(self, allocation: Allocation) -> bool:
        """Claim every share of `allocation` (on its host, if it has one, and on its
        other providers) in one transaction: all or none. Retries lost races.
        Idempotent: if the consumer already holds an allocation, returns whether
        it holds these shares. ResourceExhausted, saying which provider lacks
        what, when one has no room; NotFound for a provider that does not exist."""
        shares = allocation.by_provider()
        for _ in range(CAS_ATTEMPTS):
            existing = self.allocation(allocation.instance_id)
            if existing is not None:
                return existing.by_provider() == shares
            seen = {}
            for name in shares:
                found = self.provider(name)
                if found is None:
                    raise NotFound(f"resource provider {name!r} not found")
                seen[name] = (found[0], found[1].mod_revision)
            built = self._claim_txn(allocation, seen)
            if built is None:
                raise ResourceExhausted("; ".join(
                    why for name, need in shares.items() if (why := seen[name][0].why_lacking(need))))
            if self.store.commit(built[0]):
                return True
            self.conflicts += 1
        raise Conflict(f"too many concurrent claims for {allocation.instance_id}; try again")

    def allocation(self, instance_id: str) -> Allocation | None:
        record = self.store.get(keys.allocation(instance_id))
        return Allocation(**record.value) if record else None

    def allocations(self) -> list[Allocation]:
        return [Allocation(**r.value) for r in self.store.list(keys.allocations())]

    def release(self, instance_id: str) -> None:
        """Give back every share a consumer (an instance) holds, in one
        transaction. Releasing twice is harmless."""
        alloc_key = keys.allocation(instance_id)
        for _ in range(CAS_ATTEMPTS):
            alloc_record = self.store.get(alloc_key)
            if alloc_record is None:
                return
            if self.store.commit(self.release_txn(alloc_record)):
                log.info("released %s on %s", instance_id,
                         ", ".join(Allocation(**alloc_record.value).by_provider()))
                return
        raise Conflict(f"too many concurrent releases on {instance_id}; try again")

    def release_txn(self, alloc_record: Record) -> Txn:
        """The transaction that deletes the allocation in `alloc_record` (if it is
        still as read) and takes every share of it off its providers' usage."""
        allocation = Allocation(**alloc_record.value)
        txn = Txn().expect(alloc_record).delete(alloc_record.key)
        for name, held in allocation.by_provider().items():
            found = self.provider(name)
            if found is not None:  # a provider gone takes its usage with it
                provider, record = found
                txn.expect(record).put(record.key, {**provider.model_dump(),
                                                    "usage": added(provider.usage, held, -1)})
        return txn

    def usage(self, host: str) -> Resources:
        found = self.provider(host)
        if found is None:
            return Resources()
        usage = found[0].usage
        return Resources(**{c.field: usage.get(c.name, 0) for c in INSTANCE_CLASSES})

    def resize_into(self, txn: Txn, instance_id: str, resources: Resources) -> None:
        """Add to `txn` the change of an instance's allocation to `resources` on
        its host, or raise ResourceExhausted if the growth does not fit there.
        Its shares of other providers stay as they are."""
        alloc_record = self.store.get(keys.allocation(instance_id))
        if alloc_record is None:
            raise NotFound(f"instance {instance_id} holds no allocation")
        allocation = Allocation(**alloc_record.value)
        found = self.provider(allocation.host)
        if found is None:
            raise NotFound(f"host {allocation.host} has no inventory")
        provider, record = found
        before, after = amounts(allocation.resources), amounts(resources)
        change = {rc: after.get(rc, 0) - before.get(rc, 0) for rc in dict.fromkeys([*before, *after])}
        growth = {rc: max(0, amount) for rc, amount in change.items()}
        if lacking := provider.lacking(growth):
            raise ResourceExhausted(
                f"host {allocation.host} lacks {', '.join(lacking)} for this change: "
                + ", ".join(f"{rc} free {provider.free(rc)}, asked {growth[rc]}" for rc in lacking))
        txn.expect(record).put(record.key, {**provider.model_dump(),
                                            "usage": added(provider.usage, change)})
        txn.expect(alloc_record).put(alloc_record.key, allocation.model_copy(
            update={"resources": resources}).model_dump())
