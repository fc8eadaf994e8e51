"""Tenant networks' control plane on a real cloud (etcd, Redis, Celery, API, an
agent with the fake driver), tenant_networks on: networks and their refusals,
IPAM exact under 100 parallel creates, the default network, NICs shown at once,
addresses given back exactly once, floating IPs, quotas, other projects'
things NOT_FOUND, and what GetHostNetworks tells a host."""

from __future__ import annotations

import re
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from cloudapi.v1 import agent_pb2, agent_pb2_grpc
from cloudapi.v1 import compute_pb2 as pb
from cloudapi.v1 import identity_pb2 as ipb
from cloudapi.v1 import network_pb2 as npb
from cloudapi.v1 import security_group_pb2 as spb

from control import pki
from control.store import keys
from tests.conftest import ApiClient, login, start_cloud, stop_cloud

# A real /24 stands for the internet: nothing here is routed anywhere.
EXTERNAL_CIDR = "100.64.0.0/24"


@pytest.fixture(scope="module")
def net_cloud():
    cloud, store = start_cloud("networks", agent_settings={"driver": "fake"},
                               control_settings={"tenant_networks": True,
                                                 "external_cidr": EXTERNAL_CIDR})
    yield cloud, store, login(cloud, "admin")
    stop_cloud(cloud, "networks")


def tenant(net_cloud, **limits) -> tuple[str, ApiClient]:
    """A fresh project (unlimited instance quotas unless told) and its member."""
    cloud, _, admin = net_cloud
    project = f"n-{uuid.uuid4().hex[:8]}"
    admin.identity.CreateProject(ipb.CreateProjectRequest(name=project))
    admin.identity.CreateUser(ipb.CreateUserRequest(name=f"{project}-user", password="pw-" + project,
                                                    project=project, role="member"))
    resources = {k: v for k, v in limits.items() if k in ("networks", "floating_ips")}
    flat = {k: v for k, v in limits.items() if k not in resources}
    admin.quotas.SetQuota(ipb.SetQuotaRequest(
        project=project, resources=resources,
        **{"instances": -1, "vcpus": -1, "memory_mb": -1, "disk_gb": -1, **flat}))
    client = ApiClient(cloud.endpoint)
    client.login(f"{project}-user", "pw-" + project, project)
    return project, client


def code(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), caught.value.details()


def written(store, project: str) -> dict:
    """Everything a network or floating IP writes: the project's keys and the
    cloud-wide VNIs, external addresses and network index."""
    found = {}
    for prefix in (keys.project_data(project), keys.PREFIX + "/network-vnis/",
                   keys.external_ips(), keys.network_indexes(), keys.quota_usage(project)):
        found.update({r.key: r.value for r in store.list(prefix)})
    return found


def usage(client, name: str) -> int:
    return client.quotas.GetQuota(ipb.GetQuotaRequest()).usage.resources.get(name, 0)


def instance(client, name: str, *networks: str) -> pb.Instance:
    return client.instances.CreateInstance(pb.CreateInstanceRequest(
        name=name, flavor="tiny", networks=list(networks)), timeout=60)


def delete_all(client) -> None:
    instances = client.instances.ListInstances(pb.ListInstancesRequest()).instances
    for i in instances:
        client.instances.DeleteInstance(pb.DeleteInstanceRequest(id_or_name=i.id))
    for i in instances:
        client.wait_gone(i.id)  # fake driver: at most 0.11 s each here (61 deletes), bound 15 s


# ---------------------------------------------------------------- networks


