"""Stop, start, reboot, scale and rename through the whole control plane, on
fake-driver hosts; the claims a scale makes are exact and undone on failure."""

import grpc
import pytest
from cloudapi.v1 import compute_pb2 as pb
from cloudapi.v1 import identity_pb2 as ipb

from control.placement.allocations import Placement
from tests.conftest import login, start_cloud, stop_cloud, until
from tests.control.test_quota import delete_all, new_tenant


@pytest.fixture(scope="module")
def fake_cloud():
    cloud, store = start_cloud("life", agent_settings={"driver": "fake"})
    yield cloud, store, login(cloud, "admin")
    stop_cloud(cloud, "life")


def idle(client, instance_id, timeout_s: float = 20):
    """The instance once no operation is in flight (fake driver: measured under
    1 s); fails after timeout_s."""
    def done():
        current = client.instances.GetInstance(pb.GetInstanceRequest(id_or_name=instance_id))
        return not current.task_state and current
    return until(done, timeout_s, f"instance {instance_id} idle", every_s=0.05)


def expect(code, call):
    with pytest.raises(grpc.RpcError) as info:
        call()
    assert info.value.code() == code, info.value.details()
    return info.value.details()


@pytest.fixture
def running(fake_cloud):
    cloud, store, admin = fake_cloud
    project, client = new_tenant(cloud, admin, instances=5, vcpus=3, memory_mb=-1, disk_gb=-1)
    created = client.instances.CreateInstance(pb.CreateInstanceRequest(name="vm", flavor="small"))
    assert client.wait_status(created.id, {"ACTIVE", "ERROR"}).status == "ACTIVE"
    yield client, created, store, project
    delete_all(client, [created])
    assert client.quotas.GetQuota(ipb.GetQuotaRequest()).usage == ipb.QuotaValues()


def test_stop_start_reboot(running):
    client, vm, _, _ = running
    op = pb.InstanceOperationRequest(id_or_name="vm")
    assert client.instances.StopInstance(op).task_state == "powering-off"
    stopped = idle(client, vm.id)
    assert (stopped.status, stopped.power_state) == ("SHUTOFF", "shutoff")
    details = expect(grpc.StatusCode.FAILED_PRECONDITION, lambda: client.instances.StopInstance(op))
    assert "cannot stop" in details
    expect(grpc.StatusCode.FAILED_PRECONDITION, lambda: client.instances.RebootInstance(op))
    client.instances.StartInstance(op)
    started = idle(client, vm.id)
    assert (started.status, started.power_state) == ("ACTIVE", "running")
    client.instances.RebootInstance(pb.InstanceOperationRequest(id_or_name="vm", hard=True))
    assert idle(client, vm.id).status == "ACTIVE"
    done = [(a.action, a.result) for a in client.instances.ListInstanceActions(
        pb.ListInstanceActionsRequest(id_or_name="vm")).actions]
    assert done == [("create", "success"), ("stop", "success"), ("start", "success"),
                    ("reboot", "success")]


def test_scale_claims_quota_and_host_and_is_exact(running):
    client, vm, store, _ = running
    placement = Placement(store, None)
    host = vm.host or client.instances.GetInstance(pb.GetInstanceRequest(id_or_name="vm")).host
    before = placement.usage(host)
    scaled = client.instances.ScaleInstance(pb.ScaleInstanceRequest(
        id_or_name="vm", vcpus=2, memory_mb=1024, disk_gb=4))
    assert scaled.status == "RESIZE"
    after = idle(client, vm.id)
    assert (after.vcpus, after.memory_mb, after.disk_gb) == (2, 1024, 4)
    assert after.status == "ACTIVE" and not after.HasField("fault")
    usage = client.quotas.GetQuota(ipb.GetQuotaRequest()).usage
    assert (usage.vcpus, usage.memory_mb, usage.disk_gb) == (2, 1024, 4)
    grown = placement.usage(host)
    assert (grown.vcpus - before.vcpus, grown.memory_mb - before.memory_mb,
            grown.disk_gb - before.disk_gb) == (1, 512, 2)
    # Scaling down memory and vCPUs gives back what it frees.
    client.instances.ScaleInstance(pb.ScaleInstanceRequest(id_or_name="vm", vcpus=1, memory_mb=512))
    idle(client, vm.id)
    usage = client.quotas.GetQuota(ipb.GetQuotaRequest()).usage
    assert (usage.vcpus, usage.memory_mb, usage.disk_gb) == (1, 512, 4)
    assert placement.usage(host).memory_mb == before.memory_mb


