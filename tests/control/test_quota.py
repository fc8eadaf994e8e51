"""Quotas are exact under concurrency: parallel creates never overshoot, and usage
always equals what the live instances hold. Uses the fake driver (this is about
the control plane's claims, not hypervisors)."""

import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from cloudapi.v1 import compute_pb2 as pb
from cloudapi.v1 import identity_pb2 as ipb

from tests.conftest import ApiClient, login, start_cloud, stop_cloud


@pytest.fixture(scope="module")
def quota_cloud():
    cloud, store = start_cloud("quota", agent_settings={"driver": "fake"})
    yield cloud, login(cloud, "admin")
    stop_cloud(cloud, "quota")


def new_tenant(cloud, admin, **limits) -> tuple[str, ApiClient]:
    """A fresh project with the given quota, and a member logged in to it."""
    project = f"q-{uuid.uuid4().hex[:8]}"
    admin.identity.CreateProject(ipb.CreateProjectRequest(name=project))
    admin.identity.CreateUser(ipb.CreateUserRequest(name=f"{project}-user", password="pw-" + project,
                                                    project=project, role="member"))
    admin.quotas.SetQuota(ipb.SetQuotaRequest(project=project, **limits))
    client = ApiClient(cloud.endpoint)
    client.login(f"{project}-user", "pw-" + project, project)
    return project, client


def fire(client: ApiClient, flavors: list[str]) -> tuple[list[pb.Instance], Counter, list[str]]:
    """Send one create per flavor, all at once. Returns the accepted instances,
    the count of each status code, and the rejection messages."""
    def create(i_flavor):
        i, flavor = i_flavor
        try:
            return client.instances.CreateInstance(pb.CreateInstanceRequest(
                name=f"burst-{i}", flavor=flavor), timeout=120), "OK", ""
        except grpc.RpcError as exc:
            return None, exc.code().name, exc.details()

    with ThreadPoolExecutor(max_workers=len(flavors)) as pool:
        results = list(pool.map(create, enumerate(flavors)))
    return ([r[0] for r in results if r[0] is not None], Counter(r[1] for r in results),
            [r[2] for r in results if r[2]])


def usage(client: ApiClient) -> ipb.QuotaValues:
    return client.quotas.GetQuota(ipb.GetQuotaRequest()).usage


def delete_all(client: ApiClient, instances) -> None:
    for instance in instances:
        client.instances.DeleteInstance(pb.DeleteInstanceRequest(id_or_name=instance.id))
    for instance in instances:
        assert client.wait_gone(instance.id)


def live_sum(client: ApiClient) -> tuple[int, int]:
    live = client.instances.ListInstances(pb.ListInstancesRequest()).instances
    return len(live), sum(i.vcpus for i in live)


def test_hundred_parallel_creates_against_instance_quota_of_20(quota_cloud):
    cloud, admin = quota_cloud
    _, client = new_tenant(cloud, admin, instances=20, vcpus=-1, memory_mb=-1, disk_gb=-1)
    accepted, codes, messages = fire(client, ["tiny"] * 100)
    assert codes == Counter({"OK": 20, "RESOURCE_EXHAUSTED": 80})
    assert all("instances" in m and "limit 20" in m for m in messages)
    assert usage(client).instances == 20 == live_sum(client)[0]

    # The builds go through, and usage still equals the live instances.
    for instance in accepted:
        assert client.wait_status(instance.id, {"ACTIVE", "ERROR"}).status == "ACTIVE"
    assert usage(client).instances == live_sum(client)[0] == 20
    delete_all(client, accepted)
    assert usage(client) == ipb.QuotaValues()


def test_parallel_creates_with_mixed_flavors_against_vcpu_quota(quota_cloud):
    cloud, admin = quota_cloud
    _, client = new_tenant(cloud, admin, instances=-1, vcpus=10, memory_mb=-1, disk_gb=-1)
    flavors = ["tiny", "medium"] * 50  # 1 and 2 vCPUs
    accepted, codes, messages = fire(client, flavors)
    assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"}
    vcpus = sum(i.vcpus for i in accepted)
    assert vcpus <= 10
    assert usage(client).vcpus == vcpus == live_sum(client)[1]
    assert usage(client).instances == len(accepted)
    # A refused 1-vCPU create means the quota was full at that moment.
    assert all("vcpus" in m for m in messages)
    if codes["RESOURCE_EXHAUSTED"] and "tiny" in flavors:
        assert vcpus == 10
    delete_all(client, accepted)
    assert usage(client) == ipb.QuotaValues()


def test_exceeding_quota_says_which_resource_limit_usage_and_ask(quota_cloud):
    cloud, admin = quota_cloud
    project, client = new_tenant(cloud, admin, instances=5, vcpus=3, memory_mb=-1, disk_gb=-1)
    first = client.instances.CreateInstance(pb.CreateInstanceRequest(name="a", flavor="medium"))
    with pytest.raises(grpc.RpcError) as info:
        client.instances.CreateInstance(pb.CreateInstanceRequest(name="b", flavor="medium"))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert info.value.details() == (f"quota exceeded for vcpus in project {project}: "
                                    "limit 3, in use 2, asked 2")
    assert "b" not in [i.name for i in client.instances.ListInstances(pb.ListInstancesRequest()).instances]
    delete_all(client, [first])


