"""Scheduling through the whole control plane, on fake-driver hosts: host
maintenance, zones and traits, dry runs, capacity, rescheduling, and 1000 hosts."""

import os
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from cloudapi.v1 import compute_pb2 as pb

from control.models import Host, Resources
from control.placement.allocations import Placement
from control.store import keys
from control.store.etcd import Txn
from tests.conftest import login, start_cloud, stop_cloud, until
from tests.control.test_quota import delete_all, new_tenant


@pytest.fixture(scope="module")
def fake_cloud():
    cloud, store = start_cloud("sched", agent_settings={"driver": "fake"})
    yield cloud, store, login(cloud, "admin")
    stop_cloud(cloud, "sched")


@pytest.fixture
def tenant(fake_cloud):
    cloud, _, admin = fake_cloud
    return new_tenant(cloud, admin, instances=-1, vcpus=-1, memory_mb=-1, disk_gb=-1)[1]


def wait_all(client, instances, statuses=("ACTIVE", "ERROR")):
    return [client.wait_status(i.id, set(statuses)) for i in instances]


def test_host_list_shows_capacity_and_usage(fake_cloud, tenant):
    cloud, _, admin = fake_cloud
    created = tenant.instances.CreateInstance(pb.CreateInstanceRequest(name="u1", flavor="small"))
    assert tenant.wait_status(created.id, {"ACTIVE", "ERROR"}).status == "ACTIVE"
    host = admin.hosts.GetHost(pb.GetHostRequest(name=cloud.host_name))
    assert host.up and host.enabled and host.instances >= 1
    memory = {i.resource_class: i for i in host.inventory}["MEMORY_MB"]
    assert memory.total == 16384 and memory.reserved == 512 and memory.used >= 512
    assert memory.capacity == int((16384 - 512) * memory.allocation_ratio)
    assert cloud.host_name in [h.name for h in admin.hosts.ListHosts(pb.ListHostsRequest()).hosts]
    delete_all(tenant, [created])


def test_disabled_host_gets_nothing_and_says_so(fake_cloud, tenant):
    cloud, _, admin = fake_cloud
    admin.hosts.UpdateHost(pb.UpdateHostRequest(name=cloud.host_name, enabled=False,
                                                disabled_reason="kernel upgrade"))
    try:
        request = pb.CreateInstanceRequest(name="m1", flavor="tiny")
        preview = tenant.instances.PreviewPlacement(request)
        assert preview.host == "" and "1 disabled" in preview.summary
        created = tenant.instances.CreateInstance(request)
        failed = tenant.wait_status(created.id, {"ACTIVE", "ERROR"})
        assert failed.status == "ERROR"
        assert failed.fault.message.startswith("no host for flavor tiny: ")
        assert "1 disabled" in failed.fault.message
        shown = admin.hosts.GetHost(pb.GetHostRequest(name=cloud.host_name))
        assert not shown.enabled and shown.disabled_reason == "kernel upgrade"
        delete_all(tenant, [created])
    finally:
        admin.hosts.UpdateHost(pb.UpdateHostRequest(name=cloud.host_name, enabled=True))
    assert tenant.instances.PreviewPlacement(request).host == cloud.host_name


def test_flavor_traits_and_zone_and_capacity(fake_cloud, tenant):
    cloud, _, admin = fake_cloud
    suffix = uuid.uuid4().hex[:6]
    ssd = f"ssd-{suffix}"
    admin.flavors.CreateFlavor(pb.CreateFlavorRequest(flavor=pb.Flavor(
        name=ssd, vcpus=1, memory_mb=256, disk_gb=1, public=True, required_traits=["ssd"])))
    zoned = f"zoned-{suffix}"
    admin.flavors.CreateFlavor(pb.CreateFlavorRequest(flavor=pb.Flavor(
        name=zoned, vcpus=1, memory_mb=256, disk_gb=1, public=True, zone="b")))
    preview = tenant.instances.PreviewPlacement(pb.CreateInstanceRequest(name="t", flavor=ssd))
    assert preview.host == "" and "lacked traits" in preview.summary
    assert admin.hosts.GetCapacity(pb.GetCapacityRequest(flavor=ssd)).total == 0
    admin.hosts.UpdateHost(pb.UpdateHostRequest(name=cloud.host_name, add_traits=["ssd"], zone="b"))
    try:
        assert tenant.instances.PreviewPlacement(
            pb.CreateInstanceRequest(name="t", flavor=ssd)).host == cloud.host_name
        assert tenant.instances.PreviewPlacement(
            pb.CreateInstanceRequest(name="t", flavor=zoned)).host == cloud.host_name
        capacity = admin.hosts.GetCapacity(pb.GetCapacityRequest(flavor=ssd))
        fits = {h.host: h.fits for h in capacity.hosts}[cloud.host_name]
        assert 0 < fits <= (16384 - 512) // 256 and capacity.total >= fits
    finally:
        admin.hosts.UpdateHost(pb.UpdateHostRequest(name=cloud.host_name, remove_traits=["ssd"],
                                                    zone="default"))
    preview = tenant.instances.PreviewPlacement(pb.CreateInstanceRequest(name="t", flavor=zoned))
    assert preview.host == "" and "not in zone b" in preview.summary
    for name in (ssd, zoned):
        admin.flavors.DeleteFlavor(pb.DeleteFlavorRequest(name=name))


