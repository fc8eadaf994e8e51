"""Who may see and do what, on the real test cloud: tenant isolation, roles, tokens
and the secrets kept in etcd.

Every refused call is also checked to change nothing, and every refusal has a
counterpart that must succeed (the owner, or the admin), so each test can fail.
At most three guests boot in this module (flavor tiny): project A's instance, the
"victim" that A creates with its private flavor and deletes again, and the instance
of a re-created project that reuses a request id.
"""

from __future__ import annotations

import json
import secrets
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
import pytest
from cloudapi.v1 import compute_pb2 as pb
from cloudapi.v1 import identity_pb2 as ipb
from cloudclient.client import CloudClient
from grpc_health.v1 import health_pb2, health_pb2_grpc

from control.identity.accounts import hash_token
from control.store import keys
from control.store.etcd import Txn
from tests.conftest import ApiClient

NOT_FOUND = grpc.StatusCode.NOT_FOUND
PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT

# Instance fields the worker and the agents' heartbeats change on their own while
# a guest boots; the API's own writes show in the rest (and in "deleting").
VOLATILE = {"host", "vm_state", "task_state", "power_state", "addresses", "fault", "updated_at",
            "launched_at", "quota_held"}


def fresh(kind: str) -> str:
    return f"acc-{kind}-{uuid.uuid4().hex[:8]}"


def expect_error(code: grpc.StatusCode, call: Callable[[], object],
                 undo: Callable[[object], None] | None = None) -> grpc.RpcError:
    """The RpcError `call` raises, which must have `code`. If the call succeeds
    instead, `undo` cleans up what it made (e.g. an instance) before failing."""
    try:
        result = call()
    except grpc.RpcError as exc:
        assert exc.code() == code, f"expected {code.name}, got {exc.code().name}: {exc.details()}"
        return exc
    if undo is not None:
        undo(result)
    raise AssertionError(f"expected {code.name}, but the call succeeded: {result!r}")


# ---------------------------------------------------------------- the tenants


@dataclass
class World:
    a: str                      # project A: owns an instance and a private flavor
    b: str                      # project B: the neighbour
    s: str                      # project S: scratch users for the admin-RPC cases
    flavor: str                 # A's private flavor
    passwords: dict[str, str]   # user -> password
    a_member: ApiClient
    a_reader: ApiClient
    b_member: ApiClient
    instance: pb.Instance | None = None     # A's instance
    victim: pb.Instance | None = None       # created (private flavor) and deleted by A
    users: list[str] = field(default_factory=list)


def create_user(admin: ApiClient, project: str, role: str = "member") -> tuple[str, str]:
    name, password = fresh("u"), secrets.token_urlsafe(16)
    created = admin.identity.CreateUser(ipb.CreateUserRequest(
        name=name, password=password, project=project, role=role))
    assert not created.generated_password
    assert [(r.project, r.role) for r in created.user.roles] == [(project, role)]
    return name, password


def client(cloud, name: str, password: str, project: str = "") -> ApiClient:
    api = ApiClient(cloud.endpoint)
    api.login(name, password, project)
    return api


def delete_instance(owner: ApiClient, instance_id: str) -> None:
    try:
        owner.instances.DeleteInstance(pb.DeleteInstanceRequest(id_or_name=instance_id))
    except grpc.RpcError as exc:
        if exc.code() != NOT_FOUND:
            raise
    owner.wait_gone(instance_id)


@pytest.fixture(scope="module")
def world(cloud, admin) -> World:
    a, b, s = fresh("a"), fresh("b"), fresh("s")
    for project in (a, b, s):
        admin.identity.CreateProject(ipb.CreateProjectRequest(name=project, description="test_access"))
    flavor = fresh("priv")
    admin.flavors.CreateFlavor(pb.CreateFlavorRequest(flavor=pb.Flavor(
        name=flavor, vcpus=1, memory_mb=256, disk_gb=1, public=False, projects=[a])))
    passwords, clients = {}, {}
    for label, project, role in [("am", a, "member"), ("ar", a, "reader"), ("bm", b, "member")]:
        name, password = create_user(admin, project, role)
        passwords[name] = password
        clients[label] = client(cloud, name, password)
    w = World(a=a, b=b, s=s, flavor=flavor, passwords=passwords, a_member=clients["am"],
              a_reader=clients["ar"], b_member=clients["bm"], users=list(passwords))
    try:
        w.instance = w.a_member.instances.CreateInstance(pb.CreateInstanceRequest(
            name=fresh("web"), flavor="tiny", request_id=fresh("req")))
        assert w.instance.project == a and w.instance.status == "BUILD"
        yield w
    finally:
        if w.instance is not None:
            delete_instance(w.a_member, w.instance.id)
        admin.flavors.DeleteFlavor(pb.DeleteFlavorRequest(name=flavor))
        for name in w.users:
            admin.identity.DeleteUser(ipb.DeleteUserRequest(name=name))
        for project in (a, b, s):
            admin.identity.DeleteProject(ipb.DeleteProjectRequest(name=project))


