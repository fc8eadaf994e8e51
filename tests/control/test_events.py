"""EventService.Watch on a whole fake-driver cloud: instance events in order,
resuming without gap or duplicate, tenant isolation, host events without
heartbeat noise, compaction, deadlines, and no threads or etcd watches left
behind by closed streams."""

from __future__ import annotations

import os
import re
import threading
import time
import urllib.request

import grpc
import pytest
from cloudapi.v1 import compute_pb2 as pb
from cloudapi.v1 import events_pb2 as epb

from control.store import keys
from tests.conftest import login, start_cloud, stop_cloud, until
from tests.control.test_quota import new_tenant

Event = epb.Event
TYPE = Event.Type.Name


@pytest.fixture(scope="module")
def ev_cloud():
    cloud, store = start_cloud("events", agent_settings={"driver": "fake"})
    yield cloud, store, login(cloud, "admin")
    stop_cloud(cloud, "events")


class Watcher:
    """One Watch call read in the background into `events`."""

    def __init__(self, client, **request):
        self.call = client.events.Watch(epb.WatchRequest(**request))
        self.events: list[epb.Event] = []
        self.error: grpc.RpcError | None = None
        self.done = threading.Event()
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        try:
            for event in self.call:
                with self.cond:
                    self.events.append(event)
                    self.cond.notify_all()
        except grpc.RpcError as exc:
            self.error = exc
        finally:
            self.done.set()
            with self.cond:
                self.cond.notify_all()

    def wait(self, predicate, timeout_s: float = 60, what: str = "events"):
        """Wait until predicate(events) is true; return the events."""
        deadline = time.monotonic() + timeout_s
        with self.cond:
            while not predicate(self.events):
                left = deadline - time.monotonic()
                if left <= 0 or (self.done.is_set() and not predicate(self.events)):
                    raise AssertionError(f"no {what} within {timeout_s}s; got "
                                         f"{[describe(e) for e in self.events]} error={self.error}")
                self.cond.wait(min(left, 0.2))
            return list(self.events)

    def stop(self) -> list[epb.Event]:
        self.call.cancel()
        self.thread.join(10)
        return list(self.events)


def describe(e: epb.Event) -> tuple:
    what = e.instance.id[:8] if e.kind == Event.INSTANCE else e.host.name
    status = e.instance.status if e.kind == Event.INSTANCE else ""
    return (e.revision, e.index, TYPE(e.type), what, status, tuple(e.changed))


def position(e: epb.Event) -> tuple[int, int]:
    return e.revision, e.index


def assert_increasing(events: list[epb.Event]) -> None:
    positions = [position(e) for e in events]
    assert all(a < b for a, b in zip(positions, positions[1:], strict=False)), positions


def of(events, instance_id):
    return [e for e in events if e.kind == Event.INSTANCE and e.instance.id == instance_id]


def idle(client, instance_id, timeout_s=20):
    """The instance once settled (fake driver: measured under 1 s); fails after timeout_s."""
    def settled():
        current = client.instances.GetInstance(pb.GetInstanceRequest(id_or_name=instance_id))
        return current.status in ("ACTIVE", "ERROR", "SHUTOFF") and not current.task_state and current
    return until(settled, timeout_s, f"instance {instance_id} settled", every_s=0.05)


def heartbeats(store, host: str, count: int, timeout_s: float = 10) -> None:
    """Wait until the agent of `host` has rewritten its record `count` times
    (heartbeat_interval_s 1: measured ~1 s each)."""
    seen = {store.get(keys.host(host)).value["last_heartbeat"]}
    until(lambda: seen.add(store.get(keys.host(host)).value["last_heartbeat"]) or len(seen) > count,
          timeout_s, f"{count} heartbeats of {host}", every_s=0.05)


def expect_error(code, call):
    with pytest.raises(grpc.RpcError) as info:
        call()
    assert info.value.code() == code, info.value.details()
    return info.value.details()


def first(client, **request) -> epb.Event:
    """The first event of a stream (then it is closed)."""
    call = client.events.Watch(epb.WatchRequest(**request), timeout=30)
    try:
        return next(iter(call))
    finally:
        call.cancel()


