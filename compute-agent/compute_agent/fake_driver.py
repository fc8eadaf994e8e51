"""A driver that keeps instances in memory, with the same contract as the real
one: for scale tests with hundreds of hosts, never in place of libvirt in an
integration test."""

from __future__ import annotations

import threading

from compute_agent.driver import (
    ComputeDriver,
    DriverError,
    HostInventory,
    InstanceSpec,
    Observation,
)


class FakeDriver(ComputeDriver):
    def __init__(self, inventory: HostInventory | None = None, fail_spawn: bool = False):
        self.inventory = inventory or HostInventory(vcpus=8, memory_mb=16384, disk_gb=200)
        self.fail_spawn = fail_spawn
        self.instances: dict[str, InstanceSpec] = {}
        self._lock = threading.Lock()

    def init_host(self) -> None:
        pass

    def host_inventory(self) -> HostInventory:
        return self.inventory

    def describe(self) -> tuple[str, str]:
        return "fake", "fake driver"

    def spawn(self, spec: InstanceSpec) -> str:
        if self.fail_spawn:
            raise DriverError("spawn failed: the fake driver was told to fail")
        with self._lock:
            self.instances[spec.instance_id] = spec
        return "running"

    def destroy(self, instance_id: str) -> bool:
        with self._lock:
            return self.instances.pop(instance_id, None) is not None

    def power_state(self, instance_id: str) -> str:
        return "running" if instance_id in self.instances else "nostate"

    def console_output(self, instance_id: str, max_bytes: int) -> bytes:
        if instance_id not in self.instances:
            return b""
        return f"CLOUD-BOOT-OK instance_id={instance_id} boot_id=fake\n".encode()[-max_bytes:]

    def list_instances(self) -> list[Observation]:
        with self._lock:
            return [Observation(i, "running") for i in self.instances]
