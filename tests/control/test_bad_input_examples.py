"""One plain example for each bad input the property tests
(test_bad_input_properties.py) found answered with INTERNAL, or with gRPC's own
RESOURCE_EXHAUSTED: each now gets a clear client error and changes nothing."""

import grpc
import pytest
from cloudapi.v1 import compute_pb2 as pb
from cloudapi.v1 import identity_pb2 as ipb
from cloudapi.v1 import usage_pb2 as upb
from google.protobuf.timestamp_pb2 import Timestamp

from control import errors
from control.api.interceptors import MAX_ERROR_CHARS, bounded
from control.store.etcd import Txn


def code_and_details(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), caught.value.details()


@pytest.mark.parametrize("end", [Timestamp(seconds=253_402_300_800),     # year 10000
                                 Timestamp(seconds=0, nanos=-1),
                                 Timestamp(seconds=-62_135_596_801)])   # before year 1
def test_usage_period_outside_what_a_timestamp_holds_is_invalid(api, end):
    usage = api.usage
    code, details = code_and_details(lambda: usage.GetProjectUsage(upb.GetProjectUsageRequest(end=end)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "invalid end" in details
    code, _ = code_and_details(lambda: usage.ListUsageRecords(upb.ListUsageRecordsRequest(start=end)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("garbage", ["é" * 5000, "\U0001f600" * 3000, "x" * 10_000])
def test_error_messages_echoing_long_input_are_cut(api, garbage):
    # The message quoted the whole id: past gRPC's 8 KiB metadata limit the client
    # got RESOURCE_EXHAUSTED "received metadata size exceeds ..." instead of NOT_FOUND.
    # Now an id is at most 64 characters (control/api/limits.py): refused before
    # it is looked up, its size named, not echoed.
    code, details = code_and_details(
        lambda: api.instances.GetInstance(pb.GetInstanceRequest(id_or_name=garbage)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details == f"id_or_name is {len(garbage)} characters; at most 64"
    # What still echoes input is cut all the same.
    cut = bounded(f"instance {garbage!r} not found")
    assert len(cut) < MAX_ERROR_CHARS + 40 and cut.endswith("characters)")


@pytest.mark.parametrize("change", [{"zone": "z" * 1_600_000}, {"zone": "a zone"},
                                    {"required_traits": ["<ssd>"]}, {"forbidden_traits": [""]}])
def test_flavor_zone_and_traits_are_names(admin, change):
    flavor = pb.Flavor(name="bad-zone", vcpus=1, memory_mb=128, disk_gb=1, **change)
    code, _ = code_and_details(lambda: admin.flavors.CreateFlavor(pb.CreateFlavorRequest(flavor=flavor)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, _ = code_and_details(lambda: admin.flavors.GetFlavor(pb.GetFlavorRequest(name="bad-zone")))
    assert code == grpc.StatusCode.NOT_FOUND


def test_project_description_and_password_are_bounded(admin):
    code, details = code_and_details(lambda: admin.identity.CreateProject(ipb.CreateProjectRequest(
        name="long-description", description="d" * 2_000_000)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "at most 1024" in details
    assert "long-description" not in [p.name for p in admin.identity.ListProjects(
        ipb.ListProjectsRequest()).projects]
    code, details = code_and_details(lambda: admin.identity.CreateUser(ipb.CreateUserRequest(
        name="long-password", password="p" * 1025, project="demo")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "at most 1024" in details


def test_a_write_over_etcds_request_limit_is_invalid_not_internal(store):
    # etcd answers its own INVALID_ARGUMENT ("request is too large"): the
    # request's fault, so InvalidArgument, and the endpoint is not marked failed.
    with pytest.raises(errors.InvalidArgument, match="too large"):
        store.commit(Txn().put("/test/too-large", {"x": "y" * 2_000_000}))
    assert store.get("/test/too-large") is None
    store.ping()
