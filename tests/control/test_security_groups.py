"""Security groups' control plane on a real cloud (etcd, Redis, Celery, API, an
agent with the fake driver), tenant networks on: the default group and its
rules, groups and rules and their refusals (nothing written), quotas, groups in
use, other projects' groups NOT_FOUND, instances' groups at create and live,
and what GetHostNetworks tells a host about them. No host enforces rules yet."""

from __future__ import annotations

import uuid

import grpc
import pytest
from cloudapi.v1 import agent_pb2
from cloudapi.v1 import compute_pb2 as pb
from cloudapi.v1 import identity_pb2 as ipb
from cloudapi.v1 import security_group_pb2 as spb

from control.store import keys
from tests.conftest import ApiClient, login, start_cloud, stop_cloud
from tests.control.test_networks import code, delete_all, host_service


@pytest.fixture(scope="module")
def sg_cloud():
    cloud, store = start_cloud("security-groups", agent_settings={"driver": "fake"},
                               control_settings={"tenant_networks": True})
    yield cloud, store, login(cloud, "admin")
    stop_cloud(cloud, "security-groups")


def tenant(sg_cloud, **limits) -> tuple[str, ApiClient]:
    """A fresh project (unlimited instance quotas) and its member."""
    cloud, _, admin = sg_cloud
    project = f"sg-{uuid.uuid4().hex[:8]}"
    admin.identity.CreateProject(ipb.CreateProjectRequest(name=project))
    admin.identity.CreateUser(ipb.CreateUserRequest(name=f"{project}-user", password="pw-" + project,
                                                    project=project, role="member"))
    admin.quotas.SetQuota(ipb.SetQuotaRequest(project=project, resources=limits, instances=-1,
                                              vcpus=-1, memory_mb=-1, disk_gb=-1))
    client = ApiClient(cloud.endpoint)
    client.login(f"{project}-user", "pw-" + project, project)
    return project, client


def written(store, project: str) -> dict:
    """Everything a group or rule writes: the project's keys and its quota usage."""
    found = {}
    for prefix in (keys.project_data(project), keys.quota_usage(project)):
        found.update({r.key: r.value for r in store.list(prefix)})
    return found


def usage(client) -> tuple[int, int]:
    used = client.quotas.GetQuota(ipb.GetQuotaRequest()).usage.resources
    return used.get("security_groups", 0), used.get("security_group_rules", 0)


def group(client, name: str) -> spb.SecurityGroup:
    return client.security_groups.CreateSecurityGroup(spb.CreateSecurityGroupRequest(name=name))


def rule(client, group_ref: str, **fields) -> spb.SecurityGroupRule:
    return client.security_groups.CreateSecurityGroupRule(spb.CreateSecurityGroupRuleRequest(
        security_group=group_ref, **{"direction": "ingress", "protocol": "tcp", **fields}))


def get(client, ref: str) -> spb.SecurityGroup:
    return client.security_groups.GetSecurityGroup(spb.GetSecurityGroupRequest(id_or_name=ref))


def shape(r) -> tuple:
    return (r.direction, r.protocol, r.port_min, r.port_max, r.remote_cidr, r.remote_group_name)


# ---------------------------------------------------------------- groups and rules


def test_the_default_group_is_made_on_first_use_with_its_rules(sg_cloud):
    _, client = tenant(sg_cloud)
    assert list(client.security_groups.ListSecurityGroups(spb.ListSecurityGroupsRequest())
                .security_groups) == []
    vm = client.instances.CreateInstance(pb.CreateInstanceRequest(name="vm", flavor="tiny"), timeout=60)
    default = get(client, "default")
    assert [(g.id, g.name) for g in vm.security_groups] == [(default.id, "default")]
    assert sorted(shape(r) for r in default.rules) == [
        ("egress", "any", 0, 0, "", ""), ("ingress", "any", 0, 0, "", "default")]
    (ingress,) = [r for r in default.rules if r.direction == "ingress"]
    assert ingress.remote_group_id == default.id and ingress.security_group_id == default.id
    assert usage(client) == (1, 2)  # the default group counts like any other
    shown = client.instances.GetInstance(pb.GetInstanceRequest(id_or_name="vm"))
    assert [g.name for g in shown.security_groups] == ["default"]
    delete_all(client)