def test_instance_lifecycle_events_in_order(ev_cloud):
    cloud, _, admin = ev_cloud
    _, tenant = new_tenant(cloud, admin, instances=5, vcpus=8, memory_mb=-1, disk_gb=-1)
    watcher = Watcher(tenant)
    synced = watcher.wait(lambda ev: ev, what="SYNCED")[0]
    assert (TYPE(synced.type), synced.index, synced.kind) == ("SYNCED", 0, Event.KIND_UNSPECIFIED)

    vm = tenant.instances.CreateInstance(pb.CreateInstanceRequest(name="ev1", flavor="tiny"))
    assert idle(tenant, vm.id).status == "ACTIVE"
    tenant.instances.ScaleInstance(pb.ScaleInstanceRequest(id_or_name=vm.id, vcpus=2))
    assert idle(tenant, vm.id).vcpus == 2
    tenant.instances.DeleteInstance(pb.DeleteInstanceRequest(id_or_name=vm.id))
    events = watcher.wait(lambda ev: any(e.type == Event.DELETED for e in ev), what="DELETED")
    watcher.stop()

    mine = of(events, vm.id)
    assert len(mine) == len(events) - 1  # nothing else in the tenant's stream
    assert_increasing(events)
    assert all(e.revision > synced.revision for e in mine)
    types = [TYPE(e.type) for e in mine]
    assert types[0] == "CREATED" and mine[0].instance.status == "BUILD"
    assert types[-1] == "DELETED" and mine[-1].instance.status == "DELETED"
    active = next(i for i, e in enumerate(mine) if e.instance.status == "ACTIVE")
    assert types[active] == "STATE_CHANGED" and "status" in mine[active].changed
    resized = types.index("RESIZED")
    assert active < resized < len(mine) - 1
    assert mine[resized].instance.vcpus == 2 and "vcpus" in mine[resized].changed
    # Every event is a change a consumer sees; never two identical snapshots in a row.
    for before, after in zip(mine, mine[1:], strict=False):
        assert after.type == Event.DELETED or after.changed, describe(after)
        assert before.instance != after.instance or after.type == Event.DELETED
    assert all(e.project == mine[0].instance.project for e in mine)


def test_resume_has_no_gap_and_no_duplicate(ev_cloud):
    cloud, _, admin = ev_cloud
    project, tenant = new_tenant(cloud, admin, instances=6, vcpus=8, memory_mb=-1, disk_gb=-1)
    steady = Watcher(tenant)  # stays connected: the reference
    start = steady.wait(lambda ev: ev, what="SYNCED")[0]

    # A second watcher is cut off in the middle of one revision: a scale-out
    # records its three instances in one transaction, so three CREATED events
    # share a revision, and it leaves after the first of them.
    call = tenant.events.Watch(epb.WatchRequest(after_revision=start.revision))
    stream = iter(call)
    made = tenant.instances.CreateInstances(pb.CreateInstancesRequest(
        name="batch", flavor="tiny", count=3)).instances
    cut = next(stream)
    call.cancel()
    assert TYPE(cut.type) == "CREATED" and cut.index == 0
    steady_now = steady.wait(lambda ev: sum(e.type == Event.CREATED for e in ev) == 3)
    created = [e for e in steady_now if e.type == Event.CREATED]
    assert {e.revision for e in created} == {cut.revision}
    assert [e.index for e in created] == [0, 1, 2]

    # Changes while it is away.
    for vm in made:
        assert idle(tenant, vm.id).status == "ACTIVE"
    tenant.instances.StopInstance(pb.InstanceOperationRequest(id_or_name=made[0].id))
    tenant.instances.DeleteInstance(pb.DeleteInstanceRequest(id_or_name=made[1].id))
    assert tenant.wait_gone(made[1].id)
    assert idle(tenant, made[0].id).status == "SHUTOFF"

    resumed = Watcher(tenant, after_revision=cut.revision, after_index=cut.index)
    # Resuming after a whole revision skips the rest of it.
    whole = first(tenant, after_revision=cut.revision)
    assert whole.revision > cut.revision

    for vm in (made[0], made[2]):
        tenant.instances.DeleteInstance(pb.DeleteInstanceRequest(id_or_name=vm.id))
    for vm in made:
        assert tenant.wait_gone(vm.id)
    # Both streams are complete up to their last event: compare up to the older one.
    deleted = lambda ev: sum(e.type == Event.DELETED for e in ev) == 3  # noqa: E731
    reference = steady.wait(deleted, what="three DELETED")
    again = resumed.wait(deleted, what="three DELETED")
    steady.stop()
    resumed.stop()
    end = min(position(reference[-1]), position(again[-1]))
    got = [describe(cut)] + [describe(e) for e in again if position(e) <= end]
    want = [describe(e) for e in reference if position(cut) <= position(e) <= end]
    assert got == want
    assert_increasing([cut, *again])
    assert len(want) > 10


