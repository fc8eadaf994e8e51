"""Bad requests get a clear error and change nothing."""

import grpc
import pytest
from cloudapi.v1 import compute_pb2 as pb

from control.store import keys


def project_keys(store) -> list[str]:
    return [r.key for r in store.list(keys.PREFIX + "/projects/")] + \
           [r.key for r in store.list(keys.PREFIX + "/instance-index/")]


def create_error(api, **fields) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        api.instances.CreateInstance(pb.CreateInstanceRequest(**fields))
    return info.value


def test_unknown_flavor_is_not_found_and_writes_nothing(api, store):
    before = project_keys(store)
    error = create_error(api, name="nf1", flavor="huge-xl")
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "huge-xl" in error.details()
    assert project_keys(store) == before


def test_unknown_image_is_not_found_and_writes_nothing(api, store):
    before = project_keys(store)
    error = create_error(api, name="nf2", flavor="small", image="no-such-image")
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "no-such-image" in error.details()
    assert project_keys(store) == before


@pytest.mark.parametrize("name", ["", "x" * 64, "web 1", "a</name><devices>", "semi;colon", "é"])
def test_bad_names_are_invalid_and_write_nothing(api, store, name):
    before = project_keys(store)
    error = create_error(api, name=name, flavor="small")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "name" in error.details()
    assert project_keys(store) == before


def test_63_character_name_is_fine(api):
    name = "n" * 63
    created = api.instances.CreateInstance(pb.CreateInstanceRequest(name=name, flavor="tiny"))
    assert created.name == name
    api.instances.DeleteInstance(pb.DeleteInstanceRequest(id_or_name=created.id))
    assert api.wait_gone(created.id)


def test_unknown_instance_is_not_found(api):
    for call, request in [
        (api.instances.GetInstance, pb.GetInstanceRequest(id_or_name="nobody")),
        (api.instances.DeleteInstance, pb.DeleteInstanceRequest(id_or_name="nobody")),
        (api.instances.GetConsoleOutput, pb.GetConsoleOutputRequest(id_or_name="nobody")),
        (api.instances.GetInstance,
         pb.GetInstanceRequest(id_or_name="5d9e2b1c-0000-4000-8000-000000000000")),
    ]:
        with pytest.raises(grpc.RpcError) as info:
            call(request)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_duplicate_name_is_refused(api):
    first = api.instances.CreateInstance(pb.CreateInstanceRequest(name="dup1", flavor="tiny"))
    try:
        error = create_error(api, name="dup1", flavor="tiny")
        assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    finally:
        api.instances.DeleteInstance(pb.DeleteInstanceRequest(id_or_name=first.id))
        assert api.wait_gone(first.id)