def test_create_list_show_delete_and_rules(sg_cloud):
    _, client = tenant(sg_cloud)
    made = client.security_groups.CreateSecurityGroup(spb.CreateSecurityGroupRequest(
        name="web", description="the web tier"))
    assert (made.name, made.description) == ("web", "the web tier")
    assert [shape(r) for r in made.rules] == [("egress", "any", 0, 0, "", "")]  # no ingress
    listed = client.security_groups.ListSecurityGroups(spb.ListSecurityGroupsRequest()).security_groups
    assert [g.name for g in listed] == ["default", "web"]  # the default made first
    assert get(client, made.id).name == "web"
    http = rule(client, "web", port_min=80)
    assert shape(http) == ("ingress", "tcp", 80, 80, "", "")
    ssh = rule(client, "web", port_min=22, port_max=23, remote_cidr="100.64.0.0/24")
    peers = rule(client, "web", protocol="any", remote_group="web")
    assert (peers.remote_group_id, peers.remote_group_name) == (made.id, "web")
    assert usage(client) == (2, 2 + 1 + 3)
    assert [r.id for r in get(client, "web").rules][1:] == [http.id, ssh.id, peers.id]
    client.security_groups.DeleteSecurityGroupRule(spb.DeleteSecurityGroupRuleRequest(id=ssh.id))
    assert [r.id for r in get(client, "web").rules][1:] == [http.id, peers.id]
    assert usage(client) == (2, 5)
    client.security_groups.DeleteSecurityGroup(spb.DeleteSecurityGroupRequest(id_or_name="web"))
    assert code(lambda: get(client, made.id))[0] == grpc.StatusCode.NOT_FOUND
    assert usage(client) == (1, 2)
    # A request id repeated: the first result, one group.
    twice = [client.security_groups.CreateSecurityGroup(spb.CreateSecurityGroupRequest(
        name="again", request_id="sg-1")) for _ in range(2)]
    assert twice[0].id == twice[1].id and usage(client) == (2, 3)


BAD_RULES = [
    ({"direction": "sideways"}, "INVALID_ARGUMENT", "invalid direction"),
    ({"protocol": "sctp"}, "INVALID_ARGUMENT", "invalid protocol"),
    ({"port_min": 0, "port_max": 80}, "INVALID_ARGUMENT", "ports are 1 to 65535"),
    ({"port_min": 70000}, "INVALID_ARGUMENT", "ports are 1 to 65535"),
    ({"port_min": 90, "port_max": 80}, "INVALID_ARGUMENT", "the first port is above the last"),
    ({"protocol": "any", "port_min": 22}, "INVALID_ARGUMENT", "ports are for tcp and udp only"),
    ({"protocol": "icmp", "port_min": 8}, "INVALID_ARGUMENT", "ports are for tcp and udp only"),
    ({"remote_cidr": "10.0.0.5/24"}, "INVALID_ARGUMENT", "has host bits set"),
    ({"remote_cidr": "10.0.0.5"}, "INVALID_ARGUMENT", "an IPv4 network like"),
    ({"remote_cidr": "fd00::/8"}, "INVALID_ARGUMENT", "IPv4 only"),
    ({"remote_cidr": "not-a-cidr/8"}, "INVALID_ARGUMENT", "invalid remote_cidr"),
    ({"remote_cidr": "10.0.0.0/8", "remote_group": "web"}, "INVALID_ARGUMENT", "not both"),
    ({"remote_group": "nosuch"}, "NOT_FOUND", "security group 'nosuch' not found"),
    ({"port_min": 80}, "ALREADY_EXISTS", "has this rule already"),
]


@pytest.mark.parametrize("fields, status, message", BAD_RULES)
def test_bad_rules_are_refused_and_write_nothing(sg_cloud, fields, status, message):
    _, store, _ = sg_cloud
    project, client = tenant(sg_cloud)
    group(client, "web")
    rule(client, "web", port_min=80)
    before = written(store, project)
    got, details = code(lambda: rule(client, "web", **fields))
    assert (got.name, message in details) == (status, True), details
    assert written(store, project) == before


@pytest.mark.parametrize("name, status, message", [
    ("bad name", "INVALID_ARGUMENT", "invalid security group name"),
    ("web", "ALREADY_EXISTS", "already exists"),
    ("default", "ALREADY_EXISTS", "already exists"),
])
def test_bad_groups_are_refused_and_write_nothing(sg_cloud, name, status, message):
    _, store, _ = sg_cloud
    project, client = tenant(sg_cloud)
    group(client, "web")
    before = written(store, project)
    got, details = code(lambda: group(client, name))
    assert got.name == status and message in details
    assert written(store, project) == before