def test_tenants_never_see_each_others_events(ev_cloud):
    cloud, _, admin = ev_cloud
    tenants = [new_tenant(cloud, admin, instances=4, vcpus=8, memory_mb=-1, disk_gb=-1)
               for _ in range(2)]
    everyone = Watcher(admin, project="*", kinds=[Event.INSTANCE])
    watchers = [Watcher(client) for _, client in tenants]
    for w in [everyone, *watchers]:
        w.wait(lambda ev: ev, what="SYNCED")

    def work(client):
        made = client.instances.CreateInstances(pb.CreateInstancesRequest(
            name="iso", flavor="tiny", count=2)).instances
        for vm in made:
            idle(client, vm.id)
            client.instances.DeleteInstance(pb.DeleteInstanceRequest(id_or_name=vm.id))
        return made

    results: dict[int, list] = {}
    threads = [threading.Thread(target=lambda i=i, c=c: results.__setitem__(i, work(c)))
               for i, (_, c) in enumerate(tenants)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    two_deleted = lambda ev: sum(e.type == Event.DELETED for e in ev) == 2  # noqa: E731
    for (project, _), watcher, i in zip(tenants, watchers, range(2), strict=True):
        events = watcher.wait(two_deleted, what="two DELETED")[1:]
        ids = {vm.id for vm in results[i]}
        assert {e.instance.id for e in events} == ids
        assert {e.project for e in events} == {project}
        assert {e.instance.project for e in events} == {project}
        assert all(e.kind == Event.INSTANCE for e in events)
    projects = {p for p, _ in tenants}
    seen = everyone.wait(lambda ev: sum(e.type == Event.DELETED and e.project in projects
                                        for e in ev) == 4, what="four DELETED")
    assert {e.project for e in seen[1:]} >= projects
    for w in [everyone, *watchers]:
        w.stop()

    # A tenant can neither name another project nor ask for host events, and
    # another project's instance id gives it nothing (its watch covers its keys only).
    (p0, c0), (p1, c1) = tenants
    expect_error(grpc.StatusCode.NOT_FOUND, lambda: first(c0, project=p1))
    expect_error(grpc.StatusCode.PERMISSION_DENIED, lambda: first(c0, kinds=[Event.HOST]))
    expect_error(grpc.StatusCode.NOT_FOUND, lambda: first(admin, project="no-such-project"))
    theirs = c1.instances.CreateInstance(pb.CreateInstanceRequest(name="theirs", flavor="tiny"))
    spy = Watcher(c0, instance_id=theirs.id)
    owner = Watcher(c1, instance_id=theirs.id)
    idle(c1, theirs.id)
    c1.instances.DeleteInstance(pb.DeleteInstanceRequest(id_or_name=theirs.id))
    assert c1.wait_gone(theirs.id)
    owner.wait(lambda ev: any(e.type == Event.DELETED for e in ev), what="the owner's DELETED")
    owner.stop()
    # Deliberate: nothing may reach the spy; 0.5 s more after the owner's own
    # stream had every event of it (both streams are fed by the same API watch).
    time.sleep(0.5)
    assert [TYPE(e.type) for e in spy.stop()] == ["SYNCED"]


def test_admin_sees_host_events_and_no_heartbeat_noise(ev_cloud):
    cloud, store, admin = ev_cloud
    watcher = Watcher(admin, kinds=[Event.HOST])
    watcher.wait(lambda ev: ev, what="SYNCED")
    heartbeats(store, cloud.host_name, 3)  # each rewrites the host record: no event
    assert [TYPE(e.type) for e in watcher.events] == ["SYNCED"]

    host = cloud.host_name
    admin.hosts.UpdateHost(pb.UpdateHostRequest(name=host, enabled=False, disabled_reason="test"))
    admin.hosts.UpdateHost(pb.UpdateHostRequest(name=host, enabled=True))
    cloud.add_agent(f"{host}-extra", driver="fake")
    events = watcher.wait(lambda ev: any(e.type == Event.HOST_REGISTERED for e in ev),
                          what="HOST_REGISTERED")

    # The host is "down" (its last heartbeat long ago, written as a test would
    # see an agent vanish); its next heartbeat brings it up again.
    old = time.time() - 3600
    store.update(keys.host(host), lambda r: store_txn(r, {**r.value, "last_heartbeat": old}))
    events = watcher.wait(lambda ev: any(e.type == Event.HOST_UP for e in ev), what="HOST_UP")
    # The hook for an explicit mark: a record that says up=false is HOST_DOWN.
    store.update(keys.host(host), lambda r: store_txn(r, {**r.value, "up": False}))
    events = watcher.wait(lambda ev: any(e.type == Event.HOST_DOWN for e in ev), what="HOST_DOWN")
    store.update(keys.host(host), lambda r: store_txn(r, {**r.value, "up": True}))
    events = watcher.wait(lambda ev: sum(e.type == Event.HOST_UP for e in ev) == 2, what="HOST_UP")
    store.update(keys.host(host), lambda r: store_txn(
        r, {k: v for k, v in r.value.items() if k != "up"}))
    heartbeats(store, host, 2)  # a record without "up", then heartbeats: no event
    events = watcher.stop()

    summary = [(TYPE(e.type), e.host.name, tuple(e.changed)) for e in events[1:]]
    assert summary == [
        ("HOST_UPDATED", host, ("disabled_reason", "enabled")),
        ("HOST_UPDATED", host, ("disabled_reason", "enabled")),
        ("HOST_REGISTERED", f"{host}-extra", ()),
        ("HOST_UP", host, ("up",)),
        ("HOST_DOWN", host, ("up",)),
        ("HOST_UP", host, ("up",)),
    ], summary
    assert not events[1].host.enabled and events[1].host.disabled_reason == "test"
    assert events[2].host.enabled
    assert events[3].host.up and events[3].host.vcpus > 0
    assert not events[5].host.up
    assert_increasing(events)


def store_txn(record, value):
    from control.store.etcd import Txn
    return Txn().expect(record).put(record.key, value)


def test_include_existing_then_changes(ev_cloud):
    cloud, _, admin = ev_cloud
    project, tenant = new_tenant(cloud, admin, instances=3, vcpus=8, memory_mb=-1, disk_gb=-1)
    vm = tenant.instances.CreateInstance(pb.CreateInstanceRequest(name="old", flavor="tiny"))
    idle(tenant, vm.id)
    watcher = Watcher(admin, project="*", include_existing=True)
    events = watcher.wait(lambda ev: any(e.type == Event.SYNCED for e in ev), what="SYNCED")
    synced = events[-1]
    existing = events[:-1]
    assert {TYPE(e.type) for e in existing} == {"EXISTING"}
    assert {e.revision for e in events} == {synced.revision}
    assert [e.index for e in events] == list(range(len(events)))
    assert vm.id in {e.instance.id for e in existing}
    assert cloud.host_name in {e.host.name for e in existing if e.kind == Event.HOST}
    assert {e.instance.id for e in existing if e.project == project} == {vm.id}
    tenant.instances.DeleteInstance(pb.DeleteInstanceRequest(id_or_name=vm.id))
    events = watcher.wait(lambda ev: any(e.type == Event.DELETED and e.instance.id == vm.id
                                         for e in ev), what="DELETED")
    watcher.stop()
    assert_increasing(events)
    # Bad requests.
    expect_error(grpc.StatusCode.INVALID_ARGUMENT,
                 lambda: first(tenant, include_existing=True, after_revision=synced.revision))
    expect_error(grpc.StatusCode.INVALID_ARGUMENT, lambda: first(tenant, after_index=0))
    expect_error(grpc.StatusCode.INVALID_ARGUMENT,
                 lambda: first(tenant, after_revision=synced.revision + 10**9))
    expect_error(grpc.StatusCode.INVALID_ARGUMENT, lambda: first(tenant, instance_id="../x"))


def test_deadline_ends_the_stream(ev_cloud):
    _, _, admin = ev_cloud
    started = time.monotonic()
    call = admin.events.Watch(epb.WatchRequest(), timeout=1)
    got = []
    with pytest.raises(grpc.RpcError) as info:
        for event in call:
            got.append(event)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert [TYPE(e.type) for e in got] == ["SYNCED"]
    assert time.monotonic() - started < 3


def test_compacted_revision_is_out_of_range(ev_cloud):
    cloud, store, admin = ev_cloud
    before = first(admin).revision
    admin.hosts.UpdateHost(pb.UpdateHostRequest(name=cloud.host_name, add_traits=["compact-me"]))
    admin.hosts.UpdateHost(pb.UpdateHostRequest(name=cloud.host_name, remove_traits=["compact-me"]))
    now = store.revision()
    store.compact(now)
    details = expect_error(grpc.StatusCode.OUT_OF_RANGE,
                           lambda: list(admin.events.Watch(epb.WatchRequest(
                               after_revision=before), timeout=10)))
    assert f"oldest revision available is {now}" in details, details
    # From the compaction revision on, history is there.
    watcher = Watcher(admin, after_revision=now - 1, kinds=[Event.HOST])
    admin.hosts.UpdateHost(pb.UpdateHostRequest(name=cloud.host_name, zone="z1"))
    admin.hosts.UpdateHost(pb.UpdateHostRequest(name=cloud.host_name, zone="default"))
    events = watcher.wait(lambda ev: sum("zone" in e.changed for e in ev) == 2, what="zone changes")
    watcher.stop()
    assert all(e.revision >= now for e in events)


def api_threads(cloud) -> int:
    return len(os.listdir(f"/proc/{cloud.procs.pid('api')}/task"))


def etcd_watchers(cloud) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{cloud.ports.etcd}/metrics", timeout=5) as r:
        text = r.read().decode()
    return int(float(re.search(r"^etcd_debugging_mvcc_watcher_total (\S+)$", text, re.M)[1]))


def test_closed_streams_leave_no_threads_or_watches(ev_cloud):
    cloud, _, admin = ev_cloud

    def cycle():
        call = admin.events.Watch(epb.WatchRequest(project="*"), timeout=30)
        assert next(iter(call)).type == Event.SYNCED
        call.cancel()

    watches = etcd_watchers(cloud)
    for _ in range(3):
        cycle()
    # The streams' etcd watches are closed after the call ends: wait for that.
    until(lambda: etcd_watchers(cloud) <= watches, 10, "the warm-up streams' watches closed")
    threads = api_threads(cloud)
    for _ in range(20):  # more than event_max_streams: each stream gives its slot back
        cycle()
    # A leak would add one per cycle (20); the slack is for the API's other work
    # (heartbeats arriving meanwhile may grow gRPC's worker pool by one).
    until(lambda: api_threads(cloud) <= threads + 2 and etcd_watchers(cloud) <= watches + 2, 10,
          lambda: f"API threads {api_threads(cloud)} <= {threads} + 2 and "
                  f"etcd watchers {etcd_watchers(cloud)} <= {watches} + 2")
    print(f"\nAPI threads {threads} -> {api_threads(cloud)}; "
          f"etcd watchers {watches} -> {etcd_watchers(cloud)} after 20 open/close cycles")


def test_streams_beyond_the_limit_are_refused(ev_cloud):
    cloud, _, admin = ev_cloud
    # ControlConfig.event_max_streams (16), from two users of two projects: one
    # user may hold 8 (stream_max_per_user; tests/control/test_stream_limits.py).
    readers = [admin, new_tenant(cloud, admin)[1]]
    open_ = [Watcher(reader, project=reader_project) for reader, reader_project in
             ((admin, "*"), (readers[1], "")) for _ in range(8)]
    for w in open_:
        w.wait(lambda ev: ev, what="SYNCED")
    third = new_tenant(cloud, admin)[1]
    details = expect_error(grpc.StatusCode.RESOURCE_EXHAUSTED, lambda: first(third))
    assert "event streams" in details
    for w in open_:
        w.stop()

    def accepted():
        try:
            return first(third).type == Event.SYNCED
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc.details()
            return False
    until(accepted, 5, "a stream slot given back")


def test_cloudctl_events_watch(ev_cloud, tmp_path):
    import json
    import subprocess
    import sys

    cloud, _, admin = ev_cloud
    env = {**os.environ, "CLOUD_ENDPOINT": cloud.endpoint, "CLOUD_USERNAME": "admin",
           "CLOUD_PASSWORD": cloud.password("admin"), "CLOUD_CONFIG": str(tmp_path / "none.toml")}
    watch = subprocess.Popen([sys.executable, "-m", "cloudclient.cli", "events", "watch", "--kind",
                              "host", "--timeout", "6", "-o", "json"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    synced = json.loads(watch.stdout.readline())
    assert synced["type"] == "SYNCED"
    admin.hosts.UpdateHost(pb.UpdateHostRequest(name=cloud.host_name, add_traits=["cli"]))
    admin.hosts.UpdateHost(pb.UpdateHostRequest(name=cloud.host_name, remove_traits=["cli"]))
    rest, errors = watch.communicate(timeout=30)
    assert watch.returncode == 0, errors
    events = [json.loads(line) for line in rest.splitlines()]
    assert [(e["type"], e["changed"]) for e in events] == [("HOST_UPDATED", ["traits"])] * 2
    # Resuming after the first prints only the second, as text.
    first_position = f"{events[0]['revision']}:{events[0]['index']}"
    text = subprocess.run([sys.executable, "-m", "cloudclient.cli", "events", "watch", "--kind", "host",
                           "--after", first_position, "--timeout", "3"], env=env,
                          capture_output=True, text=True, timeout=30)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{events[1]['revision']}:0 ")
    assert "HOST_UPDATED host" in lines[0] and "[traits]" in lines[0]