def test_scale_refusals_change_nothing(running):
    client, vm, store, project = running
    before = client.instances.GetInstance(pb.GetInstanceRequest(id_or_name="vm"))
    quota_before = client.quotas.GetQuota(ipb.GetQuotaRequest()).usage
    cases = [
        (grpc.StatusCode.INVALID_ARGUMENT, "maximum", dict(vcpus=before.max_vcpus + 1)),
        (grpc.StatusCode.INVALID_ARGUMENT, "maximum", dict(memory_mb=before.max_memory_mb + 1)),
        (grpc.StatusCode.INVALID_ARGUMENT, "only grow", dict(disk_gb=1)),
        (grpc.StatusCode.INVALID_ARGUMENT, "nothing to change", dict(vcpus=before.vcpus)),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "quota exceeded for vcpus", dict(vcpus=4)),
    ]
    for code, words, sizes in cases:
        details = expect(code, lambda sizes=sizes: client.instances.ScaleInstance(
            pb.ScaleInstanceRequest(id_or_name="vm", **sizes)))
        assert words in details
    after = client.instances.GetInstance(pb.GetInstanceRequest(id_or_name="vm"))
    assert (after.vcpus, after.memory_mb, after.disk_gb, after.status) == (
        before.vcpus, before.memory_mb, before.disk_gb, "ACTIVE")
    assert client.quotas.GetQuota(ipb.GetQuotaRequest()).usage == quota_before
    assert [a.action for a in client.instances.ListInstanceActions(
        pb.ListInstanceActionsRequest(id_or_name="vm")).actions] == ["create"]


def test_scale_beyond_the_host_says_so(running, fake_cloud):
    client, vm, store, _ = running
    _, _, admin = fake_cloud
    host = client.instances.GetInstance(pb.GetInstanceRequest(id_or_name="vm")).host
    free = {i.resource_class: i.capacity - i.used
            for i in admin.hosts.GetHost(pb.GetHostRequest(name=host)).inventory}["MEMORY_MB"]
    admin.hosts.SetInventory(pb.SetInventoryRequest(name=host, resource_class="MEMORY_MB",
                                                    reserved=512 + free - 100))
    try:
        details = expect(grpc.StatusCode.RESOURCE_EXHAUSTED, lambda: client.instances.ScaleInstance(
            pb.ScaleInstanceRequest(id_or_name="vm", memory_mb=1024)))
        assert f"host {host} lacks MEMORY_MB" in details
    finally:
        admin.hosts.SetInventory(pb.SetInventoryRequest(name=host, resource_class="MEMORY_MB",
                                                        reserved=512))


def test_rename(running):
    client, vm, _, _ = running
    renamed = client.instances.RenameInstance(pb.RenameInstanceRequest(id_or_name="vm", name="vm2"))
    assert renamed.name == "vm2"
    assert client.instances.GetInstance(pb.GetInstanceRequest(id_or_name="vm2")).id == vm.id
    expect(grpc.StatusCode.NOT_FOUND, lambda: client.instances.GetInstance(
        pb.GetInstanceRequest(id_or_name="vm")))
    expect(grpc.StatusCode.INVALID_ARGUMENT, lambda: client.instances.RenameInstance(
        pb.RenameInstanceRequest(id_or_name="vm2", name="bad name")))
    client.instances.RenameInstance(pb.RenameInstanceRequest(id_or_name="vm2", name="vm"))


def test_reader_cannot_operate(fake_cloud, running):
    cloud, _, admin = fake_cloud
    client, vm, _, project = running
    admin.identity.CreateUser(ipb.CreateUserRequest(name=f"{project}-r", password="pw", project=project,
                                                    role="reader"))
    from tests.conftest import ApiClient
    reader = ApiClient(cloud.endpoint)
    reader.login(f"{project}-r", "pw", project)
    expect(grpc.StatusCode.PERMISSION_DENIED, lambda: reader.instances.StopInstance(
        pb.InstanceOperationRequest(id_or_name="vm")))
    expect(grpc.StatusCode.PERMISSION_DENIED, lambda: reader.instances.ScaleInstance(
        pb.ScaleInstanceRequest(id_or_name="vm", vcpus=2)))
    assert reader.instances.ListInstanceActions(pb.ListInstanceActionsRequest(id_or_name="vm")).actions


