"""Streams can't starve the API (issue 15): idle streams without a login, one
user's or one project's streams, and an idle upload each take only their share
of the API server's threads, and other tenants' calls answer in their normal
time meanwhile. A real API server (fake compute driver)."""

from __future__ import annotations

import queue
import threading
import time

import grpc
import pytest
from cloudapi.v1 import compute_pb2 as pb
from cloudapi.v1 import events_pb2 as epb
from cloudapi.v1 import identity_pb2 as ipb
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.conftest import ApiClient, login, start_cloud, stop_cloud, until
from tests.control.test_quota import new_tenant

IDLE_TIMEOUT_S = 2.0
# Calls of another tenant while streams are held: measured 0.01-0.05 s each on
# this machine, idle or under attack (with the limits); before them, 32 idle
# reflection streams made Login wait for its 5 s deadline.
NORMAL_BOUND_S = 1.0


@pytest.fixture(scope="module")
def streams_cloud():
    cloud, store = start_cloud("streams", agent_settings={"driver": "fake"},
                               control_settings={"stream_idle_timeout_s": IDLE_TIMEOUT_S})
    admin = login(cloud, "admin")
    yield cloud, admin
    stop_cloud(cloud, "streams")


class Held:
    """A streaming call read in a thread: `outcome` is its first answer's kind
    or its error code, once it has one; the request side sends nothing more."""

    def __init__(self, call):
        self.call = call
        self.outcome: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        try:
            for _ in self.call:
                self.outcome.put("answer")
        except grpc.RpcError as exc:
            self.outcome.put(exc.code())

    def first(self, timeout_s: float):
        try:
            return self.outcome.get(timeout=timeout_s)
        except queue.Empty:
            return None  # still open, nothing received


def idle_requests(stop: threading.Event):
    """A request stream that sends nothing until `stop`."""
    stop.wait()
    return
    yield


def tenant_calls(cloud, project: str, client: ApiClient) -> list[float]:
    """Seconds taken by Login, ListInstances and CreateInstance of a tenant."""
    took = []
    start = time.monotonic()
    fresh = ApiClient(cloud.endpoint)
    fresh.login(f"{project}-user", "pw-" + project, project)
    took.append(time.monotonic() - start)
    start = time.monotonic()
    client.instances.ListInstances(pb.ListInstancesRequest(), timeout=10)
    took.append(time.monotonic() - start)
    start = time.monotonic()
    client.instances.CreateInstance(pb.CreateInstanceRequest(
        name=f"i-{time.monotonic_ns()}", flavor="tiny"), timeout=10)
    took.append(time.monotonic() - start)
    return took


def test_idle_streams_without_login_take_only_their_share(streams_cloud):
    cloud, admin = streams_cloud
    project, tenant = new_tenant(cloud, admin, instances=-1, vcpus=-1, memory_mb=-1, disk_gb=-1)
    normal = tenant_calls(cloud, project, tenant)

    channel = grpc.insecure_channel(cloud.endpoint)
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    stop = threading.Event()
    # More than the API server has threads (64): before the limits, 32 were enough.
    held = [Held(stub.ServerReflectionInfo(idle_requests(stop), timeout=60)) for _ in range(80)]
    try:
        outcomes = [h.first(0.5) for h in held]
        refused = [o for o in outcomes if o == grpc.StatusCode.RESOURCE_EXHAUSTED]
        still_open = [h for h, o in zip(held, outcomes, strict=True) if o is None]
        # Two streams without a login from one address (stream_max_per_address).
        assert (len(refused), len(still_open)) == (78, 2), outcomes

        attacked = tenant_calls(cloud, project, tenant)
        print(f"\ntenant calls (Login, List, Create) normal {[f'{t:.3f}' for t in normal]}, "
              f"with 80 idle anonymous streams {[f'{t:.3f}' for t in attacked]}")
        assert max(attacked) < NORMAL_BOUND_S, attacked

        # The two admitted streams wait on their client: cut off once idle.
        start = time.monotonic()
        ends = [h.first(IDLE_TIMEOUT_S + 5) for h in still_open]
        assert ends == [grpc.StatusCode.CANCELLED] * 2, ends
        assert time.monotonic() - start < IDLE_TIMEOUT_S + 3
        # Their slots are free again: a new reflection stream is served.
        answer = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
        assert any(s.name == "cloudapi.v1.InstanceService"
                   for r in answer for s in r.list_services_response.service)
    finally:
        stop.set()
        channel.close()