def test_create_list_show_delete(net_cloud):
    _, client = tenant(net_cloud)
    made = client.networks.CreateNetwork(npb.CreateNetworkRequest(name="backend", cidr="10.20.0.0/24"))
    assert (made.name, made.cidr, made.gateway_ip, made.mtu) == ("backend", "10.20.0.0/24", "10.20.0.1", 1450)
    assert (made.ports, made.free_addresses) == (0, 253)
    assert client.networks.GetNetwork(npb.GetNetworkRequest(id_or_name="backend")).id == made.id
    assert client.networks.GetNetwork(npb.GetNetworkRequest(id_or_name=made.id)).name == "backend"
    listed = client.networks.ListNetworks(npb.ListNetworksRequest()).networks
    assert [n.name for n in listed] == ["backend"]
    assert usage(client, "networks") == 1
    client.networks.DeleteNetwork(npb.DeleteNetworkRequest(id_or_name="backend"))
    assert code(lambda: client.networks.GetNetwork(npb.GetNetworkRequest(id_or_name=made.id)))[0] \
        == grpc.StatusCode.NOT_FOUND
    assert usage(client, "networks") == 0
    # An empty cidr: 10.0.0.0/24.
    assert client.networks.CreateNetwork(npb.CreateNetworkRequest(name="plain")).cidr == "10.0.0.0/24"


@pytest.mark.parametrize("name, cidr, status, message", [
    ("bad", "10.0.0.0/33", "INVALID_ARGUMENT", "not an IPv4 network"),
    ("bad", "not-a-cidr", "INVALID_ARGUMENT", "not an IPv4 network"),
    ("bad", "8.8.8.0/24", "INVALID_ARGUMENT", "not a private range"),
    ("bad", "10.0.0.0/30", "INVALID_ARGUMENT", "prefix must be /16 to /29"),
    ("bad", "10.0.0.0/8", "INVALID_ARGUMENT", "prefix must be /16 to /29"),
    ("bad", "10.0.0.7/24", "INVALID_ARGUMENT", "host bits are set; the network is 10.0.0.0/24"),
    ("bad name", "10.0.0.0/24", "INVALID_ARGUMENT", "invalid network name"),
    ("taken", "10.9.0.0/24", "ALREADY_EXISTS", "already exists"),
])
def test_bad_input_is_refused_and_writes_nothing(net_cloud, name, cidr, status, message):
    _, store, _ = net_cloud
    project, client = tenant(net_cloud)
    client.networks.CreateNetwork(npb.CreateNetworkRequest(name="taken", cidr="10.0.0.0/24"))
    before = written(store, project)
    got, details = code(lambda: client.networks.CreateNetwork(npb.CreateNetworkRequest(name=name,
                                                                                       cidr=cidr)))
    assert got.name == status and message in details
    assert written(store, project) == before


def test_network_quota_and_the_default_network_not_counted(net_cloud):
    _, store, _ = net_cloud
    project, client = tenant(net_cloud, networks=1)
    client.networks.CreateNetwork(npb.CreateNetworkRequest(name="one", cidr="10.0.0.0/24"))
    before = written(store, project)
    got, details = code(lambda: client.networks.CreateNetwork(npb.CreateNetworkRequest(name="two")))
    assert got == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"quota exceeded for networks in project {project}: limit 1, in use 1" in details
    assert written(store, project) == before
    # At its network quota, the project still boots on its default network.
    vm = instance(client, "vm")
    assert [n.network_name for n in vm.nics] == ["default"]
    assert usage(client, "networks") == 1
    delete_all(client)


def test_two_projects_use_the_same_cidr_and_cannot_see_each_other(net_cloud):
    _, a = tenant(net_cloud)
    _, b = tenant(net_cloud)
    net_a = a.networks.CreateNetwork(npb.CreateNetworkRequest(name="same", cidr="192.168.1.0/24"))
    net_b = b.networks.CreateNetwork(npb.CreateNetworkRequest(name="same", cidr="192.168.1.0/24"))
    assert net_a.id != net_b.id
    for call in (lambda: b.networks.GetNetwork(npb.GetNetworkRequest(id_or_name=net_a.id)),
                 lambda: b.networks.DeleteNetwork(npb.DeleteNetworkRequest(id_or_name=net_a.id)),
                 lambda: instance(b, "x", net_a.id)):
        assert code(call)[0] == grpc.StatusCode.NOT_FOUND
    va, vb = instance(a, "va", "same"), instance(b, "vb", "same")
    assert va.nics[0].fixed_ip == vb.nics[0].fixed_ip == "192.168.1.2"  # each its own network
    delete_all(a)
    delete_all(b)


