"""List RPCs paginate: page_size / page_token -> next_page_token, the same items in
the same order as one unpaged call, and a bad token is INVALID_ARGUMENT. On a
fake-driver cloud (this is about the API, not guests)."""

from __future__ import annotations

import base64
import uuid

import grpc
import pytest
from cloudapi.v1 import compute_pb2 as pb
from cloudapi.v1 import identity_pb2 as ipb

from tests.conftest import login
from tests.control.conftest import delete_all_instances
from tests.control.test_quota import new_tenant


@pytest.fixture(scope="module")
def paging_cloud(fake_cloud_and_store):
    """The shared fake-driver cloud (tests/control/conftest.py), a project of its own."""
    cloud, _ = fake_cloud_and_store
    admin = login(cloud, "admin")
    _, tenant = new_tenant(cloud, admin, instances=10, vcpus=20, memory_mb=-1, disk_gb=-1)
    yield cloud, admin, tenant
    delete_all_instances(tenant)


def walk(rpc, request_type, field: str, page_size: int, **fields) -> tuple[list, int]:
    """Every item through pages of page_size; and how many pages it took."""
    items, token, pages = [], "", 0
    while True:
        response = rpc(request_type(page_size=page_size, page_token=token, **fields))
        pages += 1
        page = list(getattr(response, field))
        assert len(page) <= page_size
        items += page
        token = response.next_page_token
        if not token:
            return items, pages
        assert len(page) == page_size
        assert pages < 1000


