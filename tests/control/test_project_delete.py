"""Deleting a project (issue 15): it refuses while the project owns instances,
images or scaling groups, naming them; it deletes everything else the project
has; and a project created again under the same name sees nothing of the old
one: not its images, keypairs, groups or usage, and not its events, neither by
resuming a Watch from a revision of the old project's life nor through a
stream the old project's reader left open.

On a fake-driver cloud (no guests boot): each test makes its own projects."""

from __future__ import annotations

import threading
import uuid

import grpc
import pytest
from cloudapi.v1 import compute_pb2 as pb
from cloudapi.v1 import events_pb2 as epb
from cloudapi.v1 import identity_pb2 as ipb
from cloudapi.v1 import scaling_pb2 as spb
from cloudapi.v1 import usage_pb2 as upb

from control.errors import InvalidTransition
from control.identity.accounts import Identity
from control.store import keys
from control.store.etcd import Txn
from tests.conftest import ApiClient, login, make_store, until
from tests.control.test_events import Watcher, describe, idle
from tests.control.test_quota import new_tenant

Event = epb.Event
FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
ROOMY = {"instances": 4, "vcpus": 8, "memory_mb": -1, "disk_gb": -1}


@pytest.fixture(scope="module")
def pd_cloud(fake_cloud_and_store):
    """The shared fake-driver cloud (tests/control/conftest.py): each test makes its own projects."""
    cloud, store = fake_cloud_and_store
    return cloud, store, login(cloud, "admin")


def refused(call) -> str:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    assert caught.value.code() == FAILED_PRECONDITION, caught.value.details()
    return caught.value.details()


def delete_project(admin, project: str):
    return admin.identity.DeleteProject(ipb.DeleteProjectRequest(name=project))


def user_of(cloud, admin, project: str, role: str) -> ApiClient:
    """A new user with `role` in `project`, logged in."""
    name, password = f"{project}-{role}", "pw-" + uuid.uuid4().hex
    admin.identity.CreateUser(ipb.CreateUserRequest(name=name, password=password,
                                                    project=project, role=role))
    client = ApiClient(cloud.endpoint)
    client.login(name, password, project)
    client.password = password
    return client


def again(cloud, admin, project: str, username: str, password: str, role: str) -> ApiClient:
    """An existing user given `role` in the (re-created) project, logged in there."""
    admin.identity.AddRole(ipb.RoleRequest(username=username, project=project, role=role))
    client = ApiClient(cloud.endpoint)
    client.login(username, password, project)
    return client


def leftovers(store, project: str) -> dict[str, list[str]]:
    """Every key a deleted project could leave behind, by kind (empty lists: none)."""
    found = {
        "project data": store.list(keys.project_data(project)),
        "image names": store.list(keys.image_names(project)),
        "images": [r for r in store.list(keys.images()) if r.value.get("project") == project],
        "scaling group index": store.list(keys.scaling_group_indexes_of(project)),
        "roles": [r for r in store.list(keys.roles()) if r.key.endswith(f"/{project}")],
        "tokens": [r for r in store.list(keys.tokens()) if r.value.get("project") == project],
        "quota": [r for k in (keys.quota_limits(project), keys.quota_usage(project))
                  if (r := store.get(k)) is not None],
    }
    return {kind: [r.key for r in records] for kind, records in found.items()}


def test_a_project_owning_an_image_or_a_scaling_group_is_not_deleted(pd_cloud, tmp_path):
    cloud, store, admin = pd_cloud
    project, member = new_tenant(cloud, admin, **ROOMY)
    disk = tmp_path / "disk.raw"
    disk.write_bytes(b"\0" * 2**20)
    image = member.upload_image(pb.ImageInfo(name="kept-image", disk_format="raw"), disk)
    member.scaling_groups.CreateScalingGroup(spb.CreateScalingGroupRequest(
        name="kept-group", flavor="tiny", min_size=0, max_size=1, desired=0))
    member.keypairs.CreateKeypair(pb.CreateKeypairRequest(name="a-key"))

    details = refused(lambda: delete_project(admin, project))
    assert "kept-image" in details and "kept-group" in details, details
    # Nothing was deleted: the project and all it has are as they were.
    assert store.get(keys.project(project)) is not None
    assert member.images.GetImage(pb.GetImageRequest(id_or_name="kept-image")).id == image.id
    assert [k.name for k in member.keypairs.ListKeypairs(pb.ListKeypairsRequest()).keypairs] \
        == ["a-key"]
    assert (cloud.root / "images" / image.id / "disk").exists()

    member.scaling_groups.DeleteScalingGroup(spb.DeleteScalingGroupRequest(name="kept-group"))
    until(lambda: not member.scaling_groups.ListScalingGroups(
        spb.ListScalingGroupsRequest()).groups, 30, "the scaling group's delete")
    details = refused(lambda: delete_project(admin, project))
    assert "kept-image" in details and "kept-group" not in details, details

    member.images.DeleteImage(pb.DeleteImageRequest(id_or_name=image.id))
    delete_project(admin, project)
    assert store.get(keys.project(project)) is None
    assert leftovers(store, project) == {kind: [] for kind in leftovers(store, project)}
    assert not (cloud.root / "images" / image.id).exists()