# ---------------------------------------------------------------- NICs


def test_nics_are_on_the_instance_at_once_and_the_default_network_is_made_on_first_use(net_cloud):
    _, client = tenant(net_cloud)
    client.networks.CreateNetwork(npb.CreateNetworkRequest(name="backend", cidr="10.30.0.0/24"))
    db = instance(client, "db1", "backend")
    (nic,) = db.nics
    assert (nic.network_name, nic.fixed_ip) == ("backend", "10.30.0.2")
    assert re.fullmatch(r"fa:16:3e(:[0-9a-f]{2}){3}", nic.mac)
    shown = client.instances.GetInstance(pb.GetInstanceRequest(id_or_name="db1"))
    assert list(shown.nics) == list(db.nics)  # no wait: recorded by the create itself
    web = instance(client, "web1")
    assert [(n.network_name, n.fixed_ip) for n in web.nics] == [("default", "10.0.0.2")]
    default = client.networks.GetNetwork(npb.GetNetworkRequest(id_or_name="default"))
    assert (default.cidr, default.ports) == ("10.0.0.0/24", 1)
    both = instance(client, "both", "backend", "default")
    assert [n.fixed_ip for n in both.nics] == ["10.30.0.3", "10.0.0.3"]
    for vm in (db, web, both):
        client.wait_status(vm.id, {"ACTIVE"})  # the fake agent took the NICs (0.43 s at most here)
    delete_all(client)


def test_a_network_with_instances_is_not_deleted_and_addresses_return_exactly_once(net_cloud):
    _, store, _ = net_cloud
    project, client = tenant(net_cloud)
    net = client.networks.CreateNetwork(npb.CreateNetworkRequest(name="busy", cidr="10.40.0.0/29"))
    made = [instance(client, f"vm{i}", "busy") for i in range(3)]
    got, details = code(lambda: client.networks.DeleteNetwork(npb.DeleteNetworkRequest(id_or_name="busy")))
    assert got == grpc.StatusCode.FAILED_PRECONDITION
    assert "vm0" in details and "vm1" in details and "vm2" in details
    assert client.networks.GetNetwork(npb.GetNetworkRequest(id_or_name="busy")).free_addresses == 2
    # Each delete sent twice (the second finds it deleting, or gone): the addresses go back once.
    for vm in made:
        client.instances.DeleteInstance(pb.DeleteInstanceRequest(id_or_name=vm.id))
        try:
            client.instances.DeleteInstance(pb.DeleteInstanceRequest(id_or_name=vm.id))
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND
    for vm in made:
        client.wait_gone(vm.id)
    assert store.list(keys.fixed_ips(project, net.id)) == []
    shown = client.networks.GetNetwork(npb.GetNetworkRequest(id_or_name="busy"))
    assert (shown.ports, shown.free_addresses) == (0, 5)
    again = [instance(client, f"again{i}", "busy").nics[0].fixed_ip for i in range(5)]
    assert again == [f"10.40.0.{i}" for i in range(2, 7)]
    delete_all(client)
    client.networks.DeleteNetwork(npb.DeleteNetworkRequest(id_or_name="busy"))


def test_a_full_subnet_refuses_the_create_and_records_nothing(net_cloud):
    _, store, _ = net_cloud
    project, client = tenant(net_cloud)
    client.networks.CreateNetwork(npb.CreateNetworkRequest(name="tiny", cidr="10.50.0.0/29"))
    for vm in [instance(client, f"vm{i}", "tiny") for i in range(5)]:
        client.wait_status(vm.id, {"ACTIVE"})  # builds done, nothing else changes (fake: < 0.1 s)
    before = written(store, project)
    got, details = code(lambda: instance(client, "one-too-many", "tiny"))
    assert (got, details) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "network tiny has no free address")
    assert written(store, project) == before
    delete_all(client)