def test_quota_show_and_set(quota_cloud):
    cloud, admin = quota_cloud
    project, client = new_tenant(cloud, admin, instances=7)
    quota = client.quotas.GetQuota(ipb.GetQuotaRequest())
    assert quota.project == project
    assert quota.limits.instances == 7
    assert quota.limits.vcpus == 20  # the cloud-wide default, not overridden
    with pytest.raises(grpc.RpcError) as info:
        admin.quotas.SetQuota(ipb.SetQuotaRequest(project=project, vcpus=-5))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_failed_build_releases_quota(quota_cloud):
    """A build that finds no host leaves the instance in ERROR, costing no quota."""
    cloud, admin = quota_cloud
    _, client = new_tenant(cloud, admin, instances=5, vcpus=-1, memory_mb=-1, disk_gb=-1)
    admin.flavors.CreateFlavor(pb.CreateFlavorRequest(flavor=pb.Flavor(
        name=f"huge-{uuid.uuid4().hex[:6]}", vcpus=1, memory_mb=10**7, disk_gb=1, public=True)))
    huge = [f.name for f in client.flavors.ListFlavors(pb.ListFlavorsRequest()).flavors
            if f.memory_mb == 10**7][0]
    created = client.instances.CreateInstance(pb.CreateInstanceRequest(name="too-big", flavor=huge))
    failed = client.wait_status(created.id, {"ACTIVE", "ERROR"})
    assert failed.status == "ERROR"
    assert "no host for flavor" in failed.fault.message and "lacked MEMORY_MB" in failed.fault.message
    deadline = time.monotonic() + 10
    while usage(client).instances and time.monotonic() < deadline:
        time.sleep(0.1)
    assert usage(client) == ipb.QuotaValues()
    delete_all(client, [created])
    assert usage(client) == ipb.QuotaValues()
    admin.flavors.DeleteFlavor(pb.DeleteFlavorRequest(name=huge))


def test_flavor_in_use_cannot_be_deleted(quota_cloud):
    cloud, admin = quota_cloud
    project, client = new_tenant(cloud, admin)
    name = f"priv-{uuid.uuid4().hex[:6]}"
    admin.flavors.CreateFlavor(pb.CreateFlavorRequest(flavor=pb.Flavor(
        name=name, vcpus=1, memory_mb=128, disk_gb=1, public=False, projects=[project])))
    assert name in [f.name for f in client.flavors.ListFlavors(pb.ListFlavorsRequest()).flavors]
    created = client.instances.CreateInstance(pb.CreateInstanceRequest(name="user1", flavor=name))
    with pytest.raises(grpc.RpcError) as info:
        admin.flavors.DeleteFlavor(pb.DeleteFlavorRequest(name=name))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "in use" in info.value.details()
    delete_all(client, [created])
    admin.flavors.DeleteFlavor(pb.DeleteFlavorRequest(name=name))
    with pytest.raises(grpc.RpcError) as info:
        client.flavors.GetFlavor(pb.GetFlavorRequest(name=name))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_project_with_instances_cannot_be_deleted(quota_cloud):
    cloud, admin = quota_cloud
    project, client = new_tenant(cloud, admin)
    created = client.instances.CreateInstance(pb.CreateInstanceRequest(name="keep", flavor="tiny"))
    with pytest.raises(grpc.RpcError) as info:
        admin.identity.DeleteProject(ipb.DeleteProjectRequest(name=project))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    delete_all(client, [created])
    admin.identity.DeleteProject(ipb.DeleteProjectRequest(name=project))
    # Its users' tokens for it are gone with it.
    with pytest.raises(grpc.RpcError) as info:
        client.instances.ListInstances(pb.ListInstancesRequest())
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_any_named_resource_gets_a_limit_by_api_and_cli(quota_cloud, tmp_path):
    """The next resources (networks, floating_ips, ...) need no change to quotas:
    a limit on any name is set, shown and kept beside the instance ones."""
    cloud, admin = quota_cloud
    project, client = new_tenant(cloud, admin, instances=4)
    quota = admin.quotas.SetQuota(ipb.SetQuotaRequest(project=project, resources={"networks": 3}))
    assert dict(quota.limits.resources) == {"networks": 3} and quota.limits.instances == 4
    seen = client.quotas.GetQuota(ipb.GetQuotaRequest())
    assert dict(seen.limits.resources) == {"networks": 3} and dict(seen.usage.resources) == {}
    for bad in ({"Networks!": 1}, {"networks": -2}):
        with pytest.raises(grpc.RpcError) as info:
            admin.quotas.SetQuota(ipb.SetQuotaRequest(project=project, resources=bad))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    env = {**os.environ, "CLOUD_ENDPOINT": cloud.endpoint, "CLOUD_CONFIG": str(tmp_path / "q.toml"),
           "CLOUD_USERNAME": "admin", "CLOUD_PASSWORD": cloud.password("admin"), "CLOUD_PROJECT": "",
           "COLUMNS": "200"}

    def cloudctl(*args):
        return subprocess.run([sys.executable, "-m", "cloudclient.cli", *args], env=env,
                              capture_output=True, text=True, timeout=60)

    done = cloudctl("quota", "set", project, "--resource", "floating_ips=2", "--resource", "networks=-1",
                    "--vcpus", "6", "-o", "json")
    assert done.returncode == 0, done.stderr
    limits = json.loads(done.stdout)["limits"]
    assert limits["vcpus"] == 6 and limits["instances"] == 4
    assert {k: int(v) for k, v in limits["resources"].items()} == {"floating_ips": 2, "networks": -1}
    shown = cloudctl("quota", "show", project)
    assert shown.returncode == 0, shown.stderr
    cells = [[c.strip() for c in line.split("\u2502") if c.strip()] for line in shown.stdout.splitlines()]
    rows = {c[0]: c[1:] for c in cells if len(c) == 3}
    assert rows["floating_ips"][:2] == ["2", "0"] and rows["networks"][:2] == ["unlimited", "0"]
    bad = cloudctl("quota", "set", project, "--resource", "networks")
    assert bad.returncode != 0 and "NAME=LIMIT" in bad.stderr
