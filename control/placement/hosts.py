"""Compute hosts as the control plane sees them: registration, heartbeats, and
what the agents observe of their instances (power state, addresses)."""

from __future__ import annotations

import logging
import time

from control.compute import records
from control.compute.states import PowerState, TaskState, VmState
from control.errors import NotFound
from control.models import Host, Instance, Resources, validate_name
from control.store import keys
from control.store.etcd import Record, Store, Txn

log = logging.getLogger(__name__)


class Hosts:
    def __init__(self, store: Store):
        self.store = store

    def register(self, name: str, address: str, inventory: Resources, virt_type: str,
                 hypervisor: str) -> Host:
        key = keys.host(name)

        def change(record):
            host = Host(**record.value).model_copy(update={
                "address": address, "inventory": inventory, "virt_type": virt_type,
                "hypervisor": hypervisor, "last_heartbeat": time.time(), "up": True})
            return Txn().expect(record).put(key, host.model_dump())

        if self.store.update(key, change) is None:
            host = Host(name=name, address=address, inventory=inventory, virt_type=virt_type,
                        hypervisor=hypervisor)
            if not self.store.put_if_absent(key, host.model_dump()):
                self.store.update(key, change)  # registered concurrently: update it
        log.info("host %s registered at %s with %s", name, address, inventory)
        return self.get(name)

    def find(self, name: str) -> Host | None:
        """The host registered as `name`, or None."""
        record = self.store.get(keys.host(name)) if name and "/" not in name else None
        return Host(**record.value) if record else None

    def get(self, name: str) -> Host:
        """The host registered as `name`; NotFound if there is none."""
        host = self.find(name)
        if host is None:
            raise NotFound(f"host {name!r} not found")
        return host

    def update(self, name: str, enabled: bool | None = None, disabled_reason: str = "",
               zone: str | None = None, add_traits: list[str] | None = None,
               remove_traits: list[str] | None = None) -> Host:
        """An admin's change: maintenance (disable/enable), zone, traits."""
        key = keys.host(name)

        def change(record):
            host = Host(**record.value)
            updates: dict[str, object] = {}
            if enabled is not None:
                updates["enabled"] = enabled
                updates["disabled_reason"] = "" if enabled else disabled_reason
            if zone is not None:
                updates["zone"] = validate_name(zone, "zone")
            traits = (set(host.traits) | {validate_name(t, "trait") for t in add_traits or ()}) \
                - set(remove_traits or ())
            updates["traits"] = sorted(traits)
            return Txn().expect(record).put(key, host.model_copy(update=updates).model_dump())

        if self.store.update(key, change) is None:
            raise NotFound(f"host {name!r} not found")
        return self.get(name)

    def all(self) -> list[Host]:
        return [Host(**r.value) for r in self.store.list(keys.hosts())]

    def heartbeat(self, name: str, observations: list[tuple[str, str, list[str]]],
                  observed_at: float = 0.0) -> bool:
        """Record that host `name` is alive and what it sees of its instances.

        observations: (instance_id, power_state, addresses). Returns False if
        the host is not registered (the agent should register again).
        """
        key = keys.host(name)

        def beat(record: Record) -> tuple[Txn, bool]:
            return Txn().expect(record).put(key, {**record.value, "last_heartbeat": time.time(),
                                                  "up": True}), record.value.get("up") is False

        applied = self.store.apply(key, beat)
        if applied is None:
            return False
        if applied.result:  # it was down
            log.warning("host %s is up again (heartbeats resumed)", name)
        for instance_id, power_state, addresses in observations:
            self._observe(name, instance_id, PowerState(power_state), addresses,
                          observed_at or time.time())
        return True

    def _observe(self, host: str, instance_id: str, power: PowerState,
                 addresses: list[str], observed_at: float) -> None:
        def change(record: Record) -> tuple[Txn | None, bool]:
            """The write, if any, and whether the domain is a stray."""
            instance = Instance(**record.value)
            if instance.host != host or instance.vm_state is VmState.ERROR:
                # Its instance is on another host, or failed (and holds nothing).
                return None, observed_at >= instance.updated_at
            # While an operation is in flight its task owns the power state; and
            # a look taken before the instance last changed tells nothing new.
            if instance.task_state is not TaskState.NONE or observed_at < instance.updated_at:
                return None, False
            if instance.power_state == power and instance.addresses == addresses:
                return None, False
            txn = Txn()
            records.change_into(txn, record, None, {"power_state": power, "addresses": addresses})
            return txn, False

        applied = records.update(self.store, instance_id, change)
        if applied is None or applied.result:
            # No instance owns it (none ever did, or it was deleted since), or its
            # instance is elsewhere.
            self._stray(host, instance_id, observed_at)

    def _stray(self, host: str, instance_id: str, observed_at: float) -> None:
        """Note a domain that `host` runs and no instance owns. The reconciler
        destroys it once it has been there longer than orphan_grace_s (a delete
        finishing just after the look was taken is not a stray for long)."""
        try:
            key = keys.stray(host, instance_id)
        except ValueError:
            return
        if self.store.put_if_absent(key, {"host": host, "instance_id": instance_id,
                                          "first_seen": observed_at}):
            log.warning("host %s runs %s, which no instance owns", host, instance_id)

    def mark_down(self, name: str, down_after_s: float) -> bool:
        """Mark a host down if its last heartbeat is older than down_after_s
        (re-checked under compare-and-swap). Returns whether it was marked."""
        key = keys.host(name)

        def change(record: Record) -> tuple[Txn | None, None]:
            host = Host(**record.value)
            if not host.up or time.time() - host.last_heartbeat < down_after_s:
                return None, None
            return Txn().expect(record).put(key, {**record.value, "up": False}), None

        applied = self.store.apply(key, change)
        return applied is not None and applied.committed
