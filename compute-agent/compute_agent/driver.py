"""The virtualization contract: guests on this host (after Nova's virt driver).

A driver defines, starts, stops, reboots, scales, resizes, deletes and lists
guests. It does not build the host's network or the guests' disks itself: it
composes a networking implementation (network.py: plug/unplug a NIC) and a
storage one (storage.py: root disk, config drive, attach/detach a data disk),
each with a contract of its own. Every driver keeps these promises;
tests/compute_agent/test_driver_contract.py checks them against each driver.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from compute_agent.errors import DriverError
from compute_agent.network import HostNetworking, NicSpec
from compute_agent.storage import BlockDeviceSpec, ImageFiles, InstanceStorage

__all__ = ["BalloonStatus", "ComputeDriver", "DriverError", "HostInventory", "ImageFiles",
           "InstanceSpec", "Observation"]


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
    # The guest's NoCloud config drive (see config_drive.py): one RFC 1123
    # label, OpenSSH public keys, and cloud-init user-data as given.
    hostname: str = ""
    public_keys: tuple[str, ...] = ()
    user_data: bytes = b""
    # Empty: one NIC on the host's default network (as before NICs were listed).
    nics: tuple[NicSpec, ...] = ()
    # Data disks (volumes) beyond the root disk and the config drive, which every
    # instance has; empty: none.
    block_devices: tuple[BlockDeviceSpec, ...] = ()

    def nics_or_default(self) -> tuple[NicSpec, ...]:
        return self.nics or (NicSpec(),)


@dataclass(frozen=True)
class HostInventory:
    vcpus: int
    memory_mb: int
    disk_gb: int


@dataclass(frozen=True)
class BalloonStatus:
    """A running guest's memory as its virtio balloon reports it (KiB)."""
    entitled_kib: int   # the tenant's memory: the persistent config's currentMemory
    actual_kib: int     # what the balloon gives the guest now
    available_kib: int  # the guest's MemTotal; 0 until its balloon driver reports
    usable_kib: int     # what the guest could give up without swapping (MemAvailable)
    report_id: int      # changes with every stats report of the guest
    run_id: str         # changes when the guest restarts (or is reset) and its memory with it


@dataclass
class Observation:
    instance_id: str
    power_state: str   # running, paused, shutoff, crashed, nostate
    addresses: list[str] = field(default_factory=list)


class ComputeDriver(ABC):
    network: HostNetworking    # plugs the guests' NICs
    storage: InstanceStorage   # holds the guests' disks

    @abstractmethod
    def init_host(self) -> None:
        """Prepare the host (connections; the network's and storage's ensure_host).
        Safe to call again."""

    @abstractmethod
    def host_inventory(self) -> HostInventory: ...

    @abstractmethod
    def describe(self) -> tuple[str, str]:
        """(virt_type, hypervisor description)."""

    @abstractmethod
    def spawn(self, spec: InstanceSpec) -> str:
        """Create and start the instance; return its power state. Its NICs are
        plugged (spec.nics_or_default()) and its disks prepared and attached
        (root disk, config drive, spec.block_devices) through the driver's
        network and storage.

        Idempotent: spawning an instance that already runs returns its state.
        If this fails, any partial instance (domain, disk, files, NICs,
        attachments) is completely cleaned up before DriverError is raised.
        """

    @abstractmethod
    def destroy(self, instance_id: str) -> bool:
        """Stop and remove the instance, unplug its NICs, delete its files and
        detach its volumes (their data stays). Destroying an instance that does
        not exist succeeds. Returns whether it existed."""

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
    def running_instances(self) -> list[str]:
        """Ids of this driver's instances that run now (cheaper than list_instances)."""

    @abstractmethod
    def balloon_status(self, instance_id: str) -> BalloonStatus | None:
        """The guest's balloon figures; None if it is not running or not on this host."""

    @abstractmethod
    def set_balloon(self, instance_id: str, target_kib: int, entitled_kib: int) -> bool:
        """Move the running guest's balloon to target_kib (capped at its entitlement),
        live only: its persistent size (the entitlement) stays, so a restart, scale or
        hard reboot gives the whole entitlement back. Returns False, changing nothing,
        if the entitlement is no longer entitled_kib (a scale came in between), the
        guest is not running or it is not on this host (deleted meanwhile: the
        reclaim loop races with deletes)."""

    @abstractmethod
    def stats(self, instance_id: str) -> dict[str, float]:
        """Counters of a guest (keys as in agent.proto's InstanceStats, power_state
        aside); DriverError if it is not on this host."""

    @abstractmethod
    def stop(self, instance_id: str, timeout_s: int) -> str:
        """Shut the guest down cleanly (asking again while it does not react: a
        guest still booting may not hear the first request), powering it off
        after timeout_s. Stopping a stopped instance succeeds. DriverError if it
        does not exist, or is destroyed meanwhile."""

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