def test_quotas_of_groups_and_rules(sg_cloud):
    _, store, _ = sg_cloud
    project, client = tenant(sg_cloud, security_groups=2, security_group_rules=4)
    group(client, "one")  # the default (2 rules) and this one (1 rule)
    before = written(store, project)
    got, details = code(lambda: group(client, "two"))
    assert got == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"quota exceeded for security_groups in project {project}: limit 2, in use 2" in details
    assert written(store, project) == before
    rule(client, "one", port_min=22)
    before = written(store, project)
    got, details = code(lambda: rule(client, "one", port_min=23))
    assert got == grpc.StatusCode.RESOURCE_EXHAUSTED and "security_group_rules" in details
    assert written(store, project) == before


def test_the_default_group_and_groups_in_use_are_not_deleted(sg_cloud):
    _, store, _ = sg_cloud
    project, client = tenant(sg_cloud)
    group(client, "web")
    group(client, "db")
    rule(client, "db", port_min=5432, remote_group="web")
    vm = client.instances.CreateInstance(pb.CreateInstanceRequest(
        name="vm1", flavor="tiny", security_groups=["db"]), timeout=60)
    client.wait_status(vm.id, {"ACTIVE"})  # settled (fake driver: under 1 s here)
    before = written(store, project)
    for ref, message in (("default", "the default security group cannot be deleted"),
                         ("db", "in use by instances vm1"),
                         ("web", "remote group of rules of groups db")):
        got, details = code(lambda ref=ref: client.security_groups.DeleteSecurityGroup(
            spb.DeleteSecurityGroupRequest(id_or_name=ref)))
        assert got == grpc.StatusCode.FAILED_PRECONDITION and message in details, details
    assert written(store, project) == before
    delete_all(client)  # the instance gone, its membership goes with it
    assert store.list(keys.security_group_memberships(project)) == []
    client.security_groups.DeleteSecurityGroup(spb.DeleteSecurityGroupRequest(id_or_name="db"))
    client.security_groups.DeleteSecurityGroup(spb.DeleteSecurityGroupRequest(id_or_name="web"))


def test_another_projects_group_is_not_found(sg_cloud):
    _, store, _ = sg_cloud
    _, owner = tenant(sg_cloud)
    theirs = group(owner, "private")
    project, client = tenant(sg_cloud)
    group(client, "mine")
    before = written(store, project)
    for call in (lambda: get(client, theirs.id),
                 lambda: rule(client, "mine", remote_group=theirs.id),
                 lambda: rule(client, theirs.id, port_min=1),
                 lambda: client.security_groups.DeleteSecurityGroup(
                     spb.DeleteSecurityGroupRequest(id_or_name=theirs.id)),
                 lambda: client.security_groups.DeleteSecurityGroupRule(
                     spb.DeleteSecurityGroupRuleRequest(id=theirs.rules[0].id)),
                 lambda: client.instances.CreateInstance(pb.CreateInstanceRequest(
                     name="vm", flavor="tiny", security_groups=[theirs.id]), timeout=60)):
        assert code(call)[0] == grpc.StatusCode.NOT_FOUND
    assert written(store, project) == before


def test_readers_read_and_members_manage(sg_cloud):
    cloud, _, admin = sg_cloud
    project, member = tenant(sg_cloud)
    admin.identity.CreateUser(ipb.CreateUserRequest(name=f"{project}-reader", password="pw-r",
                                                    project=project, role="reader"))
    reader = ApiClient(cloud.endpoint)
    reader.login(f"{project}-reader", "pw-r", project)
    group(member, "web")
    assert [g.name for g in reader.security_groups.ListSecurityGroups(
        spb.ListSecurityGroupsRequest()).security_groups] == ["default", "web"]
    for call in (lambda: group(reader, "other"), lambda: rule(reader, "web", port_min=80),
                 lambda: reader.security_groups.DeleteSecurityGroup(
                     spb.DeleteSecurityGroupRequest(id_or_name="web"))):
        assert code(call)[0] == grpc.StatusCode.PERMISSION_DENIED


# ---------------------------------------------------------------- instances