def test_a_project_created_again_sees_nothing_of_the_old_one(pd_cloud):
    cloud, store, admin = pd_cloud
    project, member = new_tenant(cloud, admin, **ROOMY)
    reader = user_of(cloud, admin, project, "reader")
    member.keypairs.CreateKeypair(pb.CreateKeypairRequest(name="old-key"))
    member.groups.CreateServerGroup(pb.CreateServerGroupRequest(name="old-group",
                                                                policy="anti-affinity"))
    before = store.revision()  # a revision of the old project's life
    old = member.instances.CreateInstance(pb.CreateInstanceRequest(name="old-vm", flavor="tiny"))
    assert idle(member, old.id).status == "ACTIVE"
    member.instances.DeleteInstance(pb.DeleteInstanceRequest(id_or_name=old.id))
    assert member.wait_gone(old.id)
    # The old project did have usage and events, so "none" below means something.
    assert member.usage.ListUsageRecords(upb.ListUsageRecordsRequest()).records
    replay = Watcher(reader, after_revision=before)
    replay.wait(lambda ev: any(e.type == Event.DELETED for e in ev), 30, "the old events")
    replay.stop()

    delete_project(admin, project)
    assert leftovers(store, project) == {kind: [] for kind in leftovers(store, project)}
    admin.identity.CreateProject(ipb.CreateProjectRequest(name=project))
    new_member = again(cloud, admin, project, f"{project}-user", "pw-" + project, "member")
    new_reader = again(cloud, admin, project, f"{project}-reader", reader.password, "reader")

    assert not [i for i in new_member.images.ListImages(pb.ListImagesRequest()).images
                if i.project == project]
    assert not new_member.keypairs.ListKeypairs(pb.ListKeypairsRequest()).keypairs
    assert not new_member.groups.ListServerGroups(pb.ListServerGroupsRequest()).groups
    assert not new_member.instances.ListInstances(pb.ListInstancesRequest()).instances
    assert not new_reader.usage.ListUsageRecords(upb.ListUsageRecordsRequest()).records
    usage = new_reader.usage.GetProjectUsage(upb.GetProjectUsageRequest())
    assert not usage.instances and usage.usage.total.instance_ms == 0
    quota = new_member.quotas.GetQuota(ipb.GetQuotaRequest()).usage
    assert (quota.instances, quota.vcpus) == (0, 0)

    # Resuming from a revision of the old project's life: nothing of it comes,
    # the new project's events do (the first of them ends the bounded wait).
    resumed = Watcher(new_reader, after_revision=before)
    snapshot = Watcher(new_reader, include_existing=True)
    snapshot.wait(lambda ev: ev, 30, "SYNCED")
    new = new_member.instances.CreateInstance(pb.CreateInstanceRequest(name="new-vm",
                                                                       flavor="tiny"))
    mine = lambda ev: any(e.instance.id == new.id for e in ev)  # noqa: E731
    events = resumed.wait(mine, 30, "the new instance's CREATED")
    existing = snapshot.wait(mine, 30, "the new instance's CREATED")
    for watcher in (resumed, snapshot):
        watcher.stop()
    seen = {e.instance.id for e in [*events, *existing] if e.kind == Event.INSTANCE}
    assert seen == {new.id}, [describe(e) for e in [*events, *existing]]
    assert existing[0].type == Event.SYNCED  # no EXISTING event: the old instance is not
    assert all(e.revision > before for e in events)
    idle(new_member, new.id)
    new_member.instances.DeleteInstance(pb.DeleteInstanceRequest(id_or_name=new.id))
    assert new_member.wait_gone(new.id)


def test_the_old_projects_stream_ends_and_sees_nothing_of_the_new_one(pd_cloud):
    cloud, store, admin = pd_cloud
    project, member = new_tenant(cloud, admin, **ROOMY)
    reader = user_of(cloud, admin, project, "reader")
    old_stream = Watcher(reader)  # left open across the delete
    old_stream.wait(lambda ev: ev, 30, "SYNCED")

    delete_project(admin, project)
    admin.identity.CreateProject(ipb.CreateProjectRequest(name=project))
    new_member = again(cloud, admin, project, f"{project}-user", "pw-" + project, "member")
    new = new_member.instances.CreateInstance(pb.CreateInstanceRequest(name="next-vm",
                                                                       flavor="tiny"))
    assert idle(new_member, new.id).status == "ACTIVE"
    # The stream ends at the first change of the new project it would have sent.
    old_stream.wait(lambda ev: old_stream.done.is_set(), 10, "the old stream's end")
    assert [Event.Type.Name(e.type) for e in old_stream.events] == ["SYNCED"], \
        [describe(e) for e in old_stream.events]
    assert old_stream.error is not None and old_stream.error.code() == grpc.StatusCode.NOT_FOUND
    new_member.instances.DeleteInstance(pb.DeleteInstanceRequest(id_or_name=new.id))
    assert new_member.wait_gone(new.id)