def same_in_pages(rpc, request_type, field: str, key, **fields) -> list:
    everything = list(getattr(rpc(request_type(**fields)), field))
    for size in (1, 2, len(everything) + 1):
        paged, pages = walk(rpc, request_type, field, size, **fields)
        assert [key(i) for i in paged] == [key(i) for i in everything], size
        assert pages == max(1, -(-len(everything) // size)), (size, pages)
    return everything


def test_lists_page_like_one_call(paging_cloud, tmp_path):
    _, admin, tenant = paging_cloud
    tenant.instances.CreateInstances(pb.CreateInstancesRequest(name="pg", flavor="tiny", count=5))
    vm = tenant.instances.CreateInstance(pb.CreateInstanceRequest(name="pg-x", flavor="tiny"))
    disk = tmp_path / "d.raw"
    disk.write_bytes(b"\0" * 4096)
    for n in range(3):
        tenant.upload_image(pb.ImageInfo(name=f"img-{n}", disk_format="raw"), disk)
    for n in range(3):
        tenant.keypairs.CreateKeypair(pb.CreateKeypairRequest(name=f"key-{n}"))
        tenant.groups.CreateServerGroup(pb.CreateServerGroupRequest(name=f"grp-{n}",
                                                                     policy="anti-affinity"))
    tenant.instances.RenameInstance(pb.RenameInstanceRequest(id_or_name=vm.id, name="pg-y"))
    tenant.instances.RenameInstance(pb.RenameInstanceRequest(id_or_name=vm.id, name="pg-z"))

    instances = same_in_pages(tenant.instances.ListInstances, pb.ListInstancesRequest, "instances",
                              lambda i: i.id)
    assert len(instances) == 6
    assert len(same_in_pages(tenant.images.ListImages, pb.ListImagesRequest, "images",
                             lambda i: i.id)) >= 4
    assert len(same_in_pages(tenant.flavors.ListFlavors, pb.ListFlavorsRequest, "flavors",
                             lambda f: f.name)) >= 4
    assert len(same_in_pages(tenant.keypairs.ListKeypairs, pb.ListKeypairsRequest, "keypairs",
                             lambda k: k.name)) == 3
    assert len(same_in_pages(tenant.groups.ListServerGroups, pb.ListServerGroupsRequest, "groups",
                             lambda g: g.name)) == 3
    actions = same_in_pages(tenant.instances.ListInstanceActions, pb.ListInstanceActionsRequest,
                            "actions", lambda a: (a.action, a.start.ToNanoseconds()),
                            id_or_name=vm.id)
    assert [a.action for a in actions] == ["create", "rename", "rename"]
    assert len(same_in_pages(admin.identity.ListProjects, ipb.ListProjectsRequest, "projects",
                             lambda p: p.name)) >= 3
    assert len(same_in_pages(admin.identity.ListUsers, ipb.ListUsersRequest, "users",
                             lambda u: u.name)) >= 3
    same_in_pages(admin.hosts.ListHosts, pb.ListHostsRequest, "hosts", lambda h: h.name)
    # Aggregates are cloud-wide, and the cloud is shared: names of this test's own.
    aggregates = [f"agg-{uuid.uuid4().hex[:6]}" for _ in range(2)]
    for name in aggregates:
        admin.hosts.CreateAggregate(pb.CreateAggregateRequest(
            aggregate=pb.Aggregate(name=name, traits=["ssd"])))
    listed = same_in_pages(admin.hosts.ListAggregates, pb.ListAggregatesRequest, "aggregates",
                           lambda a: a.name)
    assert sorted(a.name for a in listed if a.name in aggregates) == sorted(aggregates)
    for name in aggregates:
        admin.hosts.DeleteAggregate(pb.DeleteAggregateRequest(name=name))


def test_pages_neither_repeat_nor_skip_when_the_list_changes(paging_cloud):
    _, _, tenant = paging_cloud
    names = [f"kp-{uuid.uuid4().hex[:6]}" for _ in range(4)]
    for name in names:
        tenant.keypairs.CreateKeypair(pb.CreateKeypairRequest(name=name))
    first = tenant.keypairs.ListKeypairs(pb.ListKeypairsRequest(page_size=2))
    seen = [k.name for k in first.keypairs]
    # One already seen goes away, one not yet seen goes away, a new one comes.
    gone = next(n for n in names if n not in seen)
    tenant.keypairs.DeleteKeypair(pb.DeleteKeypairRequest(name=seen[0]))
    tenant.keypairs.DeleteKeypair(pb.DeleteKeypairRequest(name=gone))
    tenant.keypairs.CreateKeypair(pb.CreateKeypairRequest(name="zz-new"))
    rest = [k.name for k in tenant.keypairs.ListKeypairs(pb.ListKeypairsRequest(
        page_size=1000, page_token=first.next_page_token)).keypairs]
    assert not set(rest) & set(seen)
    assert gone not in rest and "zz-new" in rest
    everything = [k.name for k in tenant.keypairs.ListKeypairs(pb.ListKeypairsRequest()).keypairs]
    assert [n for n in everything if n > seen[-1]] == rest


def test_bad_page_requests_are_invalid(paging_cloud):
    _, _, tenant = paging_cloud
    flavors = tenant.flavors.ListFlavors(pb.ListFlavorsRequest(page_size=1))
    assert flavors.next_page_token
    nested = base64.urlsafe_b64encode(b"[" * 100_000).decode()  # RecursionError in json
    # Past 1024 characters the request limits refuse it (control/api/limits.py);
    # under them, paging's own decoding does (nested[:1000]).
    for bad in ("garbage!", "e30", flavors.next_page_token[:-3] + "xyz", nested, nested[:4000],
                nested[:1000]):
        with pytest.raises(grpc.RpcError) as info:
            tenant.instances.ListInstances(pb.ListInstancesRequest(page_size=1, page_token=bad))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad[:40]
        details = info.value.details()
        assert "invalid page_token" in details or "page_token is" in details, details
    # A token of another list.
    with pytest.raises(grpc.RpcError) as info:
        tenant.images.ListImages(pb.ListImagesRequest(page_size=1,
                                                      page_token=flavors.next_page_token))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        tenant.flavors.ListFlavors(pb.ListFlavorsRequest(page_size=-1))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