@pytest.fixture(scope="module")
def victim(world) -> pb.Instance:
    """A second instance of A, made with A's private flavor (the positive side of
    CreateInstance), for DeleteInstance to delete."""
    world.victim = world.a_member.instances.CreateInstance(pb.CreateInstanceRequest(
        name=fresh("victim"), flavor=world.flavor))
    yield world.victim
    delete_instance(world.a_member, world.victim.id)


@pytest.fixture
def undo(admin):
    """Clean-ups to run after the test, newest first; NOT_FOUND means already done."""
    steps: list[Callable[[], object]] = []
    yield steps.append
    for step in reversed(steps):
        try:
            step()
        except grpc.RpcError as exc:
            if exc.code() != NOT_FOUND:
                raise


def project_state(store, *projects: str) -> dict[str, object]:
    """Everything etcd holds for `projects`, minus what booting changes on its own."""
    state: dict[str, object] = {}
    for project in projects:
        for record in store.list(f"{keys.PREFIX}/projects/{project}/"):
            value = record.value
            if "/instances/" in record.key:
                value = {k: v for k, v in value.items() if k not in VOLATILE}
                value["deleting"] = record.value["task_state"] == "deleting"
            state[record.key] = value
        for key in (keys.quota_limits(project), keys.quota_usage(project)):
            found = store.get(key)
            state[key] = found.value if found else None
    for record in store.list(f"{keys.PREFIX}/instance-index/"):
        if record.value.get("project") in projects:
            state[record.key] = record.value
    return state


def cloud_state(store) -> dict[str, tuple[int, object]]:
    """Identity (tokens included), flavors and quota limits, as etcd holds them."""
    return {r.key: (r.mod_revision, r.value)
            for prefix in ("/identity/", "/flavors/", "/quota/limits/")
            for r in store.list(keys.PREFIX + prefix)}


def assert_intact(w: World, instance: pb.Instance) -> None:
    """`instance` is still there for its owner, as it was, and not being deleted."""
    now = w.a_member.instances.GetInstance(pb.GetInstanceRequest(id_or_name=instance.id))
    assert (now.id, now.name, now.project, now.flavor, now.image, now.vcpus, now.memory_mb) == (
        instance.id, instance.name, instance.project, instance.flavor, instance.image,
        instance.vcpus, instance.memory_mb)
    assert now.task_state != "deleting" and now.status not in {"DELETING", "DELETED"}


# ---------------------------------------------------------------- 1. isolation between projects


def _get(c: ApiClient, ref: str):
    return c.instances.GetInstance(pb.GetInstanceRequest(id_or_name=ref))


def _console(c: ApiClient, ref: str):
    return c.instances.GetConsoleOutput(pb.GetConsoleOutputRequest(id_or_name=ref, max_bytes=4096))


def _delete(c: ApiClient, ref: str):
    return c.instances.DeleteInstance(pb.DeleteInstanceRequest(id_or_name=ref, request_id=fresh("r")))


@dataclass(frozen=True)
class Probe:
    """Calls naming A's resources: each made with B's token must be NOT_FOUND;
    `owner` makes the same call with A's token and checks that it works."""

    calls: Callable[[World], list[Callable[[ApiClient], object]]]
    owner: Callable[[ApiClient, World], None]
    needs_victim: bool = False
    creates: bool = False  # if a call wrongly succeeds, delete what it made


def _owner_gets(c: ApiClient, w: World) -> None:
    assert _get(c, w.instance.id).id == w.instance.id
    assert _get(c, w.instance.name).id == w.instance.id


def _owner_reads_console(c: ApiClient, w: World) -> None:
    assert isinstance(_console(c, w.instance.id).output, str)
    assert isinstance(_console(c, w.instance.name).output, str)


def _owner_deletes(c: ApiClient, w: World) -> None:
    deleting = _delete(c, w.victim.name)
    assert deleting.id == w.victim.id and deleting.task_state == "deleting"
    assert c.wait_gone(w.victim.id)