def test_inventory_override(fake_cloud):
    cloud, _, admin = fake_cloud
    before = {i.resource_class: i for i in admin.hosts.GetHost(
        pb.GetHostRequest(name=cloud.host_name)).inventory}["VCPU"]
    try:
        after = {i.resource_class: i for i in admin.hosts.SetInventory(pb.SetInventoryRequest(
            name=cloud.host_name, resource_class="VCPU", allocation_ratio=16.0)).inventory}["VCPU"]
        assert after.allocation_ratio == 16.0 and after.capacity == before.total * 16
        with pytest.raises(grpc.RpcError) as info:
            admin.hosts.SetInventory(pb.SetInventoryRequest(
                name=cloud.host_name, resource_class="VCPU", allocation_ratio=0))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        admin.hosts.SetInventory(pb.SetInventoryRequest(
            name=cloud.host_name, resource_class="VCPU", allocation_ratio=before.allocation_ratio))


def test_member_cannot_administer_hosts(fake_cloud, tenant):
    cloud, _, _ = fake_cloud
    with pytest.raises(grpc.RpcError) as info:
        tenant.hosts.ListHosts(pb.ListHostsRequest())
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_cli_dry_run_capacity_and_hosts(fake_cloud, tmp_path):
    cloud, _, _ = fake_cloud
    env = {**os.environ, "CLOUD_ENDPOINT": cloud.endpoint, "CLOUD_CONFIG": str(tmp_path / "c.toml"),
           "CLOUD_USERNAME": "admin", "CLOUD_PASSWORD": cloud.password("admin"), "COLUMNS": "200"}

    def run(*args):
        return subprocess.run([sys.executable, "-m", "cloudclient.cli", *args], env=env,
                              capture_output=True, text=True, timeout=60)

    dry = run("instance", "create", "--flavor", "small", "--name", "dry1", "--dry-run")
    assert dry.returncode == 0 and f"would go to: {cloud.host_name}" in dry.stdout
    assert "dry1" not in run("instance", "list").stdout
    huge = run("instance", "create", "--flavor", "large", "--name", "dry2", "--dry-run")
    assert "hosts:" in huge.stdout
    assert "more of flavor small fit" in run("capacity", "--flavor", "small").stdout
    assert cloud.host_name in run("host", "list").stdout
    disabled = run("host", "disable", cloud.host_name, "--reason", "test")
    assert disabled.returncode == 0, disabled.stderr
    assert "disabled" in run("host", "list").stdout
    assert run("host", "enable", cloud.host_name).returncode == 0
    shown = run("host", "show", cloud.host_name)
    assert "MEMORY_MB" in shown.stdout and "allocation_ratio" in shown.stdout


def test_failing_host_is_skipped_and_the_instance_lands_elsewhere(fake_cloud, tenant):
    cloud, store, admin = fake_cloud
    bad = f"bad-{uuid.uuid4().hex[:6]}"
    cloud.add_agent(bad, driver="fake", fake_fail_spawn=True)
    until(lambda: store.get(keys.provider(bad)), 30, f"registration of {bad}")  # measured ~2 s
    # The failing host has the most free memory, so every first attempt goes there.
    good = cloud.host_name
    admin.hosts.SetInventory(pb.SetInventoryRequest(name=good, resource_class="MEMORY_MB", reserved=4096))
    # The API's and the worker's host tables follow etcd by watch: once the API's
    # preview picks the failing host, the worker's table has had the same news.
    until(lambda: tenant.instances.PreviewPlacement(pb.CreateInstanceRequest(
        name="r", flavor="tiny")).host == bad, 10, "the reserved memory seen")
    try:
        created = [tenant.instances.CreateInstance(pb.CreateInstanceRequest(name=f"r{i}", flavor="tiny"))
                   for i in range(4)]
        landed = wait_all(tenant, created)
        assert [i.status for i in landed] == ["ACTIVE"] * 4
        assert {i.host for i in landed} == {good}
        rescheduled = [i for i in landed if i.attempts]
        assert rescheduled, "no instance was tried on the failing host first"
        assert all([a.host for a in i.attempts] == [bad] for i in rescheduled)
        assert all("fake driver was told to fail" in i.attempts[0].message for i in rescheduled)
        assert Placement(store, None).usage(bad) == Resources()
        delete_all(tenant, created)
    finally:
        admin.hosts.SetInventory(pb.SetInventoryRequest(name=good, resource_class="MEMORY_MB", reserved=512))
        admin.hosts.UpdateHost(pb.UpdateHostRequest(name=bad, enabled=False))
        cloud.procs.stop(f"agent-{bad}")


