"""Every RPC honours deadlines: a tiny deadline ends every public call with
DEADLINE_EXCEEDED at once, and a handler blocked on a hung or stopped etcd
ends within the store's etcd timeout (etcd_timeout_s), not later; the API's
retry loops stop once the caller's deadline has passed (control/deadlines.py)."""

from __future__ import annotations

import os
import re
import signal
import time
import uuid
from datetime import datetime

import grpc
import pytest
from cloudapi.v1 import (
    compute_pb2,
    events_pb2,
    identity_pb2,
    scaling_pb2,
    usage_pb2,
)
from cloudapi.v1 import compute_pb2 as pb

from control import deadlines, errors
from control.config import ControlConfig
from localcloud.processes import wait_until
from tests.conftest import login, start_cloud, stop_cloud

ETCD_TIMEOUT_S = ControlConfig.model_fields["etcd_timeout_s"].default
PUBLIC = [(compute_pb2, ["InstanceService", "FlavorService", "ImageService", "HostAdminService",
                         "ServerGroupService", "KeypairService"]),
          (identity_pb2, ["IdentityService", "QuotaService"]),
          (scaling_pb2, ["MetricsService", "ScalingGroupService"]),
          (usage_pb2, ["UsageService"]), (events_pb2, ["EventService"])]


@pytest.fixture(scope="module")
def deadline_cloud():
    cloud, store = start_cloud("deadline", agent_settings={"driver": "fake"})
    yield cloud, login(cloud, "admin")
    stop_cloud(cloud, "deadline")


def public_methods():
    """(path, request class, client streaming, server streaming) of every public RPC."""
    from google.protobuf import message_factory
    for module, services in PUBLIC:
        for service in services:
            for m in module.DESCRIPTOR.services_by_name[service].methods:
                yield (f"/{m.containing_service.full_name}/{m.name}",
                       message_factory.GetMessageClass(m.input_type),
                       m.client_streaming, m.server_streaming)


def test_every_public_rpc_with_a_tiny_deadline_ends_with_deadline_exceeded(deadline_cloud):
    cloud, _ = deadline_cloud
    client = login(cloud, "admin")  # its own token: the burst includes Logout
    seen = {}
    for path, request_class, client_streaming, server_streaming in public_methods():
        kind = ("stream_" if client_streaming else "unary_") + ("stream" if server_streaming else "unary")
        rpc = getattr(client.channel, kind)(path, request_serializer=request_class.SerializeToString,
                                            response_deserializer=lambda b: b)
        request = iter([request_class()]) if client_streaming else request_class()
        started = time.monotonic()
        try:
            result = rpc(request, timeout=0.001)
            if server_streaming:
                list(result)
            code = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            code = exc.code()
        elapsed = time.monotonic() - started
        seen[path] = code
        assert elapsed < 1.0, f"{path} took {elapsed:.2f}s with a 1 ms deadline"
        # A status other than DEADLINE_EXCEEDED can only have come within the 1 ms.
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED or elapsed < 0.01, (path, code)
    assert len(seen) >= 60, sorted(seen)
    print(f"{len(seen)} public RPCs, {sum(c == grpc.StatusCode.DEADLINE_EXCEEDED for c in seen.values())}"
          " ended with DEADLINE_EXCEEDED")
    # The server is fine afterwards.
    admin = login(cloud, "admin")
    admin.instances.ListInstances(pb.ListInstancesRequest(), timeout=10)


def api_log_time(cloud, request_id: str, timeout_s: float = 10) -> tuple[float, str]:
    """When the API logged the end of the call `request_id`, and its status."""
    pattern = re.compile(rf"^(\S+ \S+) \w+ control\.api req={request_id} \S+ -> (\w+)", re.M)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = pattern.search((cloud.root / "logs" / "api.log").read_text(errors="replace"))
        if found:
            at = datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            return at, found.group(2)
        time.sleep(0.1)
    raise AssertionError(f"request {request_id} never ended in the API's log")


def list_with(client, timeout_s: float) -> tuple[grpc.StatusCode, float, float, str]:
    request_id = uuid.uuid4().hex[:12]
    wall, started = time.time(), time.monotonic()
    try:
        client.instances.ListInstances(pb.ListInstancesRequest(), timeout=timeout_s,
                                       metadata=[("x-request-id", request_id)])
        code = grpc.StatusCode.OK
    except grpc.RpcError as exc:
        code = exc.code()
    return code, time.monotonic() - started, wall, request_id


def test_a_handler_blocked_on_a_hung_etcd_ends_within_the_etcd_timeout(deadline_cloud):
    cloud, admin = deadline_cloud
    pid = cloud.procs.pid("etcd")
    os.kill(pid, signal.SIGSTOP)  # etcd hangs: connections stay open, nothing answers
    try:
        # The client's deadline ends the call for the client, on time...
        code, elapsed, wall, request_id = list_with(admin, 2)
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED and 1.9 < elapsed < 2.5, (code, elapsed)
        # ...and the server's handler is not left hanging: the store's etcd
        # timeout ends it, with UNAVAILABLE (logged to nobody: the client left).
        ended, status = api_log_time(cloud, request_id)
        print(f"hung etcd: client gave up after {elapsed:.2f}s, handler ended "
              f"{ended - wall:.2f}s after the call ({status})")
        assert status == "UNAVAILABLE" and ended - wall < ETCD_TIMEOUT_S + 1.0
        # With a deadline longer than the etcd timeout, the client sees UNAVAILABLE.
        code, elapsed, _, _ = list_with(admin, 10)
        print(f"hung etcd, 10 s deadline: {code.name} after {elapsed:.2f}s")
        assert code == grpc.StatusCode.UNAVAILABLE and elapsed < ETCD_TIMEOUT_S + 1.0
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_until(lambda: list_with(admin, 5)[0] == grpc.StatusCode.OK, 30, "the API over etcd again")


def test_a_handler_with_etcd_stopped_answers_unavailable_before_its_deadline(deadline_cloud):
    cloud, admin = deadline_cloud
    cloud.procs.stop("etcd")
    try:
        code, elapsed, _, _ = list_with(admin, 2)
        print(f"etcd stopped, 2 s deadline: {code.name} after {elapsed:.2f}s")
        assert code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        assert elapsed < 2.5
    finally:
        cloud.start_etcd()
    wait_until(lambda: list_with(admin, 5)[0] == grpc.StatusCode.OK, 30, "the API over etcd again")


def test_retry_loops_stop_once_the_deadline_has_passed():
    assert deadlines.remaining() is None
    deadlines.check()  # no deadline outside an RPC: never raises
    token = deadlines.start(0.05)
    try:
        deadlines.check()
        assert 0 < deadlines.remaining() <= 0.05
        time.sleep(0.06)  # deliberate: the 0.05 s deadline passes
        with pytest.raises(errors.DeadlineExceeded):
            deadlines.check("the create of 'x'")
    finally:
        deadlines.end(token)
    assert deadlines.remaining() is None