def test_a_hundred_parallel_creates_on_a_26(net_cloud):
    """Every address distinct, the rest refused with the full-subnet error, usage
    exact: 61 addresses (a /26 less network, broadcast and gateway)."""
    cloud, store, _ = net_cloud
    project, client = tenant(net_cloud)
    net = client.networks.CreateNetwork(npb.CreateNetworkRequest(name="burst", cidr="10.60.0.0/26"))

    def create(i):
        try:
            return instance(client, f"burst-{i}", "burst"), "OK", ""
        except grpc.RpcError as exc:
            return None, exc.code().name, exc.details()

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=100) as pool:
        results = list(pool.map(create, range(100)))
    took = time.monotonic() - started
    made = [r[0] for r in results if r[0] is not None]
    assert Counter(r[1] for r in results) == Counter({"OK": 61, "RESOURCE_EXHAUSTED": 39})
    assert {r[2] for r in results if r[2]} == {"network burst has no free address"}
    addresses = [i.nics[0].fixed_ip for i in made]
    macs = [i.nics[0].mac for i in made]
    assert len(set(addresses)) == 61 == len(set(macs))
    assert sorted(addresses) == sorted(f"10.60.0.{i}" for i in range(2, 63))
    held = {r.key.rsplit("/", 1)[1]: r.value["instance_id"]
            for r in store.list(keys.fixed_ips(project, net.id))}
    assert held == {i.nics[0].fixed_ip: i.id for i in made}
    shown = client.networks.GetNetwork(npb.GetNetworkRequest(id_or_name="burst"))
    assert (shown.ports, shown.free_addresses) == (61, 0)
    log = (cloud.procs.logs / "api.log").read_text()
    conflicts = [int(c) for i in made for c in re.findall(
        rf"instance {i.id} \(burst-\d+\) requested .*, (\d+) conflicts", log)]
    print(f"\n100 parallel creates on a /26: {took:.1f} s; 61 made with {sum(conflicts)} conflicts "
          f"(most for one create: {max(conflicts)})")
    delete_all(client)
    assert store.list(keys.fixed_ips(project, net.id)) == []
    shown = client.networks.GetNetwork(npb.GetNetworkRequest(id_or_name="burst"))
    assert (shown.ports, shown.free_addresses) == (0, 61)


def test_networks_refused_on_a_cloud_without_tenant_networks(fake_cloud_and_store):
    cloud, _ = fake_cloud_and_store
    client = login(cloud)
    got, details = code(lambda: instance(client, f"nonet-{uuid.uuid4().hex[:6]}", "backend"))
    assert got == grpc.StatusCode.INVALID_ARGUMENT and "no tenant networks" in details


# ---------------------------------------------------------------- floating IPs


