"""Placement: each host is a resource provider; each instance holds one
allocation against one provider.

A provider record (/cloud/placement/providers/{host}) holds the host's
inventory per resource class (total, reserved, allocation_ratio) and its usage.
Capacity = (total - reserved) x allocation_ratio. A claim is one etcd
transaction that compares the provider's mod_revision (its generation), adds
the allocation's resources to the usage and records the allocation; a loser
re-reads and tries again, a bounded number of times. Releasing is the reverse,
and releasing twice is harmless.

Choosing the provider is the scheduler's job (control/placement/scheduler.py): a read-only
query, separate from the claim.
"""

from __future__ import annotations

import logging

from pydantic import BaseModel, Field

from control.config import ControlConfig
from control.errors import Conflict, NotFound, ResourceExhausted
from control.models import Allocation, Resources
from control.store import keys
from control.store.etcd import CAS_ATTEMPTS, Record, Store, Txn

log = logging.getLogger(__name__)

RESOURCE_CLASSES = ("VCPU", "MEMORY_MB", "DISK_GB")
_FIELDS = {"VCPU": "vcpus", "MEMORY_MB": "memory_mb", "DISK_GB": "disk_gb"}


def amounts(resources: Resources) -> dict[str, int]:
    """Resources as amounts per resource class."""
    return {rc: getattr(resources, field) for rc, field in _FIELDS.items()}


class InventoryItem(BaseModel):
    total: int
    reserved: int = 0
    allocation_ratio: float = 1.0

    @property
    def capacity(self) -> int:
        return max(0, int((self.total - self.reserved) * self.allocation_ratio))


class Provider(BaseModel):
    host: str
    inventory: dict[str, InventoryItem]
    usage: dict[str, int] = Field(default_factory=lambda: dict.fromkeys(RESOURCE_CLASSES, 0))
    # Set by an admin: these reserved/allocation_ratio values survive agent reports.
    overridden: dict[str, bool] = Field(default_factory=dict)

    def capacity(self, rc: str) -> int:
        item = self.inventory.get(rc)
        return item.capacity if item else 0

    def free(self, rc: str) -> int:
        return self.capacity(rc) - self.usage.get(rc, 0)

    def lacking(self, need: dict[str, int]) -> list[str]:
        return [rc for rc, amount in need.items() if amount > self.free(rc)]


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
        key = keys.provider(host)
        defaults = self.default_inventory(totals)
        for _ in range(CAS_ATTEMPTS):
            record = self.store.get(key)
            if record is None:
                provider = Provider(host=host, inventory=defaults)
                if self.store.put_if_absent(key, provider.model_dump()):
                    return provider
                continue
            provider = Provider(**record.value)
            for rc, item in defaults.items():
                if provider.overridden.get(rc) and rc in provider.inventory:
                    kept = provider.inventory[rc]
                    item = item.model_copy(update={"reserved": kept.reserved,
                                                   "allocation_ratio": kept.allocation_ratio})
                provider.inventory[rc] = item
            if self.store.commit(Txn().expect(record).put(key, provider.model_dump())):
                return provider
        raise Conflict(f"provider {host} is changing too often; try again")

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

    def try_claim(self, provider: Provider, revision: int, allocation: Allocation,
                  also: Txn | None = None) -> tuple[Provider, int] | None:
        """One compare-and-swap: claim `allocation` on `provider` as it was at
        `revision` (and commit `also` with it, e.g. a server group's record).
        Returns the provider after the claim and its new revision, or None if
        something changed since (the caller re-reads) or it has no room."""
        need = amounts(allocation.resources)
        if provider.lacking(need):
            return None
        claimed = provider.model_copy(update={"usage": {
            rc: provider.usage.get(rc, 0) + need.get(rc, 0) for rc in RESOURCE_CLASSES}})
        key = keys.provider(provider.host)
        alloc_key = keys.allocation(allocation.instance_id)
        txn = (Txn().expect(Record(key, {}, revision)).expect_absent(alloc_key)
               .put(key, claimed.model_dump())
               .put(alloc_key, allocation.model_copy(update={"host": provider.host}).model_dump()))
        if also is not None:
            txn.merge(also)
        new_revision = self.store.commit_at(txn)
        return (claimed, new_revision) if new_revision is not None else None

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

    def allocation(self, instance_id: str) -> Allocation | None:
        record = self.store.get(keys.allocation(instance_id))
        return Allocation(**record.value) if record else None

    def allocations(self) -> list[Allocation]:
        return [Allocation(**r.value) for r in self.store.list(keys.allocations())]

    def release(self, instance_id: str) -> None:
        """Give back an instance's allocation. Releasing twice is harmless."""
        alloc_key = keys.allocation(instance_id)
        for _ in range(CAS_ATTEMPTS):
            alloc_record = self.store.get(alloc_key)
            if alloc_record is None:
                return
            allocation = Allocation(**alloc_record.value)
            txn = Txn().expect(alloc_record).delete(alloc_key)
            found = self.provider(allocation.host)
            if found is not None:
                provider, record = found
                need = amounts(allocation.resources)
                usage = {rc: provider.usage.get(rc, 0) - need.get(rc, 0) for rc in RESOURCE_CLASSES}
                txn.expect(record).put(record.key, {**provider.model_dump(), "usage": usage})
            if self.store.commit(txn):
                log.info("released %s on %s", instance_id, allocation.host)
                return
        raise Conflict(f"too many concurrent releases on {instance_id}; try again")

    def usage(self, host: str) -> Resources:
        found = self.provider(host)
        if found is None:
            return Resources()
        usage = found[0].usage
        return Resources(**{field: usage.get(rc, 0) for rc, field in _FIELDS.items()})

    def resize_into(self, txn: Txn, instance_id: str, resources: Resources) -> None:
        """Add to `txn` the change of an instance's allocation to `resources` on
        its host, or raise ResourceExhausted if the growth does not fit there."""
        alloc_record = self.store.get(keys.allocation(instance_id))
        if alloc_record is None:
            raise NotFound(f"instance {instance_id} holds no allocation")
        allocation = Allocation(**alloc_record.value)
        found = self.provider(allocation.host)
        if found is None:
            raise NotFound(f"host {allocation.host} has no inventory")
        provider, record = found
        before, after = amounts(allocation.resources), amounts(resources)
        growth = {rc: max(0, after[rc] - before[rc]) for rc in RESOURCE_CLASSES}
        if lacking := provider.lacking(growth):
            raise ResourceExhausted(
                f"host {allocation.host} lacks {', '.join(lacking)} for this change: "
                + ", ".join(f"{rc} free {provider.free(rc)}, asked {growth[rc]}" for rc in lacking))
        usage = {rc: provider.usage.get(rc, 0) + after[rc] - before[rc] for rc in RESOURCE_CLASSES}
        txn.expect(record).put(record.key, {**provider.model_dump(), "usage": usage})
        txn.expect(alloc_record).put(alloc_record.key, allocation.model_copy(
            update={"resources": resources}).model_dump())