def _owner_gets_flavor(c: ApiClient, w: World) -> None:
    flavor = c.flavors.GetFlavor(pb.GetFlavorRequest(name=w.flavor))
    assert flavor.name == w.flavor and not flavor.public and list(flavor.projects) == [w.a]


def _owner_gets_quota(c: ApiClient, w: World) -> None:
    quota = c.quotas.GetQuota(ipb.GetQuotaRequest(project=w.a))
    assert quota.project == w.a and quota.usage.instances >= 1


def _owner_created_with_private_flavor(c: ApiClient, w: World) -> None:
    # The victim fixture is A's CreateInstance with its private flavor.
    assert w.victim.project == w.a and w.victim.flavor == w.flavor and w.victim.status == "BUILD"
    assert (w.victim.vcpus, w.victim.memory_mb, w.victim.disk_gb) == (1, 256, 1)


def _create_with_private_flavor(w: World) -> list[Callable[[ApiClient], object]]:
    return [lambda c: c.instances.CreateInstance(pb.CreateInstanceRequest(
        name=fresh("steal"), flavor=w.flavor))]


ISOLATION: dict[str, Probe] = {
    "GetInstance-by-id": Probe(lambda w: [lambda c: _get(c, w.instance.id)], _owner_gets),
    "GetInstance-by-name": Probe(lambda w: [lambda c: _get(c, w.instance.name)], _owner_gets),
    "GetConsoleOutput-by-id": Probe(lambda w: [lambda c: _console(c, w.instance.id)],
                                    _owner_reads_console),
    "GetConsoleOutput-by-name": Probe(lambda w: [lambda c: _console(c, w.instance.name)],
                                      _owner_reads_console),
    "GetFlavor-private": Probe(
        lambda w: [lambda c: c.flavors.GetFlavor(pb.GetFlavorRequest(name=w.flavor))],
        _owner_gets_flavor),
    "GetQuota-other-project": Probe(
        lambda w: [lambda c: c.quotas.GetQuota(ipb.GetQuotaRequest(project=w.a))], _owner_gets_quota),
    "CreateInstance-private-flavor": Probe(_create_with_private_flavor,
                                           _owner_created_with_private_flavor, needs_victim=True,
                                           creates=True),
    # Last: the owner's side deletes the victim.
    "DeleteInstance-by-id-and-name": Probe(
        lambda w: [lambda c, ref=ref: _delete(c, ref)
                   for ref in (w.instance.id, w.instance.name, w.victim.id, w.victim.name)],
        _owner_deletes, needs_victim=True),
}


@pytest.mark.parametrize("rpc", list(ISOLATION))
def test_other_project_gets_not_found_and_changes_nothing(rpc, world, store, request):
    probe = ISOLATION[rpc]
    if probe.needs_victim:
        request.getfixturevalue("victim")
    w = world
    before = project_state(store, w.a, w.b)
    for call in probe.calls(w):
        undo = (lambda made: delete_instance(w.b_member, made.id)) if probe.creates else None
        error = expect_error(NOT_FOUND, lambda call=call: call(w.b_member), undo=undo)
        assert "permission" not in error.details().lower()
    assert project_state(store, w.a, w.b) == before
    assert_b_sees_nothing_of_a(w)
    assert_intact(w, w.instance)
    if probe.needs_victim and rpc.startswith("Delete"):
        assert_intact(w, w.victim)
    probe.owner(w.a_member, w)


def assert_b_sees_nothing_of_a(w: World) -> None:
    b_instances = {i.id for i in w.b_member.instances.ListInstances(pb.ListInstancesRequest()).instances}
    assert w.instance.id not in b_instances
    assert w.victim is None or w.victim.id not in b_instances
    b_flavors = {f.name for f in w.b_member.flavors.ListFlavors(pb.ListFlavorsRequest()).flavors}
    assert w.flavor not in b_flavors and "tiny" in b_flavors


def test_other_project_lists_show_nothing_of_a(world):
    w = world
    assert_b_sees_nothing_of_a(w)
    # A itself sees them (so the checks above can fail).
    a_instances = {i.id for i in w.a_member.instances.ListInstances(pb.ListInstancesRequest()).instances}
    assert w.instance.id in a_instances
    a_flavors = {f.name for f in w.a_member.flavors.ListFlavors(pb.ListFlavorsRequest()).flavors}
    assert {w.flavor, "tiny"} <= a_flavors