def test_floating_ips_quota_replay_attach_move_detach_delete(net_cloud):
    _, store, _ = net_cloud
    project, client = tenant(net_cloud, floating_ips=2)
    fip = client.networks.CreateFloatingIp(npb.CreateFloatingIpRequest(request_id="fip-1"))
    assert fip.address.startswith("100.64.0.") and fip.project == project and not fip.instance_id
    again = client.networks.CreateFloatingIp(npb.CreateFloatingIpRequest(request_id="fip-1"))
    assert again.address == fip.address  # replayed, not a second one
    second = client.networks.CreateFloatingIp(npb.CreateFloatingIpRequest())
    assert usage(client, "floating_ips") == 2
    taken_before = len(store.list(keys.external_ips()))
    got, details = code(lambda: client.networks.CreateFloatingIp(npb.CreateFloatingIpRequest()))
    assert got == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"quota exceeded for floating_ips in project {project}: limit 2, in use 2" in details
    assert len(store.list(keys.external_ips())) == taken_before

    web, db = instance(client, "web"), instance(client, "db")
    attached = client.networks.AttachFloatingIp(npb.AttachFloatingIpRequest(address=fip.address,
                                                                            instance="web"))
    assert (attached.instance_id, attached.fixed_ip) == (web.id, web.nics[0].fixed_ip)
    shown = client.instances.GetInstance(pb.GetInstanceRequest(id_or_name="web"))
    assert shown.nics[0].floating_ip == fip.address
    # One floating IP per NIC.
    got, details = code(lambda: client.networks.AttachFloatingIp(npb.AttachFloatingIpRequest(
        address=second.address, instance="web")))
    assert got == grpc.StatusCode.FAILED_PRECONDITION and fip.address in details
    # Moved to another instance.
    moved = client.networks.AttachFloatingIp(npb.AttachFloatingIpRequest(address=fip.address,
                                                                         instance=db.id))
    assert moved.instance_id == db.id
    assert client.instances.GetInstance(pb.GetInstanceRequest(id_or_name="web")).nics[0].floating_ip == ""
    detached = client.networks.DetachFloatingIp(npb.FloatingIpRequest(address=fip.address))
    assert detached.instance_id == "" and detached.fixed_ip == ""
    # An instance's delete detaches it; the project keeps it.
    client.networks.AttachFloatingIp(npb.AttachFloatingIpRequest(address=fip.address, instance="web"))
    client.instances.DeleteInstance(pb.DeleteInstanceRequest(id_or_name="web"))
    client.wait_gone(web.id)
    listed = {f.address: f for f in
              client.networks.ListFloatingIps(npb.ListFloatingIpsRequest()).floating_ips}
    assert set(listed) == {fip.address, second.address} and listed[fip.address].instance_id == ""
    # Delete detaches first, and gives the address and the quota back.
    client.networks.AttachFloatingIp(npb.AttachFloatingIpRequest(address=second.address, instance="db"))
    client.networks.DeleteFloatingIp(npb.FloatingIpRequest(address=second.address))
    assert store.get(keys.external_ip(second.address)) is None
    assert client.instances.GetInstance(pb.GetInstanceRequest(id_or_name="db")).nics[0].floating_ip == ""
    assert usage(client, "floating_ips") == 1
    delete_all(client)


def test_another_projects_floating_ip_is_not_found(net_cloud):
    _, a = tenant(net_cloud)
    _, b = tenant(net_cloud)
    fip = a.networks.CreateFloatingIp(npb.CreateFloatingIpRequest())
    vm = instance(b, "vm")
    for call in (lambda: b.networks.AttachFloatingIp(npb.AttachFloatingIpRequest(address=fip.address,
                                                                                 instance=vm.id)),
                 lambda: b.networks.DetachFloatingIp(npb.FloatingIpRequest(address=fip.address)),
                 lambda: b.networks.DeleteFloatingIp(npb.FloatingIpRequest(address=fip.address)),
                 # and b's floating IP cannot go on a's instance
                 lambda: a.networks.AttachFloatingIp(npb.AttachFloatingIpRequest(
                     address=fip.address, instance=vm.id))):
        assert code(call)[0] == grpc.StatusCode.NOT_FOUND
    a.networks.DeleteFloatingIp(npb.FloatingIpRequest(address=fip.address))
    delete_all(b)


def test_readers_read_and_members_manage(net_cloud):
    cloud, _, admin = net_cloud
    project, member = tenant(net_cloud)
    admin.identity.CreateUser(ipb.CreateUserRequest(name=f"{project}-reader", password="pw-r",
                                                    project=project, role="reader"))
    reader = ApiClient(cloud.endpoint)
    reader.login(f"{project}-reader", "pw-r", project)
    member.networks.CreateNetwork(npb.CreateNetworkRequest(name="n"))
    assert [n.name for n in reader.networks.ListNetworks(npb.ListNetworksRequest()).networks] == ["n"]
    for call in (lambda: reader.networks.CreateNetwork(npb.CreateNetworkRequest(name="m")),
                 lambda: reader.networks.DeleteNetwork(npb.DeleteNetworkRequest(id_or_name="n")),
                 lambda: reader.networks.CreateFloatingIp(npb.CreateFloatingIpRequest())):
        assert code(call)[0] == grpc.StatusCode.PERMISSION_DENIED


