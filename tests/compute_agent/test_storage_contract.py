"""The storage contract (compute_agent/storage.py), checked against every
implementation: the fake, and qcow2 files made by the real qemu-img."""

import subprocess
import uuid

import pytest
from compute_agent.errors import StorageError
from compute_agent.local_storage import LocalFileStorage
from compute_agent.storage import BlockDeviceSpec, FakeStorage, GiB, ImageFiles, InstanceStorage


@pytest.fixture
def image(tmp_path) -> ImageFiles:
    base = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "1G"], check=True)
    return ImageFiles("img", str(base))


@pytest.fixture(params=["fake", "local"])
def storage(request, tmp_path) -> InstanceStorage:
    if request.param == "fake":
        return FakeStorage()
    return LocalFileStorage(tmp_path / "agent", lambda: 0)


def instance() -> str:
    return str(uuid.uuid4())


def test_root_disk_from_the_image_is_kept_and_only_grows(storage, image):
    storage.ensure_host()
    storage.ensure_host()
    i = instance()
    root = storage.prepare_root(i, image, 1)
    assert root.format == "qcow2" and storage.root_size(i) == 1 * GiB
    storage.grow_root(i, 2)
    assert storage.prepare_root(i, image, 1) == root  # a retried spawn keeps the disk
    assert storage.root_size(i) == 2 * GiB
    with pytest.raises(StorageError):
        storage.grow_root(i, 1)
    assert storage.root_size(i) == 2 * GiB
    with pytest.raises(StorageError):
        storage.root_size(instance())


def test_config_drive_is_rebuilt_and_a_bad_one_refused(storage, image):
    i = instance()
    drive = storage.prepare_config_drive(i, "web1", ("ssh-ed25519 AAAA k",), b"#cloud-config\n")
    assert drive.format == "raw"
    assert storage.prepare_config_drive(i, "web2", (), b"") == drive
    for hostname, keys in (("Not_A_Label!", ()), ("web1", ("two\nlines",))):
        with pytest.raises(StorageError):
            storage.prepare_config_drive(instance(), hostname, keys, b"")


def test_a_volume_is_one_instances_at_a_time_and_outlives_it(storage, image):
    a, b = instance(), instance()
    storage.prepare_root(a, image, 1)
    volume = BlockDeviceSpec("vol-0123456789abcdef0123", 1)
    disk = storage.attach(a, volume)
    assert disk.serial == "vol-0123456789abcdef"  # 20 characters: virtio's limit
    assert storage.attach(a, volume) == disk      # idempotent
    assert storage.attached(a) == [volume.volume_id]
    with pytest.raises(StorageError):
        storage.attach(b, volume)
    assert storage.attached(b) == []
    assert storage.delete_instance(a) is True
    assert storage.attached(a) == []
    with pytest.raises(StorageError):
        storage.root_size(a)
    assert storage.attach(b, volume) == disk       # the same volume, now b's
    assert storage.detach(b, volume.volume_id) is True
    assert storage.detach(b, volume.volume_id) is False
    assert storage.attached(b) == []
    assert storage.delete_instance(a) is False


def test_bad_ids_are_refused(storage, image):
    with pytest.raises(StorageError):
        storage.attach(instance(), BlockDeviceSpec("../../etc", 1))
    with pytest.raises(StorageError):
        storage.prepare_root("../x", image, 1)
    assert storage.detach(instance(), "../../etc") is False
    assert storage.delete_instance("../..") is False


def test_local_volume_keeps_its_file_through_detach_and_instance_deletion(tmp_path, image):
    """Not made again: the same file (inode, untouched), so the same data."""
    import os

    storage = LocalFileStorage(tmp_path / "agent", lambda: 0)
    a = instance()
    disk = storage.attach(a, BlockDeviceSpec("vol-1", 1))
    before = os.stat(disk.path)
    assert oct(before.st_mode & 0o777) == oct(0o600)
    storage.delete_instance(a)
    again = storage.attach(instance(), BlockDeviceSpec("vol-1", 2))
    after = os.stat(again.path)
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == \
        (before.st_ino, before.st_mtime_ns, before.st_size)