def test_unknown_and_foreign_resources_read_the_same(world):
    """NOT_FOUND for another project's resource says nothing more than for one that
    does not exist."""
    w = world
    ghost = str(uuid.uuid4())
    foreign = expect_error(NOT_FOUND, lambda: _get(w.b_member, w.instance.id)).details()
    unknown = expect_error(NOT_FOUND, lambda: _get(w.b_member, ghost)).details()
    assert foreign.replace(w.instance.id, ghost) == unknown
    foreign = expect_error(NOT_FOUND, lambda: w.b_member.flavors.GetFlavor(
        pb.GetFlavorRequest(name=w.flavor))).details()
    unknown = expect_error(NOT_FOUND, lambda: w.b_member.flavors.GetFlavor(
        pb.GetFlavorRequest(name="no-such-flavor"))).details()
    assert foreign.replace(w.flavor, "no-such-flavor") == unknown
    foreign = expect_error(NOT_FOUND, lambda: w.b_member.quotas.GetQuota(
        ipb.GetQuotaRequest(project=w.a))).details()
    unknown = expect_error(NOT_FOUND, lambda: w.b_member.quotas.GetQuota(
        ipb.GetQuotaRequest(project="no-such-project"))).details()
    assert foreign.replace(w.a, "no-such-project") == unknown


def test_recreated_project_does_not_inherit_private_flavors(cloud, admin, undo):
    project, flavor = fresh("p"), fresh("priv")
    admin.identity.CreateProject(ipb.CreateProjectRequest(name=project))
    admin.flavors.CreateFlavor(pb.CreateFlavorRequest(flavor=pb.Flavor(
        name=flavor, vcpus=1, memory_mb=128, disk_gb=1, public=False, projects=[project])))
    undo(lambda: admin.flavors.DeleteFlavor(pb.DeleteFlavorRequest(name=flavor)))
    admin.identity.DeleteProject(ipb.DeleteProjectRequest(name=project))
    # Someone else's project, later, under the same name.
    admin.identity.CreateProject(ipb.CreateProjectRequest(name=project))
    undo(lambda: admin.identity.DeleteProject(ipb.DeleteProjectRequest(name=project)))
    name, password = create_user(admin, project)
    undo(lambda: admin.identity.DeleteUser(ipb.DeleteUserRequest(name=name)))
    newcomer = client(cloud, name, password)
    assert "tiny" in {f.name for f in newcomer.flavors.ListFlavors(pb.ListFlavorsRequest()).flavors}
    expect_error(NOT_FOUND, lambda: newcomer.flavors.GetFlavor(pb.GetFlavorRequest(name=flavor)))


# ---------------------------------------------------------------- 2. roles


def _reader_lists_instances(c: ApiClient, w: World) -> None:
    listed = c.instances.ListInstances(pb.ListInstancesRequest()).instances
    assert w.instance.id in {i.id for i in listed}


def _reader_whoami(c: ApiClient, w: World) -> None:
    who = c.identity.WhoAmI(ipb.WhoAmIRequest())
    assert (who.project, who.role, who.token) == (w.a, "reader", "")
    assert who.username in w.passwords


READS: dict[str, Callable[[ApiClient, World], None]] = {
    "GetInstance": lambda c, w: _owner_gets(c, w),
    "ListInstances": _reader_lists_instances,
    "GetConsoleOutput": lambda c, w: _owner_reads_console(c, w),
    "ListFlavors": lambda c, w: _assert_contains(
        {f.name for f in c.flavors.ListFlavors(pb.ListFlavorsRequest()).flavors}, w.flavor),
    "GetFlavor": _owner_gets_flavor,
    "ListImages": lambda c, w: _assert_contains(
        {i.name for i in c.images.ListImages(pb.ListImagesRequest()).images}, "debian-busybox"),
    "GetImage": lambda c, w: _assert_contains(
        {c.images.GetImage(pb.GetImageRequest(id_or_name="debian-busybox")).name}, "debian-busybox"),
    "GetQuota": lambda c, w: _assert_contains({c.quotas.GetQuota(ipb.GetQuotaRequest()).project}, w.a),
    "WhoAmI": _reader_whoami,
}


def _assert_contains(found: set[str], wanted: str) -> None:
    assert wanted in found, f"{wanted!r} not in {sorted(found)}"


@pytest.mark.parametrize("rpc", list(READS))
def test_reader_may_read(rpc, world):
    READS[rpc](world.a_reader, world)


