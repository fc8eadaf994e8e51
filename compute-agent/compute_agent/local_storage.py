"""An instance's disks as files in the agent's state directory: a storage
implementation (storage.py) for the libvirt driver.

    instances/<id>/disk.qcow2    the root disk: a qcow2 overlay on the cached image
    instances/<id>/config.iso    the config drive
    instances/<id>/volumes/<v>   a link per attached volume (the record of the attachment)
    volumes/<v>.qcow2            a volume's data, kept when it is detached
    _base/                       the image cache's files (image_cache.py)

(The driver keeps the guest's console log in the instance's directory too.)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

from compute_agent import config_drive
from compute_agent.errors import StorageError
from compute_agent.storage import (
    BlockDeviceSpec,
    DiskDevice,
    GiB,
    ImageFiles,
    InstanceStorage,
    check_id,
    valid_id,
)

# Tenants' files on this host (instance disks, config drives, cached images) are
# created 0600 by root: no other local user reads them. QEMU, which runs as its
# own unprivileged user (libvirt-qemu on Debian), gets them from libvirt's DAC
# security driver: with dynamic_ownership (on by default) libvirt chowns a
# domain's disk, its backing file, config drive, kernel and initrd to QEMU's user
# when it starts. With remember_owner (default) it gives the writable disk, kernel
# and initrd back to root when the domain stops; read-only ones (the backing file,
# the config drive) stay QEMU's, still 0600. QEMU must reach them by path, so
# their directories are root's with QEMU's group, search-only for it (0710): it
# opens the files it is handed, cannot list which instances or images the host
# holds; other users get nothing. (Every guest's QEMU is the same user: keeping
# one guest's QEMU from another's running disks is sVirt's job, not modes'.)
PRIVATE_FILE_MODE = 0o600
PRIVATE_DIR_MODE = 0o710


def make_private(path: Path, gid: int) -> None:
    """A directory on the way to tenants' files: ours, QEMU's group may pass through."""
    path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    # Not root (qemu:///session): QEMU runs as this user, the owner, and needs no group.
    if path.stat().st_gid != gid and os.geteuid() == 0:
        os.chown(path, -1, gid)
    path.chmod(PRIVATE_DIR_MODE)


def _qemu_img(*args: str) -> None:
    try:
        subprocess.run(["qemu-img", *args], check=True, capture_output=True, text=True)
    except subprocess.CalledProcessError as exc:
        raise StorageError(f"qemu-img {args[0]} failed: {exc.stderr.strip()}") from exc


def virtual_size(disk: Path) -> int:
    info = subprocess.run(["qemu-img", "info", "--output=json", str(disk)], check=True,
                          capture_output=True, text=True)
    return int(json.loads(info.stdout)["virtual-size"])


class LocalFileStorage(InstanceStorage):
    def __init__(self, state_dir: Path, qemu_gid: Callable[[], int]):
        self.state_dir = state_dir   # nothing is touched before ensure_host or a disk is asked for
        self.qemu_gid = qemu_gid     # QEMU's group (the driver asks libvirt, once)
        self._lock = threading.Lock()  # attachments: one instance per volume

    def instance_dir(self, instance_id: str) -> Path:
        return self.state_dir / "instances" / instance_id

    def _private_dir(self, path: Path) -> Path:
        make_private(path, self.qemu_gid())
        return path

    def ensure_host(self) -> None:
        # The image cache keeps its files in _base. Files an older agent left
        # readable to everyone are made private too.
        for path in (self.state_dir, self.state_dir / "instances", self.state_dir / "_base"):
            self._private_dir(path)
        for directory in (self.state_dir / "instances").iterdir():
            if directory.is_dir():
                self._private_dir(directory)
                for name in ("disk.qcow2", "config.iso"):
                    if (directory / name).exists():
                        (directory / name).chmod(PRIVATE_FILE_MODE)
        for cached in (self.state_dir / "_base").iterdir():
            if cached.is_file():
                cached.chmod(PRIVATE_FILE_MODE)

    def prepare_root(self, instance_id: str, image: ImageFiles, disk_gb: int) -> DiskDevice:
        check_id("instance", instance_id)
        disk = self._private_dir(self.instance_dir(instance_id)) / "disk.qcow2"
        if not disk.exists():
            # The image cache's files are read-only, shared by the overlays on them.
            _qemu_img("create", "-q", "-f", "qcow2", "-F", image.disk_format, "-b", image.disk_path,
                      str(disk), f"{disk_gb}G")
            disk.chmod(PRIVATE_FILE_MODE)  # libvirt lends it to QEMU while it runs
        return DiskDevice(str(disk), "qcow2")

    def prepare_config_drive(self, instance_id: str, hostname: str, public_keys: tuple[str, ...],
                             user_data: bytes) -> DiskDevice:
        check_id("instance", instance_id)
        iso = self._private_dir(self.instance_dir(instance_id)) / "config.iso"
        try:
            config_drive.build(iso, instance_id, hostname, public_keys, user_data)
        except ValueError as exc:
            raise StorageError(f"config drive: {exc}") from exc
        return DiskDevice(str(iso), "raw")

    def root_size(self, instance_id: str) -> int:
        disk = self.instance_dir(instance_id) / "disk.qcow2"
        if not disk.exists():
            raise StorageError(f"instance {instance_id} has no root disk here")
        return virtual_size(disk)

    def grow_root(self, instance_id: str, disk_gb: int) -> None:
        if disk_gb * GiB < self.root_size(instance_id):
            raise StorageError("a disk can only grow")
        _qemu_img("resize", "-q", str(self.instance_dir(instance_id) / "disk.qcow2"), f"{disk_gb}G")

    def _volume(self, volume_id: str) -> Path:
        return self.state_dir / "volumes" / f"{volume_id}.qcow2"

    def _holder(self, volume_id: str) -> str | None:
        instances = self.state_dir / "instances"
        found = list(instances.glob(f"*/volumes/{volume_id}")) if instances.is_dir() else []
        return found[0].parent.parent.name if found else None

    def attach(self, instance_id: str, device: BlockDeviceSpec) -> DiskDevice:
        check_id("instance", instance_id)
        check_id("volume", device.volume_id)
        with self._lock:
            holder = self._holder(device.volume_id)
            if holder not in (None, instance_id):
                raise StorageError(f"volume {device.volume_id} is attached to instance {holder}")
            volume = self._volume(device.volume_id)
            if not volume.exists():
                self._private_dir(volume.parent)
                temp = volume.with_suffix(".new")  # then renamed: never half a volume
                _qemu_img("create", "-q", "-f", "qcow2", str(temp), f"{device.size_gb}G")
                temp.chmod(PRIVATE_FILE_MODE)
                os.replace(temp, volume)
            links = self._private_dir(self.instance_dir(instance_id) / "volumes")
            if not (links / device.volume_id).is_symlink():
                (links / device.volume_id).symlink_to(volume)
        return DiskDevice(str(volume), "qcow2", device.volume_id[:20])

    def detach(self, instance_id: str, volume_id: str) -> bool:
        if not (valid_id(instance_id) and valid_id(volume_id)):
            return False
        link = self.instance_dir(instance_id) / "volumes" / volume_id
        with self._lock:
            if not link.is_symlink():
                return False
            link.unlink()
            return True

    def attached(self, instance_id: str) -> list[str]:
        links = self.instance_dir(instance_id) / "volumes"
        if not (valid_id(instance_id) and links.is_dir()):
            return []
        return sorted(p.name for p in links.iterdir())

    def delete_instance(self, instance_id: str) -> bool:
        if not valid_id(instance_id):
            return False
        directory = self.instance_dir(instance_id)
        if not directory.exists():
            return False
        # The links go with it; the volumes they point at stay.
        with self._lock:
            shutil.rmtree(directory, ignore_errors=True)
        return True