def test_cli_lifecycle(fake_cloud, tmp_path):
    import json
    import os
    import subprocess
    import sys
    cloud, _, admin = fake_cloud
    project, client = new_tenant(cloud, admin, instances=5, vcpus=-1, memory_mb=-1, disk_gb=-1)
    admin.identity.CreateUser(ipb.CreateUserRequest(name=f"{project}-cli", password="pw",
                                                    project=project, role="member"))
    env = {**os.environ, "CLOUD_ENDPOINT": cloud.endpoint, "CLOUD_CONFIG": str(tmp_path / "c.toml"),
           "CLOUD_USERNAME": f"{project}-cli", "CLOUD_PASSWORD": "pw", "CLOUD_PROJECT": project,
           "COLUMNS": "200"}

    def run(*args):
        result = subprocess.run([sys.executable, "-m", "cloudclient.cli", *args], env=env,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout

    run("instance", "create", "--flavor", "small", "--name", "c1", "--wait")
    stopped = json.loads(run("instance", "stop", "c1", "--wait", "-o", "json"))
    assert stopped["status"] == "SHUTOFF"
    assert json.loads(run("instance", "start", "c1", "--wait", "-o", "json"))["status"] == "ACTIVE"
    run("instance", "reboot", "c1", "--hard", "--wait")
    scaled = json.loads(run("instance", "scale", "c1", "--vcpus", "2", "--memory", "1024", "--disk", "3",
                            "--wait", "-o", "json"))
    assert (scaled["vcpus"], scaled["memory_mb"], scaled["disk_gb"]) == (2, 1024, 3)
    stats = json.loads(run("instance", "stats", "c1", "--interval", "0.1", "-o", "json"))
    assert stats["vcpus"] == 2 and stats["memory_actual_kb"] == 1024 * 1024 and "cpu_percent" in stats
    run("instance", "rename", "c1", "c2")
    history = json.loads(run("instance", "actions", "c2", "-o", "json"))
    assert [a["action"] for a in history] == ["create", "stop", "start", "reboot", "scale", "rename"]
    assert all(a["result"] == "success" and a["user"] == f"{project}-cli" for a in history)
    refused = subprocess.run([sys.executable, "-m", "cloudclient.cli", "instance", "scale", "c2", "--vcpus",
                              "99"], env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "INVALID_ARGUMENT" in refused.stderr
    run("instance", "delete", "c2", "--wait")


def test_scale_out_all_or_none(fake_cloud):
    cloud, store, admin = fake_cloud
    _, client = new_tenant(cloud, admin, instances=4, vcpus=-1, memory_mb=-1, disk_gb=-1)
    made = client.instances.CreateInstances(pb.CreateInstancesRequest(
        name="web", flavor="tiny", count=3)).instances
    assert [i.name for i in made] == ["web-1", "web-2", "web-3"]
    assert all(client.wait_status(i.id, {"ACTIVE", "ERROR"}).status == "ACTIVE" for i in made)
    assert client.quotas.GetQuota(ipb.GetQuotaRequest()).usage.instances == 3
    # 3 more do not fit the quota of 4: none is made...
    details = expect(grpc.StatusCode.RESOURCE_EXHAUSTED, lambda: client.instances.CreateInstances(
        pb.CreateInstancesRequest(name="api", flavor="tiny", count=3)))
    assert "quota allows 1 more" in details
    assert len(client.instances.ListInstances(pb.ListInstancesRequest()).instances) == 3
    # ...unless the request accepts fewer.
    more = client.instances.CreateInstances(pb.CreateInstancesRequest(
        name="api", flavor="tiny", count=3, min_count=1)).instances
    assert [i.name for i in more] == ["api-1"]
    assert client.quotas.GetQuota(ipb.GetQuotaRequest()).usage.instances == 4
    placement = Placement(store, None)
    assert all(placement.allocation(i.id) is not None for i in [*made, *more])
    delete_all(client, [*made, *more])
    assert client.quotas.GetQuota(ipb.GetQuotaRequest()).usage == ipb.QuotaValues()
    assert all(placement.allocation(i.id) is None for i in [*made, *more])


def test_scale_out_bad_counts(fake_cloud):
    cloud, _, admin = fake_cloud
    _, client = new_tenant(cloud, admin)
    for count, min_count in [(0, 0), (21, 0), (3, 4)]:
        request = pb.CreateInstancesRequest(name="x", flavor="tiny", count=count, min_count=min_count)
        expect(grpc.StatusCode.INVALID_ARGUMENT,
               lambda r=request: client.instances.CreateInstances(r))
    assert client.instances.ListInstances(pb.ListInstancesRequest()).instances == []


def test_a_request_id_is_one_kind_of_create(fake_cloud):
    """A repeated request_id returns the first result for the same kind of create, and is
    INVALID_ARGUMENT (naming the first kind) for the other kind: nothing more is made."""
    cloud, _, admin = fake_cloud
    _, client = new_tenant(cloud, admin, instances=10, vcpus=-1, memory_mb=-1, disk_gb=-1)
    many = pb.CreateInstancesRequest(name="rid", flavor="tiny", count=2, request_id="rid-many")
    made = client.instances.CreateInstances(many).instances
    assert [i.id for i in client.instances.CreateInstances(many).instances] == [i.id for i in made]
    details = expect(grpc.StatusCode.INVALID_ARGUMENT, lambda: client.instances.CreateInstance(
        pb.CreateInstanceRequest(name="rid-one", flavor="tiny", request_id="rid-many")))
    assert "request_id 'rid-many' was used for a CreateInstances request" in details
    one = pb.CreateInstanceRequest(name="rid-one", flavor="tiny", request_id="rid-one")
    first = client.instances.CreateInstance(one)
    assert client.instances.CreateInstance(one).id == first.id
    details = expect(grpc.StatusCode.INVALID_ARGUMENT, lambda: client.instances.CreateInstances(
        pb.CreateInstancesRequest(name="rid2", flavor="tiny", count=2, request_id="rid-one")))
    assert "request_id 'rid-one' was used for a CreateInstance request" in details
    listed = client.instances.ListInstances(pb.ListInstancesRequest()).instances
    assert sorted(i.name for i in listed) == ["rid-1", "rid-2", "rid-one"]
    assert client.quotas.GetQuota(ipb.GetQuotaRequest()).usage.instances == 3
    delete_all(client, [*made, first])


def test_cold_resize_to_another_flavor(running):
    client, vm, store, _ = running
    client.instances.StopInstance(pb.InstanceOperationRequest(id_or_name="vm"))
    idle(client, vm.id)
    resizing = client.instances.ResizeInstance(pb.ResizeInstanceRequest(id_or_name="vm", flavor="medium"))
    assert resizing.status == "RESIZE"
    resized = idle(client, vm.id)
    assert (resized.flavor, resized.vcpus, resized.memory_mb, resized.disk_gb) == ("medium", 2, 1024, 5)
    assert resized.status == "SHUTOFF"  # it was stopped, and stays so
    usage = client.quotas.GetQuota(ipb.GetQuotaRequest()).usage
    assert (usage.vcpus, usage.memory_mb, usage.disk_gb) == (2, 1024, 5)
    assert Placement(store, None).allocation(vm.id).resources.disk_gb == 5
    for flavor, words in [("small", "smaller disk"), ("medium", "already")]:
        details = expect(grpc.StatusCode.INVALID_ARGUMENT, lambda f=flavor: client.instances.ResizeInstance(
            pb.ResizeInstanceRequest(id_or_name="vm", flavor=f)))
        assert words in details
    expect(grpc.StatusCode.NOT_FOUND, lambda: client.instances.ResizeInstance(
        pb.ResizeInstanceRequest(id_or_name="vm", flavor="no-such")))


def test_delete_during_resize_leaves_nothing(fake_cloud):
    cloud, store, admin = fake_cloud
    _, client = new_tenant(cloud, admin, instances=2, vcpus=-1, memory_mb=-1, disk_gb=-1)
    created = client.instances.CreateInstance(pb.CreateInstanceRequest(name="d", flavor="small"))
    client.wait_status(created.id, {"ACTIVE"})
    client.instances.ResizeInstance(pb.ResizeInstanceRequest(id_or_name="d", flavor="medium"))
    client.instances.DeleteInstance(pb.DeleteInstanceRequest(id_or_name="d"))
    assert client.wait_gone(created.id)
    assert client.quotas.GetQuota(ipb.GetQuotaRequest()).usage == ipb.QuotaValues()
    assert Placement(store, None).allocation(created.id) is None