@pytest.mark.parametrize("rpc", ["CreateInstance", "DeleteInstance-by-id", "DeleteInstance-by-name"])
def test_reader_may_not_write(rpc, world, store):
    w = world
    before = project_state(store, w.a)
    if rpc == "CreateInstance":
        error = expect_error(PERMISSION_DENIED, lambda: w.a_reader.instances.CreateInstance(
            pb.CreateInstanceRequest(name=fresh("rd"), flavor="tiny")),
            undo=lambda made: delete_instance(w.a_member, made.id))
    else:
        ref = w.instance.id if rpc.endswith("id") else w.instance.name
        error = expect_error(PERMISSION_DENIED, lambda: _delete(w.a_reader, ref))
    assert "reader" in error.details()
    assert project_state(store, w.a) == before
    assert_intact(w, w.instance)


# Each admin RPC: set up what it acts on (as admin), and return the call and a check
# of the admin's own result. The targets are scratch resources, so the admin can
# really make the call the member was refused.
AdminCase = tuple[Callable[[CloudClient], object], Callable[[object], None]]


def _case_create_project(admin, w, undo, store) -> AdminCase:
    name = fresh("p")
    undo(lambda: admin.identity.DeleteProject(ipb.DeleteProjectRequest(name=name)))

    def check(made):
        assert made.name == name and store.get(keys.project(name)) is not None
    return (lambda c: c.identity.CreateProject(ipb.CreateProjectRequest(name=name))), check


def _case_list_projects(admin, w, undo, store) -> AdminCase:
    def check(listed):
        assert {w.a, w.b, w.s, "admin"} <= {p.name for p in listed.projects}
    return (lambda c: c.identity.ListProjects(ipb.ListProjectsRequest())), check


def _case_delete_project(admin, w, undo, store) -> AdminCase:
    name = fresh("p")
    admin.identity.CreateProject(ipb.CreateProjectRequest(name=name))
    undo(lambda: admin.identity.DeleteProject(ipb.DeleteProjectRequest(name=name)))

    def check(_):
        assert store.get(keys.project(name)) is None
    return (lambda c: c.identity.DeleteProject(ipb.DeleteProjectRequest(name=name))), check


def _case_create_user(admin, w, undo, store) -> AdminCase:
    name = fresh("u")
    undo(lambda: admin.identity.DeleteUser(ipb.DeleteUserRequest(name=name)))

    def check(made):
        assert made.user.name == name and made.generated_password
        assert [(r.project, r.role) for r in made.user.roles] == [("admin", "admin")]
    # Asked for a cloud admin: from a member that would be an escalation.
    return (lambda c: c.identity.CreateUser(ipb.CreateUserRequest(
        name=name, project="admin", role="admin"))), check


def _case_list_users(admin, w, undo, store) -> AdminCase:
    def check(listed):
        assert set(w.passwords) <= {u.name for u in listed.users}
    return (lambda c: c.identity.ListUsers(ipb.ListUsersRequest())), check


def _scratch_user(admin, w, undo) -> str:
    name, _ = create_user(admin, w.s)
    undo(lambda: admin.identity.DeleteUser(ipb.DeleteUserRequest(name=name)))
    return name


def _case_delete_user(admin, w, undo, store) -> AdminCase:
    name = _scratch_user(admin, w, undo)

    def check(_):
        assert store.get(keys.user(name)) is None
        assert store.list(keys.roles_of(name)) == []
    return (lambda c: c.identity.DeleteUser(ipb.DeleteUserRequest(name=name))), check


def _case_add_role(admin, w, undo, store) -> AdminCase:
    name = _scratch_user(admin, w, undo)

    def check(user):
        assert {(r.project, r.role) for r in user.roles} == {(w.s, "member"), (w.b, "reader")}
    return (lambda c: c.identity.AddRole(ipb.RoleRequest(username=name, project=w.b, role="reader"))), check


def _case_remove_role(admin, w, undo, store) -> AdminCase:
    name = _scratch_user(admin, w, undo)

    def check(user):
        assert list(user.roles) == [] and store.get(keys.role(name, w.s)) is None
    return (lambda c: c.identity.RemoveRole(ipb.RoleRequest(username=name, project=w.s))), check


def _case_revoke_user_tokens(admin, w, undo, store) -> AdminCase:
    name, password = create_user(admin, w.s)
    undo(lambda: admin.identity.DeleteUser(ipb.DeleteUserRequest(name=name)))
    victim = ApiClient(admin.target)
    victim.login(name, password)

    def check(revoked):
        assert revoked.revoked == 1
        expect_error(UNAUTHENTICATED, lambda: victim.identity.WhoAmI(ipb.WhoAmIRequest()))
    return (lambda c: c.identity.RevokeUserTokens(ipb.RevokeUserTokensRequest(username=name))), check