def test_thousand_hosts_hundreds_of_concurrent_creates(fake_cloud, tenant):
    """1000 hosts (registered as the fake agent's address), 300 creates at once:
    no host over capacity, allocations equal the live instances, deletes leave none."""
    cloud, store, admin = fake_cloud
    names = [f"scale-{uuid.uuid4().hex[:4]}-{i:04d}" for i in range(1000)]
    placement = Placement(store, None)
    agent = admin.hosts.GetHost(pb.GetHostRequest(name=cloud.host_name)).address
    for start in range(0, len(names), 60):
        txn = Txn()
        for name in names[start:start + 60]:
            # Small hosts (1 vCPU x 4.0), so that many of them fill up.
            host = Host(name=name, address=agent, last_heartbeat=time.time() + 600,
                        inventory=Resources(vcpus=1, memory_mb=512 + 512, disk_gb=20))
            txn.put(keys.host(name), host.model_dump())
        assert store.commit(txn)
    try:
        from control.config import ControlConfig
        registering = Placement(store, ControlConfig())
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda n: registering.report_inventory(n, Resources(
                vcpus=1, memory_mb=1024, disk_gb=20)), names))
        admin.hosts.UpdateHost(pb.UpdateHostRequest(name=cloud.host_name, enabled=False))

        with ThreadPoolExecutor(32) as pool:
            created = list(pool.map(lambda i: tenant.instances.CreateInstance(
                pb.CreateInstanceRequest(name=f"s{i}", flavor="tiny"), timeout=60), range(300)))
        landed = wait_all(tenant, created)
        assert [i.status for i in landed].count("ACTIVE") == 300
        providers = {p.host: p for p in placement.providers() if p.host in set(names)}
        assert all(p.usage[rc] <= p.capacity(rc) for p in providers.values() for rc in p.inventory)
        allocations = [a for a in placement.allocations() if a.host in providers]
        assert len(allocations) == 300
        assert sum(p.usage["MEMORY_MB"] for p in providers.values()) == 300 * 256
        assert {a.instance_id for a in allocations} == {i.id for i in landed}
        assert len({i.host for i in landed}) > 100  # spread across the hosts

        delete_all(tenant, created)
        assert [a for a in placement.allocations() if a.host in providers] == []
        assert all(p.usage["MEMORY_MB"] == 0 for p in placement.providers() if p.host in providers)
    finally:
        admin.hosts.UpdateHost(pb.UpdateHostRequest(name=cloud.host_name, enabled=True))
        for start in range(0, len(names), 60):
            txn = Txn()
            for name in names[start:start + 60]:
                txn.delete(keys.host(name)).delete(keys.provider(name))
            store.commit(txn)