def test_an_upload_racing_with_the_delete_leaves_nothing(pd_cloud):
    cloud, store, admin = pd_cloud
    project, member = new_tenant(cloud, admin, **ROOMY)
    stored_before = {p.name for p in (cloud.root / "images").iterdir()}
    staging = cloud.root / "images" / ".staging"
    receiving, go_on = threading.Event(), threading.Event()

    def messages():
        yield pb.ImageUpload(info=pb.ImageInfo(name="racer", disk_format="raw"))
        yield pb.ImageUpload(data=pb.ImageData(part="disk", chunk=b"\0" * 2**16))
        receiving.set()
        go_on.wait(30)
        yield pb.ImageUpload(data=pb.ImageData(part="disk", chunk=b"\0" * 2**16))

    outcome: dict[str, object] = {}

    def upload():
        try:
            outcome["image"] = member.images.CreateImage(messages(), timeout=60)
        except grpc.RpcError as exc:
            outcome["error"] = exc

    uploader = threading.Thread(target=upload)
    uploader.start()
    assert receiving.wait(30)
    until(lambda: staging.exists() and any(staging.iterdir()), 10, "the upload's staging files")
    delete_project(admin, project)  # it owns no image yet: the upload is still under way
    go_on.set()
    uploader.join(60)

    assert "image" not in outcome, f"the upload survived its project's delete: {outcome['image']}"
    assert outcome["error"].code() == grpc.StatusCode.NOT_FOUND, outcome["error"].details()
    assert leftovers(store, project) == {kind: [] for kind in leftovers(store, project)}
    assert {p.name for p in (cloud.root / "images").iterdir()} == stored_before
    until(lambda: not any(staging.iterdir()), 10, "the staging files' removal")


def test_an_image_recorded_between_the_check_and_the_delete_refuses_it(pd_cloud):
    """The other order of the race: the upload commits after the delete looked
    for images and before the delete commits. The delete's transaction compares
    what it checked, so it fails, looks again, and names the image."""
    cloud, _, admin = pd_cloud
    project, _ = new_tenant(cloud, admin, **ROOMY)
    store = make_store(cloud)  # its commit is wrapped: the fixture's store stays as it is
    commit, raced = store.commit, []

    def commit_after_an_upload(txn: Txn) -> bool:
        if not raced:  # the upload's transaction lands first (as Images.create writes it)
            image_id = str(uuid.uuid4())
            raced.append(image_id)
            assert commit(Txn().put(keys.image_name(project, "late-image"), {"id": image_id})
                          .put(keys.image(image_id), {"id": image_id, "name": "late-image",
                                                      "project": project}))
        return commit(txn)

    store.commit = commit_after_an_upload
    try:
        with pytest.raises(InvalidTransition, match="late-image"):
            Identity(store).delete_project(project)
        assert store.get(keys.project(project)) is not None
    finally:
        if raced:
            commit(Txn().delete(keys.image(raced[0])).delete(keys.image_name(project, "late-image")))
        store.close()
    delete_project(admin, project)


def test_expect_empty_compares_a_whole_prefix(pd_cloud):
    _, store, _ = pd_cloud
    prefix = f"/test-empty/{uuid.uuid4().hex}/"
    assert store.commit(Txn().expect_empty(prefix).put(prefix + "a", {}))
    assert not store.commit(Txn().expect_empty(prefix).put(prefix + "b", {}))
    assert store.get(prefix + "b") is None
    # A key that only starts like the prefix is not under it.
    assert store.commit(Txn().expect_empty(prefix + "a/").put(prefix + "ab", {}))
    store.commit(Txn().delete_prefix(prefix))


def test_public_is_not_a_project_name(pd_cloud):
    """Private image names are indexed under their project's name and public
    ones under "public": a project of that name would share their namespace
    (and its delete could not tell its images' names from the public ones)."""
    _, _, admin = pd_cloud
    with pytest.raises(grpc.RpcError) as caught:
        admin.identity.CreateProject(ipb.CreateProjectRequest(name="public"))
        delete_project(admin, "public")  # (only if it was made)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert "reserved" in caught.value.details()
