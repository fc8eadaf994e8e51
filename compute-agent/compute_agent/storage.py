"""The storage contract: an instance's disks on this host.

The virtualization driver asks an implementation for the root disk (from an
image), the config drive and each data disk (a volume) before it defines the
domain, and puts what it returns into the domain's <disk>s; it deletes the
instance's disks when the instance is deleted (a volume's data stays: volumes
outlive instances). Implementations: LocalFileStorage (local_storage.py: qcow2
overlays in the agent's state directory) and FakeStorage (below, in memory).
tests/compute_agent/test_storage_contract.py checks every one of them.
"""

from __future__ import annotations

import re
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass

from compute_agent import config_drive
from compute_agent.errors import StorageError

# Volume and instance ids name files on the host: nothing that could leave its directory.
ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,63}")
GiB = 2**30


@dataclass(frozen=True)
class ImageFiles:
    """An image's files on this host (see image_cache.py)."""

    id: str
    disk_path: str
    disk_format: str = "qcow2"   # raw or qcow2: the base of the instance's qcow2 overlay
    kernel_path: str = ""        # empty: boot the disk's own bootloader
    initrd_path: str = ""
    cmdline: str = ""


@dataclass(frozen=True)
class BlockDeviceSpec:
    """A data disk the control plane asks for (agent.proto's BlockDevice)."""

    volume_id: str
    size_gb: int   # a volume new to the host is created blank at this size


@dataclass(frozen=True)
class DiskDevice:
    """What the domain's <disk> needs."""

    path: str
    format: str       # qcow2 or raw
    serial: str = ""  # what the guest sees as the disk's serial (/dev/disk/by-id)


class InstanceStorage(ABC):
    """Promises: preparing and attaching are idempotent (a retried spawn gets the
    same disks, an existing root disk is kept); a refused call (StorageError)
    changes nothing; a volume is attached to one instance at a time and keeps its
    data through detach and the deletion of the instance; delete_instance removes
    everything of the instance but its volumes' data."""

    @abstractmethod
    def ensure_host(self) -> None:
        """Prepare the host's storage (directories, modes). Safe to call again."""

    @abstractmethod
    def prepare_root(self, instance_id: str, image: ImageFiles, disk_gb: int) -> DiskDevice:
        """The instance's root disk, made from the image (kept if it exists)."""

    @abstractmethod
    def prepare_config_drive(self, instance_id: str, hostname: str, public_keys: tuple[str, ...],
                             user_data: bytes) -> DiskDevice:
        """The NoCloud config drive (config_drive.py), rebuilt every time (a retried
        spawn may carry other keys or user data); StorageError for a bad hostname or key."""

    @abstractmethod
    def root_size(self, instance_id: str) -> int:
        """The root disk's size in bytes; StorageError if there is none."""

    @abstractmethod
    def grow_root(self, instance_id: str, disk_gb: int) -> None:
        """Grow the root disk of a stopped instance (a running one grows through the
        hypervisor); StorageError, changing nothing, if that would shrink it."""

    @abstractmethod
    def attach(self, instance_id: str, device: BlockDeviceSpec) -> DiskDevice:
        """Attach a volume to the instance (creating it blank if the host has none
        of that id); StorageError if another instance has it or the id is bad."""

    @abstractmethod
    def detach(self, instance_id: str, volume_id: str) -> bool:
        """Detach it, keeping its data; whether it was attached to the instance."""

    @abstractmethod
    def attached(self, instance_id: str) -> list[str]:
        """The ids of the volumes attached to the instance, sorted."""

    @abstractmethod
    def delete_instance(self, instance_id: str) -> bool:
        """Remove the instance's root disk and config drive and detach its volumes;
        whether it had anything here."""


def valid_id(value: str) -> bool:
    return bool(ID.fullmatch(value))


def check_id(kind: str, value: str) -> None:
    if not valid_id(value):
        raise StorageError(f"bad {kind} id {value!r}")


class FakeStorage(InstanceStorage):
    """In memory, with the contract of the real ones: for the fake driver and unit tests."""

    def __init__(self) -> None:
        self.ready = False
        self.roots: dict[str, int] = {}          # instance -> root disk size, bytes
        self.drives: dict[str, bytes] = {}       # instance -> its config drive's meta-data
        self.volumes: dict[str, int] = {}        # volume -> size, bytes (kept after detach)
        self.attachments: dict[str, str] = {}    # volume -> the instance it is attached to
        self._lock = threading.Lock()

    def ensure_host(self) -> None:
        self.ready = True

    def prepare_root(self, instance_id: str, image: ImageFiles, disk_gb: int) -> DiskDevice:
        check_id("instance", instance_id)
        with self._lock:
            self.roots.setdefault(instance_id, disk_gb * GiB)
        return DiskDevice(f"fake://{instance_id}/root", "qcow2")

    def prepare_config_drive(self, instance_id: str, hostname: str, public_keys: tuple[str, ...],
                             user_data: bytes) -> DiskDevice:
        check_id("instance", instance_id)
        try:
            config_drive.validate(hostname, public_keys)
        except ValueError as exc:
            raise StorageError(f"config drive: {exc}") from exc
        with self._lock:
            self.drives[instance_id] = config_drive.meta_data(instance_id, hostname, public_keys)
        return DiskDevice(f"fake://{instance_id}/config", "raw")

    def root_size(self, instance_id: str) -> int:
        if instance_id not in self.roots:
            raise StorageError(f"instance {instance_id} has no root disk here")
        return self.roots[instance_id]

    def grow_root(self, instance_id: str, disk_gb: int) -> None:
        if disk_gb * GiB < self.root_size(instance_id):
            raise StorageError("a disk can only grow")
        self.roots[instance_id] = disk_gb * GiB

    def attach(self, instance_id: str, device: BlockDeviceSpec) -> DiskDevice:
        check_id("instance", instance_id)
        check_id("volume", device.volume_id)
        with self._lock:
            holder = self.attachments.get(device.volume_id, instance_id)
            if holder != instance_id:
                raise StorageError(f"volume {device.volume_id} is attached to instance {holder}")
            self.volumes.setdefault(device.volume_id, device.size_gb * GiB)
            self.attachments[device.volume_id] = instance_id
        return DiskDevice(f"fake://volumes/{device.volume_id}", "qcow2", device.volume_id[:20])

    def detach(self, instance_id: str, volume_id: str) -> bool:
        with self._lock:
            if self.attachments.get(volume_id) != instance_id:
                return False
            del self.attachments[volume_id]
            return True

    def attached(self, instance_id: str) -> list[str]:
        with self._lock:
            return sorted(v for v, i in self.attachments.items() if i == instance_id)

    def delete_instance(self, instance_id: str) -> bool:
        with self._lock:
            existed = self.roots.pop(instance_id, None) is not None
            existed = self.drives.pop(instance_id, None) is not None or existed
            for volume in [v for v, i in self.attachments.items() if i == instance_id]:
                del self.attachments[volume]
                existed = True
            return existed