# ---------------------------------------------------------------- the hosts' view


def host_service(cloud) -> agent_pb2_grpc.HostServiceStub:
    """HostService on the agent listener, as the cloud's own host (its certificate)."""
    paths = pki.issue_host(cloud.pki_dir, cloud.host_name)
    creds = grpc.ssl_channel_credentials(pki.ca_paths(cloud.pki_dir).cert.read_bytes(),
                                         paths.key.read_bytes(), paths.cert.read_bytes())
    return agent_pb2_grpc.HostServiceStub(grpc.secure_channel(
        cloud.agent_endpoint, creds, options=[("grpc.ssl_target_name_override", pki.CONTROL_NAME)]))


def test_get_host_networks_tells_the_host_its_networks_ports_and_routers(net_cloud):
    cloud, _, _ = net_cloud
    _, client = tenant(net_cloud)
    net = client.networks.CreateNetwork(npb.CreateNetworkRequest(name="seen", cidr="172.16.5.0/24"))
    vm = instance(client, "vm", "seen")
    client.wait_status(vm.id, {"ACTIVE"})  # placed on the host (fake driver: 0.11 s here)
    fip = client.networks.CreateFloatingIp(npb.CreateFloatingIpRequest())
    client.networks.AttachFloatingIp(npb.AttachFloatingIpRequest(address=fip.address, instance="vm"))
    view = host_service(cloud).GetHostNetworks(agent_pb2.GetHostNetworksRequest(), timeout=10)
    assert view.revision > 0
    assert (view.external.cidr, view.external.gateway_ip) == (EXTERNAL_CIDR, "100.64.0.1")
    (seen,) = [n for n in view.networks if n.id == net.id]
    assert (seen.cidr, seen.gateway_ip, seen.mtu, seen.router_host) == \
        ("172.16.5.0/24", "172.16.5.1", 1450, cloud.host_name)  # the only host
    assert seen.snat_ip.startswith("100.64.0.") and seen.snat_ip != fip.address
    (port,) = seen.ports
    assert (port.instance_id, port.mac, port.fixed_ip, port.floating_ip) == \
        (vm.id, vm.nics[0].mac, "172.16.5.2", fip.address)
    assert list(seen.vteps) == [port.vtep] == ["127.0.0.1"]
    # Another host's certificate that is not registered learns nothing.
    rogue = pki.issue_host(cloud.pki_dir, f"rogue-{uuid.uuid4().hex[:6]}")
    creds = grpc.ssl_channel_credentials(pki.ca_paths(cloud.pki_dir).cert.read_bytes(),
                                         rogue.key.read_bytes(), rogue.cert.read_bytes())
    stub = agent_pb2_grpc.HostServiceStub(grpc.secure_channel(
        cloud.agent_endpoint, creds, options=[("grpc.ssl_target_name_override", pki.CONTROL_NAME)]))
    assert code(lambda: stub.GetHostNetworks(agent_pb2.GetHostNetworksRequest(), timeout=10))[0] == \
        grpc.StatusCode.PERMISSION_DENIED
    client.networks.DeleteFloatingIp(npb.FloatingIpRequest(address=fip.address))
    delete_all(client)



