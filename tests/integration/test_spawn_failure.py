"""An agent that fails to spawn: the instance goes to ERROR with the reason, and
its domain, disk and claim are cleaned up; delete still works."""

import subprocess

from cloudapi.v1 import compute_pb2 as pb

from control.store import keys
from tests.conftest import IMAGE_DIR


def upload_broken_image(api, tmp_path, name: str) -> None:
    """An image whose kernel is garbage: QEMU refuses it after the domain and
    its disk were made, so the cleanup has something to clean."""
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"\x00not a kernel" * 100)
    api.upload_image(pb.ImageInfo(name=name, disk_format="qcow2", cmdline="console=ttyS0"),
                     IMAGE_DIR / "disk.qcow2", kernel, IMAGE_DIR / "initrd.img")


def test_failed_spawn_leaves_error_and_nothing_behind(api, cloud, store, tmp_path):
    upload_broken_image(api, tmp_path, "broken-kernel")
    created = api.instances.CreateInstance(pb.CreateInstanceRequest(
        name="broken1", flavor="tiny", image="broken-kernel"))
    failed = api.wait_status(created.id, {"ACTIVE", "ERROR"})
    assert failed.status == "ERROR"
    assert failed.fault.phase == "spawning"
    assert failed.fault.message  # the reason, from the host
    assert cloud.host_name in failed.fault.message

    assert subprocess.run(["virsh", "-c", "qemu:///system", "domstate", created.id],
                          capture_output=True).returncode != 0
    assert not (cloud.root / "agent" / "instances" / created.id).exists()
    assert store.get(keys.allocation(created.id)) is None

    api.instances.DeleteInstance(pb.DeleteInstanceRequest(id_or_name="broken1"))
    assert api.wait_gone(created.id)
