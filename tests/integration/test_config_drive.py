"""The NoCloud config drive, end to end: a real guest gets its hostname, its
keypair and a user-data script from the drive, and prints what they did on its
serial console. User data has a size limit and leaves nothing behind."""

import re
import time
import uuid
from pathlib import Path

import grpc
import pytest
from cloudapi.v1 import compute_pb2 as pb
from cloudapi.v1 import identity_pb2 as ipb
from compute_agent import config_drive

from control.store import keys

SCRIPT = b"""#!/bin/sh
echo "hello from user-data $(hostname)"
echo "answer=$((6 * 7))"
echo "keys-installed=$(wc -l < /root/.ssh/authorized_keys)"
"""


def console_lines(api, instance_id: str, until: str, timeout_s: float = 120) -> list[str]:
    """The console's lines (\\r stripped) once a line matches `until`."""
    deadline = time.monotonic() + timeout_s
    lines: list[str] = []
    while time.monotonic() < deadline:
        output = api.instances.GetConsoleOutput(
            pb.GetConsoleOutputRequest(id_or_name=instance_id)).output
        lines = [line.rstrip("\r") for line in output.split("\n")]
        if any(re.match(until, line) for line in lines):
            return lines
        time.sleep(0.5)
    raise AssertionError(f"{until!r} not on the console after {timeout_s}s:\n" +
                         "\n".join(lines[-60:]))


def usage(api) -> ipb.QuotaValues:
    return api.quotas.GetQuota(ipb.GetQuotaRequest()).usage


def names(api) -> list[str]:
    return [i.name for i in api.instances.ListInstances(pb.ListInstancesRequest()).instances]


def test_hostname_key_and_user_data_script_reach_the_guest(api, cloud, store):
    key_name = f"cd-{uuid.uuid4().hex[:6]}"
    keypair = api.keypairs.CreateKeypair(pb.CreateKeypairRequest(name=key_name)).keypair
    created = api.instances.CreateInstance(pb.CreateInstanceRequest(
        name="CD_Web.1", flavor="small", key_name=key_name, user_data=SCRIPT))
    project = store.get(keys.instance_index(created.id)).value["project"]
    # Kept apart from the instance record, which is listed often.
    assert store.get(keys.user_data(project, created.id)) is not None
    assert "user_data" not in store.get(keys.instance(project, created.id)).value

    active = api.wait_status(created.id, {"ACTIVE", "ERROR"})
    assert active.status == "ACTIVE", active.fault.message
    assert active.key_name == key_name
    iso = Path(cloud.root / "agent" / "instances" / created.id / "config.iso")
    label, files = config_drive.read(iso)
    assert label == "cidata" and files["user-data"] == SCRIPT
    assert keypair.public_key.encode() in files["meta-data"]

    lines = console_lines(api, created.id, r"CLOUD-USERDATA-END ")
    # The hostname comes from the display name, made a valid RFC 1123 label.
    assert "CLOUD-HOSTNAME name=cd-web-1" in lines
    assert "CLOUD-KEYS count=1" in lines
    begin = lines.index("CLOUD-USERDATA-BEGIN")
    end = next(i for i, line in enumerate(lines) if line.startswith("CLOUD-USERDATA-END "))
    assert lines[begin + 1:end] == ["hello from user-data cd-web-1", "answer=42",
                                    "keys-installed=1"]
    assert lines[end] == "CLOUD-USERDATA-END rc=0"

    # After a reboot the drive is read again, but the script ran for this
    # instance already (cloud-init's once-per-instance).
    api.instances.RebootInstance(pb.InstanceOperationRequest(id_or_name=created.id, hard=True))
    lines = console_lines(api, created.id, r"CLOUD-USERDATA skipped=already-ran")
    assert lines.count("CLOUD-HOSTNAME name=cd-web-1") == 2
    assert lines.count("CLOUD-USERDATA-BEGIN") == 1

    api.instances.DeleteInstance(pb.DeleteInstanceRequest(id_or_name=created.id))
    assert api.wait_gone(created.id)
    assert not iso.exists() and not iso.parent.exists()
    assert store.get(keys.user_data(project, created.id)) is None
    api.keypairs.DeleteKeypair(pb.DeleteKeypairRequest(name=key_name))


def test_user_data_over_64_kib_is_refused_and_nothing_is_recorded(api, store):
    before = usage(api)
    for too_big in (
            lambda: api.instances.CreateInstance(pb.CreateInstanceRequest(
                name="cd-too-big", flavor="tiny", user_data=b"x" * 65537)),
            lambda: api.instances.CreateInstances(pb.CreateInstancesRequest(
                name="cd-too-big", flavor="tiny", count=2, user_data=b"x" * 65537))):
        with pytest.raises(grpc.RpcError) as info:
            too_big()
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "64 KiB" in info.value.details()
    assert not [n for n in names(api) if n.startswith("cd-too-big")]
    assert usage(api) == before

    # Exactly 64 KiB is accepted, stored, and goes with the instance.
    created = api.instances.CreateInstance(pb.CreateInstanceRequest(
        name="cd-64k", flavor="tiny", user_data=b"x" * 65536))
    project = store.get(keys.instance_index(created.id)).value["project"]
    assert store.get(keys.user_data(project, created.id)) is not None
    api.instances.DeleteInstance(pb.DeleteInstanceRequest(id_or_name=created.id))
    assert api.wait_gone(created.id)
    assert store.get(keys.user_data(project, created.id)) is None


def test_scale_out_gives_every_instance_the_key_and_user_data(api, store):
    key_name = f"cd-{uuid.uuid4().hex[:6]}"
    api.keypairs.CreateKeypair(pb.CreateKeypairRequest(name=key_name))
    made = api.instances.CreateInstances(pb.CreateInstancesRequest(
        name="cd-many", flavor="tiny", count=2, key_name=key_name, user_data=SCRIPT)).instances
    try:
        assert [i.key_name for i in made] == [key_name, key_name]
        for instance in made:
            project = store.get(keys.instance_index(instance.id)).value["project"]
            assert store.get(keys.user_data(project, instance.id)) is not None
    finally:
        for instance in made:
            api.instances.DeleteInstance(pb.DeleteInstanceRequest(id_or_name=instance.id))
        for instance in made:
            assert api.wait_gone(instance.id)
    assert all(store.get(keys.user_data(project, i.id)) is None for i in made)
    api.keypairs.DeleteKeypair(pb.DeleteKeypairRequest(name=key_name))

    # A missing keypair or a server group is refused before anything is recorded.
    before = usage(api)
    for request, code in ((pb.CreateInstancesRequest(name="cd-refused", flavor="tiny", count=2,
                                                     key_name="no-such-key"),
                           grpc.StatusCode.NOT_FOUND),
                          (pb.CreateInstancesRequest(name="cd-refused", flavor="tiny", count=2,
                                                     group="any"),
                           grpc.StatusCode.INVALID_ARGUMENT)):
        with pytest.raises(grpc.RpcError) as info:
            api.instances.CreateInstances(request)
        assert info.value.code() == code
    assert not [n for n in names(api) if n.startswith("cd-refused")]
    assert usage(api) == before