def test_a_scale_out_gives_each_instance_its_own_nic_and_the_default_group(net_cloud):
    """A scale-out's instances are in the project's default security group (in
    no group, a host's firewall would pass none of their traffic)."""
    _, client = tenant(net_cloud)
    made = client.instances.CreateInstances(pb.CreateInstancesRequest(
        name="web", flavor="tiny", count=13), timeout=60).instances
    addresses = [i.nics[0].fixed_ip for i in made]
    assert sorted(addresses) == sorted(f"10.0.0.{n}" for n in range(2, 15))
    assert {i.nics[0].network_name for i in made} == {"default"}
    assert {tuple(g.name for g in i.security_groups) for i in made} == {("default",)}
    shown = client.instances.GetInstance(pb.GetInstanceRequest(id_or_name=made[0].id))
    assert [g.name for g in shown.security_groups] == ["default"]
    got, details = code(lambda: client.instances.CreateInstances(pb.CreateInstancesRequest(
        name="big", flavor="tiny", count=14), timeout=60))
    assert got == grpc.StatusCode.INVALID_ARGUMENT and "1 to 13 with tenant networks" in details
    delete_all(client)


def test_a_scale_out_joins_the_security_groups_asked_for(net_cloud):
    """Each group is a write per instance in the one transaction: two groups
    allow 12 instances, not 13; a group not of the project writes nothing."""
    _, store, _ = net_cloud
    project, client = tenant(net_cloud)
    web = client.security_groups.CreateSecurityGroup(spb.CreateSecurityGroupRequest(name="web"))
    got, details = code(lambda: client.instances.CreateInstances(pb.CreateInstancesRequest(
        name="web", flavor="tiny", count=2, security_groups=["web", "nope"]), timeout=60))
    assert got == grpc.StatusCode.NOT_FOUND and "nope" in details
    assert list(client.instances.ListInstances(pb.ListInstancesRequest()).instances) == []
    got, details = code(lambda: client.instances.CreateInstances(pb.CreateInstancesRequest(
        name="web", flavor="tiny", count=13, security_groups=["web", "default"]), timeout=60))
    assert got == grpc.StatusCode.INVALID_ARGUMENT and "1 to 12 with tenant networks" in details
    made = client.instances.CreateInstances(pb.CreateInstancesRequest(
        name="web", flavor="tiny", count=12, security_groups=["web", "default"]), timeout=60).instances
    assert {tuple(g.name for g in i.security_groups) for i in made} == {("web", "default")}
    members = store.list(keys.security_group_members(project, web.id))
    assert sorted(r.key.rsplit("/", 1)[1] for r in members) == sorted(i.id for i in made)
    delete_all(client)
    client.security_groups.DeleteSecurityGroup(spb.DeleteSecurityGroupRequest(id_or_name="web"))


def test_a_project_with_networks_or_floating_ips_is_not_deleted(net_cloud):
    _, store, admin = net_cloud
    project, client = tenant(net_cloud)
    client.networks.CreateNetwork(npb.CreateNetworkRequest(name="kept"))
    fip = client.networks.CreateFloatingIp(npb.CreateFloatingIpRequest())
    got, details = code(lambda: admin.identity.DeleteProject(ipb.DeleteProjectRequest(name=project)))
    assert got == grpc.StatusCode.FAILED_PRECONDITION
    assert "networks kept" in details and f"floating IPs {fip.address}" in details
    client.networks.DeleteNetwork(npb.DeleteNetworkRequest(id_or_name="kept"))
    client.networks.DeleteFloatingIp(npb.FloatingIpRequest(address=fip.address))
    admin.identity.DeleteProject(ipb.DeleteProjectRequest(name=project))
    assert [r for r in store.list(keys.external_ips()) if r.value.get("project") == project] == []


def test_concurrent_first_creates_make_one_default_network(net_cloud):
    _, client = tenant(net_cloud)
    with ThreadPoolExecutor(max_workers=10) as pool:
        made = list(pool.map(lambda i: instance(client, f"first-{i}"), range(10)))
    assert len({i.nics[0].network_id for i in made}) == 1
    assert len({i.nics[0].fixed_ip for i in made}) == 10
    listed = client.networks.ListNetworks(npb.ListNetworksRequest()).networks
    assert [(n.name, n.ports) for n in listed] == [("default", 10)]
    assert usage(client, "networks") == 0
    delete_all(client)
