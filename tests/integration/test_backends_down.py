"""etcd or Redis down: the API says which, with UNAVAILABLE, and no
half-written instance is left. Uses its own cloud, since it stops services."""

import grpc
import pytest
from cloudapi.v1 import compute_pb2 as pb

from control.store import keys
from tests.conftest import login, start_cloud, stop_cloud


@pytest.fixture(scope="module")
def faulty():
    cloud, store = start_cloud("faults")
    yield cloud, store, login(cloud)
    stop_cloud(cloud, "faults")


def instance_keys(store):
    return [r.key for r in store.list(keys.PREFIX + "/projects/")]


def test_redis_down_is_unavailable_and_writes_nothing(faulty):
    cloud, store, api = faulty
    before = instance_keys(store)
    cloud.procs.stop("redis")
    try:
        with pytest.raises(grpc.RpcError) as info:
            api.instances.CreateInstance(pb.CreateInstanceRequest(name="r1", flavor="tiny"))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "Redis" in info.value.details()
        assert instance_keys(store) == before
    finally:
        cloud.start_redis()
    # Once Redis is back, the same request goes through and is built.
    created = api.instances.CreateInstance(pb.CreateInstanceRequest(name="r1", flavor="tiny"))
    assert api.wait_status(created.id, {"ACTIVE", "ERROR"}, timeout_s=60).status == "ACTIVE"
    api.instances.DeleteInstance(pb.DeleteInstanceRequest(id_or_name=created.id))
    assert api.wait_gone(created.id)


def test_etcd_down_is_unavailable(faulty):
    cloud, store, api = faulty
    cloud.procs.stop("etcd")
    try:
        for call, request in [
            (api.instances.CreateInstance, pb.CreateInstanceRequest(name="e1", flavor="tiny")),
            (api.instances.ListInstances, pb.ListInstancesRequest()),
        ]:
            with pytest.raises(grpc.RpcError) as info:
                call(request, timeout=20)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "etcd" in info.value.details()
    finally:
        cloud.start_etcd()
    # The API uses etcd again as soon as it is back, and nothing was half-written.
    from localcloud.processes import wait_until

    def listed():
        return api.instances.ListInstances(pb.ListInstancesRequest(), timeout=5).instances
    wait_until(lambda: listed() is not None, 10, "the API using etcd again")
    assert "e1" not in [i.name for i in listed()]