def _case_set_quota(admin, w, undo, store) -> AdminCase:
    was = admin.quotas.GetQuota(ipb.GetQuotaRequest(project=w.a)).limits.instances
    undo(lambda: admin.quotas.SetQuota(ipb.SetQuotaRequest(project=w.a, instances=was)))

    def check(quota):
        assert quota.project == w.a and quota.limits.instances == was + 7
    return (lambda c: c.quotas.SetQuota(ipb.SetQuotaRequest(project=w.a, instances=was + 7))), check


def _case_create_flavor(admin, w, undo, store) -> AdminCase:
    name = fresh("fl")
    undo(lambda: admin.flavors.DeleteFlavor(pb.DeleteFlavorRequest(name=name)))

    def check(made):
        assert made.name == name and store.get(keys.flavor(name)) is not None
    return (lambda c: c.flavors.CreateFlavor(pb.CreateFlavorRequest(flavor=pb.Flavor(
        name=name, vcpus=64, memory_mb=65536, disk_gb=500, public=False, projects=[w.a])))), check


def _case_delete_flavor(admin, w, undo, store) -> AdminCase:
    name = fresh("fl")
    admin.flavors.CreateFlavor(pb.CreateFlavorRequest(flavor=pb.Flavor(
        name=name, vcpus=1, memory_mb=128, disk_gb=1, public=False, projects=[w.s])))
    undo(lambda: admin.flavors.DeleteFlavor(pb.DeleteFlavorRequest(name=name)))

    def check(_):
        assert store.get(keys.flavor(name)) is None
    return (lambda c: c.flavors.DeleteFlavor(pb.DeleteFlavorRequest(name=name))), check


ADMIN_RPCS = {
    "CreateProject": _case_create_project, "ListProjects": _case_list_projects,
    "DeleteProject": _case_delete_project, "CreateUser": _case_create_user,
    "ListUsers": _case_list_users, "DeleteUser": _case_delete_user, "AddRole": _case_add_role,
    "RemoveRole": _case_remove_role, "RevokeUserTokens": _case_revoke_user_tokens,
    "SetQuota": _case_set_quota, "CreateFlavor": _case_create_flavor,
    "DeleteFlavor": _case_delete_flavor,
}


@pytest.mark.parametrize("rpc", list(ADMIN_RPCS))
def test_member_is_denied_admin_rpcs_and_admin_is_not(rpc, world, admin, store, undo):
    call, check = ADMIN_RPCS[rpc](admin, world, undo, store)
    before = cloud_state(store)
    for caller in (world.a_member, world.a_reader):
        error = expect_error(PERMISSION_DENIED, lambda caller=caller: call(caller))
        assert rpc in error.details() and "admin" in error.details()
    assert cloud_state(store) == before
    check(call(admin))


def test_role_change_applies_to_tokens_already_issued(cloud, admin, world, undo):
    name, password = create_user(admin, world.s, "member")
    undo(lambda: admin.identity.DeleteUser(ipb.DeleteUserRequest(name=name)))
    user = client(cloud, name, password)
    # A member may delete: an unknown instance is NOT_FOUND, past the role check.
    expect_error(NOT_FOUND, lambda: _delete(user, "no-such-instance"))
    admin.identity.AddRole(ipb.RoleRequest(username=name, project=world.s, role="reader"))
    assert user.identity.WhoAmI(ipb.WhoAmIRequest()).role == "reader"
    expect_error(PERMISSION_DENIED, lambda: _delete(user, "no-such-instance"))


# ---------------------------------------------------------------- 3. tokens


def _whoami(c: CloudClient):
    return c.identity.WhoAmI(ipb.WhoAmIRequest())


def _list(c: CloudClient):
    return c.instances.ListInstances(pb.ListInstancesRequest())


@pytest.fixture
def user(cloud, admin, world, undo):
    """A fresh member of A: (name, password, a logged-in client)."""
    name, password = create_user(admin, world.a, "member")
    undo(lambda: admin.identity.DeleteUser(ipb.DeleteUserRequest(name=name)))
    return name, password, client(cloud, name, password)


