"""The walking skeleton, end to end: a real guest boots under QEMU through the
whole control plane and is deleted without leaving anything behind."""

import grp
import json
import re
import subprocess
from pathlib import Path

from cloudapi.v1 import compute_pb2 as pb

from control.store import keys


def domain_exists(uuid: str) -> bool:
    result = subprocess.run(["virsh", "-c", "qemu:///system", "domstate", uuid],
                            capture_output=True, text=True)
    return result.returncode == 0


def wait_console(api, instance_id: str, pattern: str, timeout_s: float = 120) -> str:
    import time
    deadline = time.monotonic() + timeout_s
    output = ""
    while time.monotonic() < deadline:
        output = api.instances.GetConsoleOutput(
            pb.GetConsoleOutputRequest(id_or_name=instance_id)).output
        if re.search(pattern, output):
            return output
        time.sleep(0.5)
    raise AssertionError(f"{pattern!r} not on the console after {timeout_s}s:\n{output[-3000:]}")


def test_create_boot_console_delete(api, cloud, store):
    created = api.instances.CreateInstance(pb.CreateInstanceRequest(
        name="e2e-web1", flavor="small", request_id="e2e-create-1"))
    assert created.status == "BUILD"
    assert created.flavor == "small" and created.vcpus == 1 and created.memory_mb == 512

    active = api.wait_status(created.id, {"ACTIVE", "ERROR"})
    assert active.status == "ACTIVE", active.fault.message
    assert active.host == cloud.host_name
    assert active.power_state == "running"
    assert domain_exists(created.id)
    disk = Path(cloud.root / "agent" / "instances" / created.id / "disk.qcow2")
    assert disk.exists()
    # The claim on the host is recorded.
    assert store.get(keys.allocation(created.id)) is not None

    # The guest booted *this* instance: its id is on its own serial console.
    output = wait_console(api, created.id, rf"CLOUD-BOOT-OK instance_id={created.id} ")
    assert "boot_id=" in output

    # It got an address from the host's NAT network by DHCP, seen through the lease.
    wait_console(api, created.id, r"CLOUD-NET-OK ip=\d+\.\d+\.\d+\.\d+")
    import time
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not api.instances.GetInstance(
            pb.GetInstanceRequest(id_or_name=created.id)).addresses:
        time.sleep(0.5)
    shown = api.instances.GetInstance(pb.GetInstanceRequest(id_or_name="e2e-web1"))
    assert shown.id == created.id
    assert shown.addresses and shown.addresses[0].startswith("10.213.0.")

    listed = api.instances.ListInstances(pb.ListInstancesRequest()).instances
    assert created.id in [i.id for i in listed]

    deleting = api.instances.DeleteInstance(pb.DeleteInstanceRequest(id_or_name="e2e-web1"))
    assert deleting.status == "DELETING"
    assert api.wait_gone(created.id)
    assert not domain_exists(created.id)
    assert not disk.parent.exists()
    assert created.id not in [i.id for i in api.instances.ListInstances(
        pb.ListInstancesRequest()).instances]
    assert store.get(keys.allocation(created.id)) is None


def test_tenant_files_are_private_on_the_hosts(api, cloud):
    """A tenant's files (instance disk, config drive with its user data, console log,
    the cached image it boots from, the uploaded images on the API's host) are 0600,
    in directories no other local user can list, and the guest still boots: libvirt
    lends the files to QEMU's user while the guest runs."""
    created = api.instances.CreateInstance(pb.CreateInstanceRequest(
        name="private-files", flavor="tiny", user_data=b"#cloud-config\npassword: secret\n"))
    try:
        active = api.wait_status(created.id, {"ACTIVE", "ERROR"})
        assert active.status == "ACTIVE", active.fault.message
        wait_console(api, created.id, rf"CLOUD-BOOT-OK instance_id={created.id} ")

        def mode(path: Path) -> int:
            return path.stat().st_mode & 0o7777

        agent = cloud.root / "agent"
        instance = agent / "instances" / created.id
        qemu_group = grp.getgrgid(agent.stat().st_gid).gr_name
        for directory in (agent, agent / "instances", instance, agent / "_base"):
            # QEMU's group may pass through (it opens what libvirt hands it); no one lists.
            assert (mode(directory), directory.stat().st_uid) == (0o710, 0), directory
            assert directory.stat().st_gid == agent.stat().st_gid
        assert qemu_group == "libvirt-qemu"  # Debian's, as libvirt reports it
        for name in ("disk.qcow2", "config.iso", "console.log"):
            assert mode(instance / name) == 0o600, name
        # The cached image: the disk's backing file, its kernel and initrd (and any other).
        info = json.loads(subprocess.run(
            ["qemu-img", "info", "-U", "--output=json", str(instance / "disk.qcow2")],
            check=True, capture_output=True, text=True).stdout)
        base = Path(info["full-backing-filename"])
        assert base.parent == agent / "_base" and mode(base) == 0o600
        cached = [f for f in (agent / "_base").iterdir() if not f.name.endswith(".part")]
        assert len(cached) >= 3
        assert {f: mode(f) for f in cached} == {f: 0o600 for f in cached}

        images = cloud.root / "images"
        assert mode(images) == 0o700
        stored = [f for d in images.iterdir() for f in d.iterdir()]
        assert stored and all(mode(f) == 0o600 for f in stored), stored
        assert all(mode(d) == 0o700 for d in images.iterdir())
    finally:
        api.instances.DeleteInstance(pb.DeleteInstanceRequest(id_or_name=created.id))
        assert api.wait_gone(created.id)


def test_repeated_request_id_returns_the_first_instance(api):
    request = pb.CreateInstanceRequest(name="idem-1", flavor="tiny", request_id="idem-req-1")
    first = api.instances.CreateInstance(request)
    again = api.instances.CreateInstance(request)
    assert again.id == first.id
    names = [i.name for i in api.instances.ListInstances(pb.ListInstancesRequest()).instances]
    assert names.count("idem-1") == 1
    api.instances.DeleteInstance(pb.DeleteInstanceRequest(id_or_name=first.id))
    assert api.wait_gone(first.id)


def test_delete_while_building_leaves_nothing(api, cloud, store):
    created = api.instances.CreateInstance(pb.CreateInstanceRequest(name="early-del", flavor="tiny"))
    deleting = api.instances.DeleteInstance(pb.DeleteInstanceRequest(id_or_name=created.id))
    assert deleting.status == "DELETING"
    assert api.wait_gone(created.id)
    import time
    time.sleep(2)  # let a build that was already in flight finish its own cleanup
    assert not domain_exists(created.id)
    assert not (cloud.root / "agent" / "instances" / created.id).exists()
    assert store.get(keys.allocation(created.id)) is None
    assert store.get(keys.instance_index(created.id)) is None