def test_instance_groups_at_create_and_set_live(sg_cloud):
    _, store, _ = sg_cloud
    project, client = tenant(sg_cloud)
    web, db = group(client, "web"), group(client, "db")
    vm = client.instances.CreateInstance(pb.CreateInstanceRequest(
        name="vm", flavor="tiny", security_groups=["web", db.id]), timeout=60)
    assert [(g.id, g.name) for g in vm.security_groups] == [(web.id, "web"), (db.id, "db")]
    assert {r.key for r in store.list(keys.security_group_memberships(project))} == {
        keys.security_group_member(project, web.id, vm.id), keys.security_group_member(project, db.id, vm.id)}
    client.wait_status(vm.id, {"ACTIVE"})  # settled (fake driver: under 1 s here)
    # Unknown or repeated groups: refused, nothing created.
    before = written(store, project)
    for groups, status in ((["web", "nosuch"], "NOT_FOUND"), (["web", "web"], "INVALID_ARGUMENT")):
        got, _ = code(lambda groups=groups: client.instances.CreateInstance(pb.CreateInstanceRequest(
            name="vm2", flavor="tiny", security_groups=groups), timeout=60))
        assert got.name == status
    assert written(store, project) == before
    changed = client.instances.SetInstanceSecurityGroups(pb.SetInstanceSecurityGroupsRequest(
        id_or_name="vm", security_groups=["default"]))
    assert [g.name for g in changed.security_groups] == ["default"]
    assert [g.name for g in client.instances.GetInstance(
        pb.GetInstanceRequest(id_or_name="vm")).security_groups] == ["default"]
    default = get(client, "default")
    assert {r.key for r in store.list(keys.security_group_memberships(project))} == {
        keys.security_group_member(project, default.id, vm.id)}
    before = written(store, project)
    for groups, status in (([], "INVALID_ARGUMENT"), (["nosuch"], "NOT_FOUND")):
        got, _ = code(lambda groups=groups: client.instances.SetInstanceSecurityGroups(
            pb.SetInstanceSecurityGroupsRequest(id_or_name="vm", security_groups=groups)))
        assert got.name == status
    assert written(store, project) == before
    client.security_groups.DeleteSecurityGroup(spb.DeleteSecurityGroupRequest(id_or_name="web"))
    delete_all(client)
    assert store.list(keys.security_group_memberships(project)) == []


def test_get_host_networks_carries_groups_rules_and_members(sg_cloud):
    cloud, _, _ = sg_cloud
    _, client = tenant(sg_cloud)
    web, db = group(client, "web"), group(client, "db")
    http = rule(client, "web", port_min=80, remote_cidr="100.64.0.0/24")
    sql = rule(client, "db", port_min=5432, remote_group="web")
    front = client.instances.CreateInstance(pb.CreateInstanceRequest(
        name="front", flavor="tiny", security_groups=["web"]), timeout=60)
    back = client.instances.CreateInstance(pb.CreateInstanceRequest(
        name="back", flavor="tiny", security_groups=["db", "default"]), timeout=60)
    for vm in (front, back):
        client.wait_status(vm.id, {"ACTIVE"})  # fake driver: under 1 s here
    view = host_service(cloud).GetHostNetworks(agent_pb2.GetHostNetworksRequest(), timeout=10)
    ports = {p.instance_id: p for n in view.networks for p in n.ports}
    default = get(client, "default")
    assert list(ports[front.id].security_group_ids) == [web.id]
    assert list(ports[back.id].security_group_ids) == [db.id, default.id]
    groups = {g.id: g for g in view.security_groups}
    assert {web.id, db.id, default.id} <= set(groups)
    assert list(groups[web.id].member_ips) == [front.nics[0].fixed_ip]
    assert list(groups[db.id].member_ips) == [back.nics[0].fixed_ip]
    assert list(groups[default.id].member_ips) == [back.nics[0].fixed_ip]
    by_id = {r.id: r for g in groups.values() for r in g.rules}
    assert (by_id[http.id].direction, by_id[http.id].protocol, by_id[http.id].port_min,
            by_id[http.id].port_max, by_id[http.id].remote_cidr) == ("ingress", "tcp", 80, 80,
                                                                     "100.64.0.0/24")
    assert by_id[sql.id].remote_group_id == web.id
    assert sorted((r.direction, r.remote_group_id) for r in groups[default.id].rules) == [
        ("egress", ""), ("ingress", default.id)]
    # A member joining: the group's member_ips follow, at once.
    client.instances.SetInstanceSecurityGroups(pb.SetInstanceSecurityGroupsRequest(
        id_or_name="back", security_groups=["db", "web"]))
    view = host_service(cloud).GetHostNetworks(agent_pb2.GetHostNetworksRequest(), timeout=10)
    groups = {g.id: g for g in view.security_groups}
    assert sorted(groups[web.id].member_ips) == sorted([front.nics[0].fixed_ip, back.nics[0].fixed_ip])
    delete_all(client)