def test_missing_token_is_unauthenticated(cloud, world):
    bare = CloudClient(cloud.endpoint)
    assert bare.token == ""
    error = expect_error(UNAUTHENTICATED, lambda: _list(bare))
    assert "token" in error.details()
    expect_error(UNAUTHENTICATED, lambda: _whoami(bare))
    # A real token without the "Bearer " scheme is no token either.
    expect_error(UNAUTHENTICATED, lambda: bare.instances.ListInstances(
        pb.ListInstancesRequest(), metadata=[("authorization", world.a_member.token)]))


def test_tampered_token_is_unauthenticated(cloud, user):
    _, _, good = user
    assert _list(good) is not None
    token = good.token
    i = len(token) // 2
    tampered = token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1:]
    assert tampered != token and len(tampered) == len(token)
    expect_error(UNAUTHENTICATED, lambda: _list(CloudClient(cloud.endpoint, tampered)))
    expect_error(UNAUTHENTICATED, lambda: _list(CloudClient(cloud.endpoint, token + "x")))
    expect_error(UNAUTHENTICATED, lambda: _list(CloudClient(cloud.endpoint, token[:-1])))
    assert _list(good) is not None  # the real one still works


def test_expired_token_is_unauthenticated(cloud, store, user):
    _, _, c = user
    assert _whoami(c).role == "member"
    key = keys.token(hash_token(c.token))
    record = store.get(key)
    assert record is not None and record.value["expires_at"] > time.time()
    store.put(key, {**record.value, "expires_at": time.time() - 60})
    error = expect_error(UNAUTHENTICATED, lambda: _list(c))
    assert "expired" in error.details()
    expect_error(UNAUTHENTICATED, lambda: _whoami(c))
    assert store.get(key) is None  # an expired token's record is dropped


def test_logout_ends_only_that_token(cloud, user):
    name, password, c = user
    other = client(cloud, name, password)
    assert _whoami(c).username == name
    c.identity.Logout(ipb.LogoutRequest())
    expect_error(UNAUTHENTICATED, lambda: _list(c))
    expect_error(UNAUTHENTICATED, lambda: c.identity.Logout(ipb.LogoutRequest()))
    assert _whoami(other).username == name


def test_revoke_user_tokens(cloud, admin, world, user):
    name, password, first = user
    second = client(cloud, name, password)
    bystander = world.a_member
    for c in (first, second, bystander):
        assert _list(c) is not None
    revoked = admin.identity.RevokeUserTokens(ipb.RevokeUserTokensRequest(username=name))
    assert revoked.revoked == 2
    for c in (first, second):
        expect_error(UNAUTHENTICATED, lambda c=c: _list(c))
    assert _list(bystander) is not None
    again = client(cloud, name, password)
    assert _whoami(again).username == name


def test_remove_role_ends_tokens_in_that_project_only(cloud, admin, world, user):
    name, password, in_a = user
    admin.identity.AddRole(ipb.RoleRequest(username=name, project=world.s, role="reader"))
    in_s = client(cloud, name, password, world.s)
    assert (_whoami(in_a).project, _whoami(in_s).project) == (world.a, world.s)
    updated = admin.identity.RemoveRole(ipb.RoleRequest(username=name, project=world.a))
    assert [(r.project, r.role) for r in updated.roles] == [(world.s, "reader")]
    expect_error(UNAUTHENTICATED, lambda: _list(in_a))
    assert _whoami(in_s).role == "reader"
    expect_error(UNAUTHENTICATED, lambda: client(cloud, name, password, world.a))


def test_role_removed_behind_the_apis_back_ends_the_token(cloud, store, user, world):
    """Even a token whose record survives (say, a revoke lost in a crash) stops
    working once its role is gone: the role is read again on every call."""
    name, _, c = user
    role = store.get(keys.role(name, world.a))
    assert _list(c) is not None
    assert store.commit(Txn().expect(role).delete(role.key))
    try:
        expect_error(UNAUTHENTICATED, lambda: _list(c))
    finally:
        store.put(role.key, role.value)


def test_login_failures_all_look_the_same(cloud, world):
    w = world
    name, password = next(iter(w.passwords.items()))  # A's member
    bare = CloudClient(cloud.endpoint)
    attempts = {
        "wrong password": (name, password + "x", ""),
        "empty password": (name, "", ""),
        "unknown user": (fresh("nobody"), password, ""),
        "project without a role": (name, password, w.b),
        "unknown project": (name, password, fresh("nowhere")),
    }
    messages = {}
    for what, (user, pw, project) in attempts.items():
        error = expect_error(UNAUTHENTICATED, lambda u=user, p=pw, pr=project: bare.login(u, p, pr))
        messages[what] = error.details()
    assert len(set(messages.values())) == 1, messages
    assert bare.token == ""
    assert bare.login(name, password, w.a).project == w.a  # the right ones do work


