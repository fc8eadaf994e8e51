"""The contract between the agent and a hypervisor (after Nova's virt driver).

Every driver keeps these promises; tests/compute_agent/test_driver_contract.py
checks them against each driver.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field


class DriverError(Exception):
    """The hypervisor refused or failed an operation."""


@dataclass(frozen=True)
class ImageFiles:
    id: str
    kernel_path: str
    initrd_path: str
    disk_path: str
    cmdline: str


@dataclass(frozen=True)
class InstanceSpec:
    instance_id: str   # a UUID: the domain's name and uuid
    name: str          # the tenant's display name: metadata only
    vcpus: int
    memory_mb: int
    disk_gb: int
    image: ImageFiles
    max_vcpus: int = 0       # headroom for live scale-up (0: no headroom)
    max_memory_mb: int = 0


@dataclass(frozen=True)
class HostInventory:
    vcpus: int
    memory_mb: int
    disk_gb: int


@dataclass
class Observation:
    instance_id: str
    power_state: str   # running, paused, shutoff, crashed, nostate
    addresses: list[str] = field(default_factory=list)


class ComputeDriver(ABC):
    @abstractmethod
    def init_host(self) -> None:
        """Prepare the host (connections, networks). Safe to call again."""

    @abstractmethod
    def host_inventory(self) -> HostInventory: ...

    @abstractmethod
    def describe(self) -> tuple[str, str]:
        """(virt_type, hypervisor description)."""

    @abstractmethod
    def spawn(self, spec: InstanceSpec) -> str:
        """Create and start the instance; return its power state.

        Idempotent: spawning an instance that already runs returns its state.
        If this fails, any partial instance (domain, disk, files) is completely
        cleaned up before DriverError is raised.
        """

    @abstractmethod
    def destroy(self, instance_id: str) -> bool:
        """Stop and remove the instance and all its files. Destroying an instance
        that does not exist succeeds. Returns whether it existed."""

    @abstractmethod
    def power_state(self, instance_id: str) -> str:
        """The observed power state; "nostate" for an unknown instance."""

    @abstractmethod
    def console_output(self, instance_id: str, max_bytes: int) -> bytes:
        """The last max_bytes of the serial console; empty for an unknown instance."""

    @abstractmethod
    def list_instances(self) -> list[Observation]:
        """Every instance this agent's driver runs on the host."""

    @abstractmethod
    def resize(self, instance_id: str, vcpus: int, memory_mb: int, disk_gb: int, max_vcpus: int,
               max_memory_mb: int) -> str:
        """Redefine a stopped instance with new sizes and maximums (for its next
        boot); the disk only grows. DriverError, changing nothing, if it runs."""

    @abstractmethod
    def stats(self, instance_id: str) -> dict[str, float]:
        """Counters of a guest (keys as in agent.proto's InstanceStats, power_state
        aside); DriverError if it is not on this host."""

    @abstractmethod
    def stop(self, instance_id: str, timeout_s: int) -> str:
        """Shut the guest down cleanly, powering it off after timeout_s. Stopping
        a stopped instance succeeds. DriverError if it does not exist."""

    @abstractmethod
    def start(self, instance_id: str) -> str:
        """Power a stopped instance on (its disk kept). Starting a running one succeeds."""

    @abstractmethod
    def reboot(self, instance_id: str, hard: bool) -> str:
        """Restart the guest: ask it (soft) or reset it (hard)."""

    @abstractmethod
    def scale(self, instance_id: str, vcpus: int, memory_mb: int, disk_gb: int) -> str:
        """Set vCPUs / memory (within the maximums it was spawned with) and grow the
        disk; 0 leaves a resource as it is. Live when running, without a restart;
        kept for the next boot either way. DriverError, changing nothing, if a
        value is out of range."""