def test_one_users_streams_leave_room_for_other_projects(streams_cloud):
    cloud, admin = streams_cloud
    project_a, reader_a = new_tenant(cloud, admin)
    project_b, member_b = new_tenant(cloud, admin, instances=-1, vcpus=-1, memory_mb=-1, disk_gb=-1)
    normal = tenant_calls(cloud, project_b, member_b)

    watches = []
    try:
        for _ in range(8):  # stream_max_per_user
            watches.append(Held(reader_a.events.Watch(epb.WatchRequest(), timeout=60)))
            assert watches[-1].first(5) == "answer"  # SYNCED
        ninth = Held(reader_a.events.Watch(epb.WatchRequest(), timeout=60))
        assert ninth.first(5) == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "streams open" in ninth.call.details()

        # Another user of the same project: the project's share is full too.
        admin.identity.CreateUser(ipb.CreateUserRequest(
            name=f"{project_a}-second", password="pw2-" + project_a, project=project_a,
            role="reader"))
        second = ApiClient(cloud.endpoint)
        second.login(f"{project_a}-second", "pw2-" + project_a, project_a)
        refused = Held(second.events.Watch(epb.WatchRequest(), timeout=60))
        assert refused.first(5) == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"project {project_a!r}" in refused.call.details()

        # Another project streams and calls as usual.
        other = Held(member_b.events.Watch(epb.WatchRequest(), timeout=60))
        assert other.first(5) == "answer"
        other.call.cancel()
        busy = tenant_calls(cloud, project_b, member_b)
        print(f"\nproject B calls normal {[f'{t:.3f}' for t in normal]}, while A holds 8 streams "
              f"{[f'{t:.3f}' for t in busy]}")
        assert max(busy) < NORMAL_BOUND_S, busy
    finally:
        for w in watches:
            w.call.cancel()
    # Closed streams give their slots back.
    until(lambda: Held(reader_a.events.Watch(epb.WatchRequest(), timeout=5)).first(5) == "answer",
          10, "a stream after the others closed")


def test_an_idle_upload_is_cancelled(streams_cloud):
    cloud, admin = streams_cloud
    _, member = new_tenant(cloud, admin)
    stop = threading.Event()

    def info_then_nothing():
        yield pb.ImageUpload(info=pb.ImageInfo(name="stalled", disk_format="qcow2"))
        stop.wait()

    future = member.images.CreateImage.future(info_then_nothing(), timeout=60)
    start = time.monotonic()
    try:
        with pytest.raises(grpc.RpcError) as info:
            future.result(timeout=IDLE_TIMEOUT_S + 10)
        assert info.value.code() == grpc.StatusCode.CANCELLED
        # Cut off after the idle timeout, not before (the sweep runs every second).
        assert IDLE_TIMEOUT_S - 0.5 < time.monotonic() - start < IDLE_TIMEOUT_S + 3
    finally:
        stop.set()
    names = [i.name for i in member.images.ListImages(pb.ListImagesRequest()).images]
    assert "stalled" not in names


def test_calls_beyond_the_servers_bound_are_refused_at_once():
    """A burst beyond api_max_calls (served or waiting) is refused at once,
    RESOURCE_EXHAUSTED, instead of waiting in an endless queue; the rest are
    served. Logins, for their cost (argon2: ~0.1-0.3 s each here)."""
    from concurrent.futures import ThreadPoolExecutor

    cloud, _ = start_cloud("calls", agent_settings={"driver": "fake"},
                           control_settings={"api_threads": 8, "api_max_calls": 12})
    try:
        password = cloud.password("demo")

        def one_login(_):
            start = time.monotonic()
            try:
                ApiClient(cloud.endpoint).login("demo", password, "")
                return "ok", time.monotonic() - start
            except grpc.RpcError as exc:
                return exc.code(), time.monotonic() - start

        with ThreadPoolExecutor(max_workers=40) as pool:
            results = list(pool.map(one_login, range(40)))
        refused = [took for outcome, took in results if outcome == grpc.StatusCode.RESOURCE_EXHAUSTED]
        served = [took for outcome, took in results if outcome == "ok"]
        print(f"\n40 logins at once, 8 threads, 12 calls: {len(served)} served, {len(refused)} "
              f"refused in at most {max(refused, default=0):.3f} s")
        assert len(served) + len(refused) == 40, results
        assert served and refused
        assert max(refused) < 1.0  # at once (measured: 0.01-0.2 s with the machine busy)
        assert one_login(0)[0] == "ok"
    finally:
        stop_cloud(cloud, "calls")
