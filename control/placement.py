"""Where an instance runs, and the claim of its share of that host.

Finding candidates is a read-only query; claiming is a separate compare-and-swap
on the host's usage record, so two builds racing for the last slot of a host
can never both win. (A fuller scheduler, with filters, weighers and
explanations per filter, grows here.)
"""

from __future__ import annotations

import logging
import time
from collections import Counter

from control import keys
from control.config import ControlConfig
from control.errors import Conflict, ResourceExhausted
from control.models import Allocation, Host, Resources
from control.store import CAS_ATTEMPTS, Store, Txn

log = logging.getLogger(__name__)

_LABELS = {"vcpus": "VCPU", "memory_mb": "MEMORY_MB", "disk_gb": "DISK_GB"}


def lacking(need: Resources, free: Resources) -> list[str]:
    """Names of the resources (VCPU, MEMORY_MB, DISK_GB) that `free` cannot cover."""
    return [label for field, label in _LABELS.items() if getattr(need, field) > getattr(free, field)]


class Placement:
    def __init__(self, store: Store, config: ControlConfig):
        self.store = store
        self.config = config

    def capacity(self, host: Host) -> Resources:
        """What a host can hold: (total - reserved) x allocation ratio, per resource."""
        inv, c = host.inventory, self.config
        return Resources(
            vcpus=int(inv.vcpus * c.cpu_allocation_ratio),
            memory_mb=int((inv.memory_mb - c.reserved_host_memory_mb) * c.ram_allocation_ratio),
            disk_gb=int((inv.disk_gb - c.reserved_host_disk_gb) * c.disk_allocation_ratio),
        )

    def usage(self, host_name: str) -> Resources:
        record = self.store.get(keys.host_usage(host_name))
        return Resources(**record.value) if record else Resources()

    def candidates(self, need: Resources) -> tuple[list[Host], str]:
        """Hosts that can take `need`, most free memory first (read-only), and
        a summary of why the others cannot, e.g. "3 hosts; 1 down; 2 lacked MEMORY_MB"."""
        now = time.time()
        hosts = [Host(**r.value) for r in self.store.list(keys.hosts())]
        reasons: Counter[str] = Counter()
        fitting: list[tuple[Resources, Host]] = []
        for host in hosts:
            if not host.enabled:
                reasons["disabled"] += 1
            elif not host.is_up(self.config.host_down_after_s, now):
                reasons["down"] += 1
            else:
                free = self.capacity(host) - self.usage(host.name)
                missing = lacking(need, free)
                reasons.update(f"lacked {label}" for label in missing)
                if not missing:
                    fitting.append((free, host))
        fitting.sort(key=lambda fh: (fh[0].memory_mb, fh[0].vcpus), reverse=True)
        summary = f"{len(hosts)} hosts" + "".join(
            f"; {n} {why}" for why, n in sorted(reasons.items()))
        return [host for _, host in fitting], summary

    def claim(self, host: Host, allocation: Allocation) -> bool:
        """Atomically add `allocation` to the host's usage if it still fits.

        Idempotent: if this instance already holds an allocation, returns
        whether it is on this host. False when the host has no room left.
        """
        usage_key = keys.host_usage(host.name)
        alloc_key = keys.allocation(allocation.instance_id)
        cap = self.capacity(host)
        for _ in range(CAS_ATTEMPTS):
            existing = self.store.get(alloc_key)
            if existing is not None:
                return Allocation(**existing.value).host == host.name
            record = self.store.get(usage_key)
            used = Resources(**record.value) if record else Resources()
            if lacking(allocation.resources, cap - used):
                return False
            txn = Txn().expect_absent(alloc_key)
            if record:
                txn.expect(record)
            else:
                txn.expect_absent(usage_key)
            txn.put(usage_key, (used + allocation.resources).model_dump())
            txn.put(alloc_key, allocation.model_dump())
            if self.store.commit(txn):
                return True
        raise Conflict(f"too many concurrent claims on host {host.name}; try again")

    def schedule(self, allocation: Allocation, what: str) -> Host:
        """Pick a host and claim `allocation` on it; the next candidate if a race is lost."""
        hosts, summary = self.candidates(allocation.resources)
        for host in hosts:
            if self.claim(host, allocation.model_copy(update={"host": host.name})):
                log.info("claimed %s on %s for %s", allocation.resources, host.name,
                         allocation.instance_id)
                return host
        raise ResourceExhausted(f"no host for {what}: {summary}")

    def allocation(self, instance_id: str) -> Allocation | None:
        record = self.store.get(keys.allocation(instance_id))
        return Allocation(**record.value) if record else None

    def release(self, instance_id: str) -> None:
        """Give back an instance's allocation. Releasing twice is harmless."""
        alloc_key = keys.allocation(instance_id)
        for _ in range(CAS_ATTEMPTS):
            alloc_record = self.store.get(alloc_key)
            if alloc_record is None:
                return
            allocation = Allocation(**alloc_record.value)
            usage_key = keys.host_usage(allocation.host)
            usage_record = self.store.get(usage_key)
            txn = Txn().expect(alloc_record).delete(alloc_key)
            if usage_record is not None:
                left = Resources(**usage_record.value) - allocation.resources
                txn.expect(usage_record).put(usage_key, left.model_dump())
            if self.store.commit(txn):
                log.info("released %s on %s", instance_id, allocation.host)
                return
        raise Conflict(f"too many concurrent releases on {instance_id}; try again")