def test_anti_affinity_group_of_four_on_three_hosts(fake_cloud, tenant, tmp_path):
    cloud, store, admin = fake_cloud
    zone = f"aa-{uuid.uuid4().hex[:6]}"
    hosts = [f"{zone}-h{i}" for i in range(3)]
    for name in hosts:
        cloud.add_agent(name, driver="fake")
    until(lambda: all(store.get(keys.provider(h)) for h in hosts), 30,
          "registration of the three hosts")  # measured ~2 s
    for name in hosts:
        admin.hosts.UpdateHost(pb.UpdateHostRequest(name=name, zone=zone))
    flavor = f"f-{zone}"
    admin.flavors.CreateFlavor(pb.CreateFlavorRequest(flavor=pb.Flavor(
        name=flavor, vcpus=1, memory_mb=256, disk_gb=1, public=True, zone=zone)))
    try:
        tenant.groups.CreateServerGroup(pb.CreateServerGroupRequest(name="web", policy="anti-affinity"))
        # All four at once: the group's record decides races for the last free host.
        with ThreadPoolExecutor(4) as pool:
            created = list(pool.map(lambda i: tenant.instances.CreateInstance(
                pb.CreateInstanceRequest(name=f"web-{i}", flavor=flavor, group="web")), range(4)))
        landed = wait_all(tenant, created)
        active = [i for i in landed if i.status == "ACTIVE"]
        failed = [i for i in landed if i.status == "ERROR"]
        assert len(active) == 3 and len(failed) == 1
        assert sorted(i.host for i in active) == sorted(hosts)
        assert "3 held a member of its anti-affinity group" in failed[0].fault.message
        group = tenant.groups.GetServerGroup(pb.GetServerGroupRequest(name="web"))
        assert sorted(group.members) == sorted(i.id for i in created)

        with pytest.raises(grpc.RpcError) as info:
            tenant.groups.DeleteServerGroup(pb.DeleteServerGroupRequest(name="web"))
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        delete_all(tenant, created)
        assert list(tenant.groups.GetServerGroup(pb.GetServerGroupRequest(name="web")).members) == []
        tenant.groups.DeleteServerGroup(pb.DeleteServerGroupRequest(name="web"))

        # Affinity: all members follow the first one's host.
        tenant.groups.CreateServerGroup(pb.CreateServerGroupRequest(name="db", policy="affinity"))
        first = tenant.instances.CreateInstance(pb.CreateInstanceRequest(name="db-0", flavor=flavor,
                                                                         group="db"))
        first = tenant.wait_status(first.id, {"ACTIVE", "ERROR"})
        rest = [tenant.instances.CreateInstance(pb.CreateInstanceRequest(
            name=f"db-{i}", flavor=flavor, group="db")) for i in (1, 2)]
        assert {i.host for i in wait_all(tenant, rest)} == {first.host}
        delete_all(tenant, [first, *rest])
    finally:
        admin.flavors.DeleteFlavor(pb.DeleteFlavorRequest(name=flavor))
        for name in hosts:
            admin.hosts.UpdateHost(pb.UpdateHostRequest(name=name, enabled=False))
            cloud.procs.stop(f"agent-{name}")


def test_unknown_group_is_not_found_and_writes_nothing(fake_cloud, tenant):
    with pytest.raises(grpc.RpcError) as info:
        tenant.instances.CreateInstance(pb.CreateInstanceRequest(name="x", flavor="tiny", group="nope"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert tenant.instances.ListInstances(pb.ListInstancesRequest()).instances == []


def test_aggregates_give_their_hosts_traits_and_a_zone(fake_cloud, tenant, tmp_path):
    cloud, _, admin = fake_cloud
    suffix = uuid.uuid4().hex[:6]
    flavor = f"nvme-{suffix}"
    admin.flavors.CreateFlavor(pb.CreateFlavorRequest(flavor=pb.Flavor(
        name=flavor, vcpus=1, memory_mb=256, disk_gb=1, public=True, required_traits=["nvme"],
        zone=f"zone-{suffix}")))
    request = pb.CreateInstanceRequest(name="a", flavor=flavor)
    assert tenant.instances.PreviewPlacement(request).host == ""
    aggregate = f"agg-{suffix}"
    env = {**os.environ, "CLOUD_ENDPOINT": cloud.endpoint, "CLOUD_CONFIG": str(tmp_path / "c.toml"),
           "CLOUD_USERNAME": "admin", "CLOUD_PASSWORD": cloud.password("admin"), "COLUMNS": "200"}

    def run(*args):
        result = subprocess.run([sys.executable, "-m", "cloudclient.cli", *args], env=env,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout

    run("aggregate", "create", aggregate, "--zone", f"zone-{suffix}", "--trait", "nvme")
    run("aggregate", "add-host", aggregate, cloud.host_name)
    try:
        # The API's table learns it through its watch.
        until(lambda: tenant.instances.PreviewPlacement(request).host, 5, "a host for the trait")
        assert tenant.instances.PreviewPlacement(request).host == cloud.host_name
        shown = admin.hosts.GetHost(pb.GetHostRequest(name=cloud.host_name))
        assert "nvme" in shown.traits and shown.zone == f"zone-{suffix}"
        assert list(shown.aggregates) == [aggregate]
        assert aggregate in run("aggregate", "list")
    finally:
        run("aggregate", "remove-host", aggregate, cloud.host_name)
        run("aggregate", "delete", aggregate)
        admin.flavors.DeleteFlavor(pb.DeleteFlavorRequest(name=flavor))
    shown = admin.hosts.GetHost(pb.GetHostRequest(name=cloud.host_name))
    assert "nvme" not in shown.traits and shown.zone == "default"
