"""Property tests (hypothesis) over the public API's create and update messages:
names, metadata and user data with XML metacharacters, NULs, very long strings,
negative and huge sizes. Every call answers OK or a client error (never
INTERNAL or UNKNOWN), what was accepted reads back as given, and the domain XML
the libvirt driver writes has exactly one <name>, the instance id.

Most properties run against a fake-driver cloud (fast); the domain-XML one runs
a few examples through the session's libvirt cloud. Runs are derandomized, so
CI sees the same examples every time; a failing example is printed by hypothesis
(and the call log of the failing test is in the assertion message)."""

from __future__ import annotations

import os
import uuid

import grpc
import pytest
from cloudapi.v1 import compute_pb2 as pb
from cloudapi.v1 import events_pb2 as epb
from cloudapi.v1 import identity_pb2 as ipb
from cloudapi.v1 import scaling_pb2 as spb
from cloudapi.v1 import usage_pb2 as upb
from cloudapi.v1 import usage_pb2_grpc
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

from tests.conftest import login, until
from tests.control.conftest import delete_all_instances
from tests.control.test_quota import new_tenant

C = grpc.StatusCode
# Client errors a bad request may get. Never INTERNAL or UNKNOWN.
CLIENT_ERRORS = {C.INVALID_ARGUMENT, C.NOT_FOUND, C.RESOURCE_EXHAUSTED, C.ALREADY_EXISTS,
                 C.FAILED_PRECONDITION}
TIMEOUT_S = 30

# Derandomized: the same examples on every run. To search further, e.g.
# BAD_INPUT_EXAMPLES=300 BAD_INPUT_RANDOM=1 pytest tests/control/test_bad_input_properties.py
EXAMPLES = int(os.environ.get("BAD_INPUT_EXAMPLES", "25"))
PROPERTY = settings(max_examples=EXAMPLES, deadline=None,
                    derandomize=not os.environ.get("BAD_INPUT_RANDOM"), database=None,
                    suppress_health_check=list(HealthCheck), print_blob=True)
