"""An instance whose host's record is gone (the host was removed while its agent
is down): reading its console or stats is NOT_FOUND naming why, not INTERNAL."""

import grpc
import pytest
from cloudapi.v1 import compute_pb2 as pb

from control.store import keys
from control.store.etcd import Txn
from tests.conftest import login, start_cloud, stop_cloud


def test_console_and_stats_of_an_instance_on_a_removed_host_are_not_found():
    cloud, store = start_cloud("host-gone", agent_settings={"driver": "fake"},
                               control_settings={"reconciler_enabled": False})
    try:
        api = login(cloud)
        created = api.instances.CreateInstance(pb.CreateInstanceRequest(name="orphan", flavor="tiny"))
        assert api.wait_status(created.id, {"ACTIVE", "ERROR"}, 30).status == "ACTIVE"
        cloud.procs.stop("agent")  # else it registers again at its next heartbeat
        store.commit(Txn().delete(keys.host(cloud.host_name)))
        for call in (lambda: api.instances.GetConsoleOutput(pb.GetConsoleOutputRequest(id_or_name="orphan")),
                     lambda: api.instances.GetInstanceStats(pb.GetInstanceRequest(id_or_name="orphan"))):
            with pytest.raises(grpc.RpcError) as info:
                call()
            assert info.value.code() == grpc.StatusCode.NOT_FOUND, info.value.details()
            assert "host of instance 'orphan' is gone" in info.value.details()
    finally:
        stop_cloud(cloud, "host-gone")