def test_login_and_health_need_no_token(cloud, world):
    channel = grpc.insecure_channel(cloud.endpoint)
    health = health_pb2_grpc.HealthStub(channel)
    assert health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status == \
        health_pb2.HealthCheckResponse.SERVING
    name, password = next(iter(world.passwords.items()))
    bare = CloudClient(cloud.endpoint)
    token = bare.login(name, password)
    assert token.token and token.username == name and token.project == world.a
    assert token.role == "member" and token.expires_at.seconds > time.time()


def test_login_timing_does_not_tell_which_users_exist(cloud, world):
    name, password = next(iter(world.passwords.items()))
    bare = CloudClient(cloud.endpoint)

    def seconds(user: str) -> float:
        started = time.perf_counter()
        expect_error(UNAUTHENTICATED, lambda: bare.login(user, password + "x"))
        return time.perf_counter() - started

    known = statistics.median(seconds(name) for _ in range(7))
    unknown = statistics.median(seconds(fresh("nobody")) for _ in range(7))
    assert unknown > known / 3, f"unknown user {unknown * 1000:.1f} ms, known {known * 1000:.1f} ms"


# ---------------------------------------------------------------- 4. secrets at rest


def test_etcd_holds_no_password_and_no_token(cloud, store, user):
    name, password, c = user
    record = store.get(keys.user(name))
    assert record is not None
    assert record.value["password_hash"].startswith("$argon2")
    assert password not in json.dumps(record.value)
    # The token's record is there, under its hash...
    assert store.get(keys.token(hash_token(c.token))) is not None
    tokens = store.list(keys.tokens())
    assert tokens
    for r in tokens:
        assert c.token not in r.key and c.token not in json.dumps(r.value)
    # ...and neither secret is anywhere else in the cloud's state.
    for r in store.list(keys.PREFIX + "/"):
        text = r.key + json.dumps(r.value)
        assert password not in text and c.token not in text, r.key


def test_logs_hold_no_password_and_no_token(cloud, user):
    name, password, c = user
    expect_error(UNAUTHENTICATED, lambda: CloudClient(cloud.endpoint).login(name, password + "x"))
    expect_error(NOT_FOUND, lambda: _get(c, "no-such-instance"))
    logs = [p for p in (cloud.root / "logs").rglob("*") if p.is_file()]
    assert logs
    for path in logs:
        text = path.read_text(errors="replace")
        assert password not in text and c.token not in text, path


def test_recreated_project_does_not_inherit_request_ids(cloud, admin, store, undo):
    """Idempotency records die with their project: a later project of the same name
    reusing a request id gets a new instance, not the old tenant's."""
    project = fresh("p")
    admin.identity.CreateProject(ipb.CreateProjectRequest(name=project))
    store.put(keys.request(project, "req-1"), {"instance_id": "0" * 8, "instance": {"name": "secret"}})
    admin.identity.DeleteProject(ipb.DeleteProjectRequest(name=project))
    assert store.list(keys.project_data(project)) == []

    # The same name again, a member of it, and a create that reuses the request id.
    admin.identity.CreateProject(ipb.CreateProjectRequest(name=project))
    undo(lambda: admin.identity.DeleteProject(ipb.DeleteProjectRequest(name=project)))
    name, password = create_user(admin, project)
    undo(lambda: admin.identity.DeleteUser(ipb.DeleteUserRequest(name=name)))
    member = client(cloud, name, password)
    request = pb.CreateInstanceRequest(name=fresh("new"), flavor="tiny", request_id="req-1")
    created = member.instances.CreateInstance(request)
    undo(lambda: delete_instance(member, created.id))
    assert (created.name, created.project, created.status) == (request.name, project, "BUILD")
    assert created.id != "0" * 8
    # The request id is the new project's own now: sent again, it answers with this instance.
    assert member.instances.CreateInstance(request).id == created.id
    assert [i.id for i in member.instances.ListInstances(pb.ListInstancesRequest()).instances] \
        == [created.id]


def test_admin_role_only_in_the_admin_project(admin, world):
    expect_error(INVALID_ARGUMENT, lambda: admin.identity.AddRole(ipb.RoleRequest(
        username=next(iter(world.passwords)), project=world.a, role="admin")))