FEW = settings(PROPERTY, max_examples=max(1, EXAMPLES // 2))

# ------------------------------------------------------------------ strategies

SPECIAL = ["", " ", ".", "..", "../", "../../etc/passwd", "a/b", "/", "\x00", "a\x00b", "\n",
           "<name>x</name>", "]]>", "<![CDATA[x]]>", "&amp;", "&#0;", "'\"<>&", "%s%n", "{}",
           "\u202e", "é", "\U0001f600", "-", "_", "a" * 63, "a" * 64, "x" * 10_000, "\x00" * 300,
           "web-1", "ok.name_1"]
XML_CHARS = "<>&'\"/\\\x00\n\t ]![-.:;="


def long_text() -> st.SearchStrategy[str]:
    return st.builds(lambda c, n: c * n, st.characters(codec="utf-8"), st.integers(64, 12_000))


NASTY_TEXT = st.one_of(
    st.sampled_from(SPECIAL),
    st.text(alphabet=XML_CHARS + "az09", max_size=40),
    st.text(max_size=40),
    st.from_regex(r"[A-Za-z0-9._-]{1,63}", fullmatch=True),
    long_text(),
)
VALID_NAMES = st.from_regex(r"[A-Za-z0-9._-]{1,63}", fullmatch=True)


def mostly(valid, nasty=NASTY_TEXT):
    """Valid about two times in three, so that accepted requests are checked too."""
    return st.one_of(valid, valid, nasty)


NAMES = mostly(VALID_NAMES)
# Free text (descriptions, command lines, zones): up to 2 MB, past etcd's 1.5 MiB request limit.
FREE_TEXT = st.one_of(NASTY_TEXT, st.builds(lambda n: "d" * n, st.sampled_from(
    [1024, 65_536, 1_600_000, 2_000_000])))
INT32 = st.one_of(st.sampled_from([0, 1, -1, 2, 128, 2**31 - 1, -(2**31), 2**30, 65_536]),
                  st.integers(-(2**31), 2**31 - 1), st.integers(-2, 4096))
SMALL_OR_HUGE = st.one_of(st.integers(-1, 3), st.integers(-1, 3),
                          st.sampled_from([2**31 - 1, -(2**31), 1_000_000]))
USER_DATA = st.one_of(st.binary(max_size=300), st.sampled_from([
    b"", b"#!/bin/sh\necho hi\n", b"\x00" * 100, b"\xff\xfe\xfd", b"<x>]]>&", b"x" * 65_536,
    b"x" * (65_536 + 1), b"\x00" * 200_000]))
TIMESTAMPS = st.builds(Timestamp, seconds=st.one_of(
    st.sampled_from([0, -1, 253_402_300_799, 253_402_300_800, -62_135_596_800, -62_135_596_801,
                     2**62, -(2**62), 1_700_000_000]), st.integers(-(2**63), 2**63 - 1)),
    nanos=st.one_of(st.just(0), st.sampled_from([999_999_999, 1_000_000_000, -1]), INT32))
GARBAGE_IDS = st.one_of(st.sampled_from(SPECIAL), st.text(max_size=80), long_text(),
                        st.just(str(uuid.uuid4())))


# ------------------------------------------------------------------ the cloud

@pytest.fixture(scope="module")
def fuzz(fake_cloud_and_store):
    """The shared fake-driver cloud (tests/control/conftest.py); a tenant of its
    own with room for what the examples create."""
    cloud, _ = fake_cloud_and_store
    admin = login(cloud, "admin")
    project, member = new_tenant(cloud, admin, instances=40, vcpus=-1, memory_mb=-1, disk_gb=-1)
    yield cloud, admin, project, member
    delete_all_instances(member)


def call(rpc, request, allowed=frozenset(), **kwargs):
    """Send one request; the response, or the error's code after checking it is a
    client error. Streams: a list of the messages."""
    name = getattr(rpc, "_method", b"?")
    name = name.decode().rsplit("/", 1)[-1] if isinstance(name, bytes) else str(name)
    try:
        result = rpc(request, timeout=TIMEOUT_S, **kwargs)
        event(f"{name}: OK")
        return result
    except grpc.RpcError as exc:
        event(f"{name}: {exc.code().name}")
        note(f"{rpc!r} -> {exc.code().name}: {exc.details()[:300]}")
        assert exc.code() in CLIENT_ERRORS | set(allowed), (
            f"{exc.code().name}: {exc.details()[:500]} for {str(request)[:500]!r}")
        # gRPC's own refusal of an oversized error message hides the real status.
        assert "metadata size exceeds" not in exc.details(), exc.details()[:300]
        return exc.code()


def ok(result) -> bool:
    return not isinstance(result, grpc.StatusCode)


def delete_instances(client, ids) -> None:
    for instance_id in ids:
        try:
            client.instances.DeleteInstance(pb.DeleteInstanceRequest(id_or_name=instance_id),
                                            timeout=TIMEOUT_S)
        except grpc.RpcError as exc:
            assert exc.code() in (C.NOT_FOUND,), exc.details()


def wait_idle(client, instance_id, timeout_s=5):
    """Fake driver: a scale or resize is done in under 0.2 s (measured: 0.01-0.12 s)."""
    def idle():
        current = client.instances.GetInstance(pb.GetInstanceRequest(id_or_name=instance_id))
        return not current.task_state and current
    return until(idle, timeout_s, f"instance {instance_id} idle", every_s=0.05)


# ------------------------------------------------------------------ instances

@given(name=NAMES, flavor=mostly(st.sampled_from(["tiny", "small"])),
       image=mostly(st.just("")), request_id=mostly(st.just("")),
       group=mostly(st.just("")), key_name=mostly(st.just("")), user_data=USER_DATA)
@PROPERTY
def test_create_instance(fuzz, name, flavor, image, request_id, group, key_name, user_data):
    _, _, project, member = fuzz
    request = pb.CreateInstanceRequest(name=name, flavor=flavor, image=image,
                                       request_id=request_id, group=group, key_name=key_name,
                                       user_data=user_data)
    created = call(member.instances.CreateInstance, request)
    if ok(created):
        try:
            got = member.instances.GetInstance(pb.GetInstanceRequest(id_or_name=created.id))
            assert (got.name, got.flavor, got.project) == (name, flavor, project)
            assert member.instances.GetInstance(pb.GetInstanceRequest(id_or_name=name)).id == created.id
        finally:
            delete_instances(member, [created.id])
    call(member.instances.PreviewPlacement, request)


@given(name=NAMES, count=SMALL_OR_HUGE, min_count=SMALL_OR_HUGE, user_data=USER_DATA)
@FEW
def test_create_instances(fuzz, name, count, min_count, user_data):
    _, _, _, member = fuzz
    made = call(member.instances.CreateInstances, pb.CreateInstancesRequest(
        name=name, flavor="tiny", count=count, min_count=min_count, user_data=user_data,
        request_id=uuid.uuid4().hex))
    if ok(made):
        try:
            assert min(count, 40) >= len(made.instances) >= max(min_count, 1)
            for i in made.instances:
                assert i.name.startswith(name)
        finally:
            delete_instances(member, [i.id for i in made.instances])


@pytest.fixture(scope="module")
def target(fuzz):
    """One instance the update examples work on."""
    _, _, _, member = fuzz
    created = member.instances.CreateInstance(pb.CreateInstanceRequest(name="target", flavor="tiny"))
    assert member.wait_status(created.id, {"ACTIVE", "ERROR"}).status == "ACTIVE"
    yield created
    delete_instances(member, [created.id])


@given(name=NAMES, request_id=mostly(st.just("")))
@PROPERTY
def test_rename_instance(fuzz, target, name, request_id):
    _, _, _, member = fuzz
    renamed = call(member.instances.RenameInstance, pb.RenameInstanceRequest(
        id_or_name=target.id, name=name, request_id=request_id))
    if ok(renamed):
        got = member.instances.GetInstance(pb.GetInstanceRequest(id_or_name=target.id))
        assert got.name == name
        member.instances.RenameInstance(pb.RenameInstanceRequest(id_or_name=target.id,
                                                                 name="target"))
    assert member.instances.GetInstance(pb.GetInstanceRequest(id_or_name="target")).id == target.id


SIZES = mostly(st.integers(0, 4), INT32)


@given(vcpus=SIZES, memory_mb=mostly(st.sampled_from([0, 128, 256, 512, 1024]), INT32),
       disk_gb=SIZES, flavor=mostly(st.sampled_from(["small", "tiny", "medium"])))
@PROPERTY
def test_scale_and_resize_instance(fuzz, target, vcpus, memory_mb, disk_gb, flavor):
    _, _, _, member = fuzz
    before = wait_idle(member, target.id)
    scaled = call(member.instances.ScaleInstance, pb.ScaleInstanceRequest(
        id_or_name=target.id, vcpus=vcpus, memory_mb=memory_mb, disk_gb=disk_gb))
    if ok(scaled):
        after = wait_idle(member, target.id)
        if after.status == "ACTIVE" and not after.HasField("fault"):
            assert (after.vcpus, after.memory_mb, after.disk_gb) == (
                vcpus or before.vcpus, memory_mb or before.memory_mb, disk_gb or before.disk_gb)
    else:
        after = member.instances.GetInstance(pb.GetInstanceRequest(id_or_name=target.id))
        assert (after.vcpus, after.memory_mb, after.disk_gb) == (
            before.vcpus, before.memory_mb, before.disk_gb), "a refused scale changed the instance"
    wait_idle(member, target.id)
    resized = call(member.instances.ResizeInstance, pb.ResizeInstanceRequest(
        id_or_name=target.id, flavor=flavor))
    if ok(resized):
        assert wait_idle(member, target.id).status in ("ACTIVE", "SHUTOFF", "ERROR")


# ------------------------------------------------------------------ keypairs, groups

PUBLIC_KEYS = st.one_of(NASTY_TEXT, st.sampled_from([
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl x@y",
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl <x>&\x00",
    "ssh-rsa AAAA", "ssh-ed25519 !!!!", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5", "ssh-dss AAAAB3Nza",
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\nssh-rsa x",
    "-----BEGIN OPENSSH PRIVATE KEY-----", "ecdsa-sha2-nistp256 AAAA" + "A" * 5000]))


@given(name=NAMES, public_key=PUBLIC_KEYS, generate=st.booleans())
@PROPERTY
def test_keypairs(fuzz, name, public_key, generate):
    _, _, _, member = fuzz
    if generate:
        made = call(member.keypairs.CreateKeypair, pb.CreateKeypairRequest(name=name))
        stored = made.keypair if ok(made) else None
    else:
        made = call(member.keypairs.ImportKeypair,
                    pb.ImportKeypairRequest(name=name, public_key=public_key))
        stored = made if ok(made) else None
    if stored is not None:
        try:
            listed = {k.name: k for k in member.keypairs.ListKeypairs(pb.ListKeypairsRequest()).keypairs}
            assert listed[name] == stored
            assert stored.name == name
        finally:
            member.keypairs.DeleteKeypair(pb.DeleteKeypairRequest(name=name))


@given(name=NAMES, policy=mostly(st.sampled_from(
    ["affinity", "anti-affinity", "soft-affinity", "soft-anti-affinity"])))
@PROPERTY
def test_server_groups(fuzz, name, policy):
    _, _, _, member = fuzz
    made = call(member.groups.CreateServerGroup, pb.CreateServerGroupRequest(name=name, policy=policy))
    if ok(made):
        try:
            got = member.groups.GetServerGroup(pb.GetServerGroupRequest(name=name))
            assert (got.name, got.policy) == (name, policy)
        finally:
            member.groups.DeleteServerGroup(pb.DeleteServerGroupRequest(name=name))


# ------------------------------------------------------------------ admin: flavors, identity, quota

@given(name=NAMES, vcpus=mostly(st.integers(1, 8), INT32),
       memory_mb=mostly(st.integers(64, 4096), INT32), disk_gb=mostly(st.integers(1, 40), INT32),
       public=st.booleans(), projects=mostly(st.just([]), st.lists(NASTY_TEXT, max_size=2)),
       traits=mostly(st.just([]), st.lists(FREE_TEXT, max_size=2)),
       zone=mostly(st.just(""), FREE_TEXT))
@PROPERTY
def test_create_flavor(fuzz, name, vcpus, memory_mb, disk_gb, public, projects, traits, zone):
    _, admin, _, _ = fuzz
    flavor = pb.Flavor(name=name, vcpus=vcpus, memory_mb=memory_mb, disk_gb=disk_gb, public=public,
                       projects=projects, required_traits=traits, zone=zone)
    made = call(admin.flavors.CreateFlavor, pb.CreateFlavorRequest(flavor=flavor))
    if ok(made):
        try:
            got = admin.flavors.GetFlavor(pb.GetFlavorRequest(name=name))
            assert got == made
            assert (got.name, got.vcpus, got.memory_mb, got.disk_gb) == (name, vcpus, memory_mb, disk_gb)
            assert got.vcpus > 0 and got.memory_mb > 0 and got.disk_gb > 0
            if public:  # an accepted flavor is usable: no INTERNAL from what it makes
                _, _, _, member = fuzz
                created = call(member.instances.CreateInstance,
                               pb.CreateInstanceRequest(name=f"fl-{uuid.uuid4().hex[:8]}", flavor=name))
                call(member.quotas.GetQuota, ipb.GetQuotaRequest())
                call(member.instances.ListInstances, pb.ListInstancesRequest())
                call(admin.hosts.GetCapacity, pb.GetCapacityRequest(flavor=name))
                call(admin.hosts.ListHosts, pb.ListHostsRequest())
                if ok(created):
                    delete_instances(member, [created.id])
                    assert member.wait_gone(created.id, 30)
        finally:
            admin.flavors.DeleteFlavor(pb.DeleteFlavorRequest(name=name))


@given(name=NAMES, description=FREE_TEXT, user=NAMES, password=FREE_TEXT,
       role=mostly(st.sampled_from(["member", "reader", "admin", ""])))
@PROPERTY
def test_create_project_and_user(fuzz, name, description, user, password, role):
    _, admin, _, _ = fuzz
    project = call(admin.identity.CreateProject,
                   ipb.CreateProjectRequest(name=name, description=description))
    made_user = None
    try:
        if ok(project):
            listed = {p.name: p for p in admin.identity.ListProjects(ipb.ListProjectsRequest()).projects}
            assert (listed[name].name, listed[name].description) == (name, description)
        made_user = call(admin.identity.CreateUser, ipb.CreateUserRequest(
            name=user, password=password, project=name, role=role))
        if ok(made_user):
            assert made_user.user.name == user
            assert [(r.project, r.role) for r in made_user.user.roles] == [(name, role or "member")]
            if password:
                client = login_as(fuzz[0], user, password, name)
                assert client.identity.WhoAmI(ipb.WhoAmIRequest()).username == user
    finally:
        if made_user is not None and ok(made_user):
            admin.identity.DeleteUser(ipb.DeleteUserRequest(name=user))
        if ok(project):
            admin.identity.DeleteProject(ipb.DeleteProjectRequest(name=name))


def login_as(cloud, user, password, project):
    from tests.conftest import ApiClient
    client = ApiClient(cloud.endpoint)
    client.login(user, password, project)
    return client


@given(project=st.one_of(st.just(None), NASTY_TEXT), instances=st.one_of(st.none(), INT32),
       vcpus=st.one_of(st.none(), INT32), memory_mb=st.one_of(st.none(), INT32),
       disk_gb=st.one_of(st.none(), INT32))
@PROPERTY
def test_set_quota(fuzz, project, instances, vcpus, memory_mb, disk_gb):
    _, admin, tenant, _ = fuzz
    scratch = "fuzz-quota"
    if project is None:
        project = scratch
        call(admin.identity.CreateProject, ipb.CreateProjectRequest(name=scratch))
    given_values = {k: v for k, v in dict(instances=instances, vcpus=vcpus, memory_mb=memory_mb,
                                          disk_gb=disk_gb).items() if v is not None}
    before = call(admin.quotas.GetQuota, ipb.GetQuotaRequest(project=project))
    done = call(admin.quotas.SetQuota, ipb.SetQuotaRequest(project=project, **given_values))
    after = call(admin.quotas.GetQuota, ipb.GetQuotaRequest(project=project))
    if ok(done):
        for k, v in given_values.items():
            assert getattr(after.limits, k) == v
    elif ok(before):
        assert after.limits == before.limits, "a refused SetQuota changed the limits"


# ------------------------------------------------------------------ images

@given(name=NAMES, disk_format=mostly(st.just("raw")),
       os=mostly(st.just("linux"), FREE_TEXT), visibility=mostly(st.sampled_from(["private", ""])),
       min_disk_gb=mostly(st.integers(0, 2), INT32), min_memory_mb=mostly(st.integers(0, 256), INT32),
       cmdline=mostly(st.just(""), FREE_TEXT),
       parts=st.one_of(st.just([("disk", b"\0" * 512)]), st.lists(st.tuples(
           mostly(st.sampled_from(["disk", "kernel", "initrd"])), st.binary(max_size=600)),
           max_size=3)),
       info_again=st.booleans())
@PROPERTY
def test_create_image(fuzz, name, disk_format, os, visibility, min_disk_gb, min_memory_mb,
                      cmdline, parts, info_again):
    _, _, _, member = fuzz
    info = pb.ImageInfo(name=name, disk_format=disk_format, os=os, visibility=visibility,
                        min_disk_gb=min_disk_gb, min_memory_mb=min_memory_mb, cmdline=cmdline)
    messages = [pb.ImageUpload(info=info)]
    messages += [pb.ImageUpload(data=pb.ImageData(part=p, chunk=c)) for p, c in parts]
    if info_again:
        messages.append(pb.ImageUpload(info=info))
    allowed = {C.PERMISSION_DENIED} if visibility == "public" else set()
    made = call(member.images.CreateImage, iter(messages), allowed)
    if ok(made):
        try:
            got = member.images.GetImage(pb.GetImageRequest(id_or_name=made.id))
            assert got == made
            assert (got.name, got.disk_format, got.cmdline) == (name, disk_format, cmdline)
            assert got.min_disk_gb >= 0 and got.min_memory_mb >= 0
        finally:
            member.images.DeleteImage(pb.DeleteImageRequest(id_or_name=made.id))


# ------------------------------------------------------------------ scaling groups

@given(name=NAMES, min_size=SMALL_OR_HUGE, max_size=SMALL_OR_HUGE, desired=SMALL_OR_HUGE,
       flavor=mostly(st.just("tiny")),
       sg_policy=mostly(st.sampled_from(["", "soft-anti-affinity", "soft-affinity"])),
       metric=mostly(st.sampled_from(["", "cpu_utilisation"])),
       target=st.one_of(st.sampled_from([0.0, 50.0, -1.0, float("nan"), float("inf"), 1e308]),
                        st.floats()),
       cooldown=INT32, new_desired=SMALL_OR_HUGE)
@FEW
def test_scaling_groups(fuzz, name, min_size, max_size, desired, flavor, sg_policy, metric,
                        target, cooldown, new_desired):
    _, _, _, member = fuzz
    policy = spb.TargetTrackingPolicy(metric=metric, target=target, scale_out_cooldown_s=cooldown,
                                      scale_in_cooldown_s=cooldown) if metric else None
    made = call(member.scaling_groups.CreateScalingGroup, spb.CreateScalingGroupRequest(
        name=name, flavor=flavor, min_size=min_size, max_size=max_size, desired=desired,
        server_group_policy=sg_policy, policy=policy, request_id=uuid.uuid4().hex))
    if ok(made):
        try:
            got = member.scaling_groups.GetScalingGroup(spb.GetScalingGroupRequest(name=name))
            assert (got.name, got.flavor, got.min_size, got.max_size) == (name, flavor, min_size,
                                                                          max_size)
            assert 0 <= got.min_size <= got.desired <= got.max_size
            call(member.scaling_groups.SetDesired, spb.SetDesiredRequest(name=name,
                                                                        desired=new_desired))
            got = member.scaling_groups.GetScalingGroup(spb.GetScalingGroupRequest(name=name))
            assert got.min_size <= got.desired <= got.max_size
        finally:
            call(member.scaling_groups.DeleteScalingGroup,
                 spb.DeleteScalingGroupRequest(name=name, request_id=uuid.uuid4().hex))


# ------------------------------------------------------------------ usage, events

@given(start=st.one_of(st.none(), TIMESTAMPS), end=st.one_of(st.none(), TIMESTAMPS),
       project=st.one_of(st.just(""), NASTY_TEXT), page_size=INT32, page_token=NASTY_TEXT,
       instance_id=st.one_of(st.just(""), GARBAGE_IDS))
@PROPERTY
def test_usage_queries(fuzz, start, end, project, page_size, page_token, instance_id):
    _, _, _, member = fuzz
    usage = usage_pb2_grpc.UsageServiceStub(member.channel)
    call(usage.GetProjectUsage, upb.GetProjectUsageRequest(project=project, start=start,
                                                                  end=end))
    call(usage.ListUsageRecords, upb.ListUsageRecordsRequest(
        project=project, start=start, end=end, instance_id=instance_id, include_open=True,
        page_size=page_size, page_token=page_token))


@given(after_revision=st.one_of(st.sampled_from([0, -1, 1, 2**62, -(2**63), 2**63 - 1]),
                                st.integers(-(2**63), 2**63 - 1)),
       after_index=st.one_of(st.none(), INT32), kinds=st.lists(INT32, max_size=3),
       instance_id=st.one_of(st.just(""), GARBAGE_IDS), project=st.one_of(st.just(""), NASTY_TEXT),
       include_existing=st.booleans())
@PROPERTY
def test_watch(fuzz, after_revision, after_index, kinds, instance_id, project, include_existing):
    _, _, _, member = fuzz
    request = epb.WatchRequest(after_revision=after_revision, kinds=kinds, instance_id=instance_id,
                               project=project, include_existing=include_existing)
    if after_index is not None:
        request.after_index = after_index
    stream = member.events.Watch(request, timeout=1.5)
    try:
        for _ in stream:
            pass
    except grpc.RpcError as exc:
        note(f"Watch -> {exc.code().name}: {exc.details()[:300]}")
        assert exc.code() in CLIENT_ERRORS | {C.OUT_OF_RANGE, C.DEADLINE_EXCEEDED}, (
            f"{exc.code().name}: {exc.details()[:500]}")
    finally:
        stream.cancel()


# ------------------------------------------------------------------ gets and deletes of garbage ids

@given(garbage=GARBAGE_IDS)
@PROPERTY
def test_garbage_ids(fuzz, garbage):
    _, admin, _, member = fuzz
    if garbage in ("target",):
        return
    m, a = member, admin
    for rpc, request in [
        (m.instances.GetInstance, pb.GetInstanceRequest(id_or_name=garbage)),
        (m.instances.GetInstanceStats, pb.GetInstanceRequest(id_or_name=garbage)),
        (m.instances.GetConsoleOutput, pb.GetConsoleOutputRequest(id_or_name=garbage)),
        (m.instances.ListInstanceActions, pb.ListInstanceActionsRequest(id_or_name=garbage)),
        (m.instances.DeleteInstance, pb.DeleteInstanceRequest(id_or_name=garbage)),
        (m.instances.StopInstance, pb.InstanceOperationRequest(id_or_name=garbage)),
        (m.flavors.GetFlavor, pb.GetFlavorRequest(name=garbage)),
        (m.images.GetImage, pb.GetImageRequest(id_or_name=garbage)),
        (m.images.DeleteImage, pb.DeleteImageRequest(id_or_name=garbage)),
        (m.groups.GetServerGroup, pb.GetServerGroupRequest(name=garbage)),
        (m.groups.DeleteServerGroup, pb.DeleteServerGroupRequest(name=garbage)),
        (m.keypairs.DeleteKeypair, pb.DeleteKeypairRequest(name=garbage)),
        (m.scaling_groups.GetScalingGroup, spb.GetScalingGroupRequest(name=garbage)),
        (m.scaling_groups.SetDesired, spb.SetDesiredRequest(name=garbage, desired=1)),
        (m.metrics.GetInstanceMetrics, spb.GetInstanceMetricsRequest(id_or_name=garbage)),
        (m.metrics.GetGroupMetrics, spb.GetGroupMetricsRequest(name=garbage)),
        (m.quotas.GetQuota, ipb.GetQuotaRequest(project=garbage or "x")),
        (a.flavors.DeleteFlavor, pb.DeleteFlavorRequest(name=garbage)),
        (a.hosts.GetHost, pb.GetHostRequest(name=garbage)),
        (a.hosts.GetCapacity, pb.GetCapacityRequest(flavor=garbage)),
        (a.identity.DeleteProject, ipb.DeleteProjectRequest(name=garbage)),
        (a.identity.DeleteUser, ipb.DeleteUserRequest(name=garbage)),
        (a.identity.RevokeUserTokens, ipb.RevokeUserTokensRequest(username=garbage)),
        (a.identity.AddRole, ipb.RoleRequest(username=garbage, project=garbage, role="member")),
        (a.hosts.DeleteAggregate, pb.DeleteAggregateRequest(name=garbage)),
    ]:
        result = call(rpc, request)
        assert not ok(result) or garbage == "", f"{rpc!r} found {garbage!r}"


# ------------------------------------------------------------------ domain XML (real libvirt)

# Every example starts a real guest (up to its domain's definition, then deletes it:
# measured 2-3.5 s an example); EXAMPLES // 4 of them (6 by default): ~20 s.
XML_NAMES = st.one_of(VALID_NAMES, st.sampled_from(["..", "-", "_.-", "a" * 63, "x.y_z-0"]))
XML_USER_DATA = st.sampled_from([b"", b"<domain><name>evil</name></domain>]]>\x00",
                                 b"</metadata><name>evil</name>&amp;", b"\x00" * 300])


@pytest.mark.parametrize("name", ["x<y", "a&b", "<name>x</name>", "]]>", "a'b", 'a"b'])
def test_names_with_xml_metacharacters_are_refused_before_any_domain(api, name):
    with pytest.raises(grpc.RpcError) as refused:
        api.instances.CreateInstance(pb.CreateInstanceRequest(name=name, flavor="small"),
                                     timeout=TIMEOUT_S)
    assert refused.value.code() == C.INVALID_ARGUMENT, refused.value.details()
    assert name not in [i.name for i in api.instances.ListInstances(
        pb.ListInstancesRequest()).instances]


@given(name=XML_NAMES, user_data=XML_USER_DATA)
@settings(PROPERTY, max_examples=max(3, EXAMPLES // 4))
def test_domain_xml_has_one_name_the_instance_id(api, name, user_data):
    import libvirt
    from lxml import etree

    name = f"{name[:50]}-{uuid.uuid4().hex[:6]}"  # unique in the session's demo project
    created = call(api.instances.CreateInstance, pb.CreateInstanceRequest(
        name=name, flavor="small", user_data=user_data))
    assert ok(created), f"a valid name {name!r} was refused: {created}"
    conn = libvirt.open("qemu:///system")
    try:
        def defined():
            try:
                return conn.lookupByUUIDString(created.id).XMLDesc()
            except libvirt.libvirtError:
                status = api.instances.GetInstance(pb.GetInstanceRequest(id_or_name=created.id))
                assert status.status != "ERROR", status.fault.message
                return None
        xml = until(defined, 10, "the domain's definition", every_s=0.2)  # measured 0.2-0.9 s
        root = etree.fromstring(xml.encode())
        names = root.findall(".//name")
        assert [n.text for n in root.findall("name")] == [created.id]
        assert all(n.getparent().tag != "domain" or n.text == created.id for n in names)
        texts = [e for e in root.iter() if e.text and name in e.text]
        assert texts and all(
            any(a.tag == "metadata" for a in e.iterancestors()) for e in texts), xml
        assert b"evil" not in xml.encode()
    finally:
        conn.close()
        delete_instances(api, [created.id])
        api.wait_gone(created.id)
