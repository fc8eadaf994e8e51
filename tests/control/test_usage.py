"""Usage metering for billing, through the whole control plane on a fake-driver
cloud: an instance goes through create, stop, start, live scale, cold resize and
delete at known times, and its usage is checked to the millisecond against the
control plane's own timestamps (and those against the test's clock); the numbers
survive a restart of the API server and the worker; tenants see only their own
project; records page in a stable order; cloudctl and the billing exporter
example print the same numbers."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal

import grpc
import pytest
from cloudapi.v1 import compute_pb2 as pb
from cloudapi.v1 import identity_pb2 as ipb
from cloudapi.v1 import usage_pb2 as upb
from google.protobuf.timestamp_pb2 import Timestamp

from tests.conftest import REPO, ApiClient, login, start_cloud, stop_cloud
from tests.control.test_lifecycle import expect, idle
from tests.control.test_quota import new_tenant

PAUSE_S = 2.0
FIELDS = ("instance_ms", "vcpu_ms", "ram_mib_ms", "disk_gib_ms")


def usage_stub(client: ApiClient):
    return client.usage


def ts(seconds: float) -> Timestamp:
    t = Timestamp()
    t.FromNanoseconds(int(seconds * 1e9))
    return t


def ms(t: Timestamp) -> int:
    return round(t.ToNanoseconds() / 1e6)


def boundary(client: ApiClient, instance_id: str) -> int:
    """When the instance's last change was committed (its updated_at), in ms."""
    return ms(client.instances.GetInstance(pb.GetInstanceRequest(id_or_name=instance_id)).updated_at)


def amounts(intervals) -> dict[str, int]:
    """Expected exact amounts of (start_ms, end_ms, vcpus, memory_mb, disk_gb) intervals."""
    total = dict.fromkeys(FIELDS, 0)
    for start, end, vcpus, memory_mb, disk_gb in intervals:
        d = end - start
        total["instance_ms"] += d
        total["vcpu_ms"] += vcpus * d
        total["ram_mib_ms"] += memory_mb * d
        total["disk_gib_ms"] += disk_gb * d
    return total


def exact(a: upb.UsageAmounts) -> dict[str, int]:
    return {f: getattr(a, f) for f in FIELDS}


def all_records(stub, **request) -> list[upb.UsageRecord]:
    records, token = [], ""
    while True:
        page = stub.ListUsageRecords(upb.ListUsageRecordsRequest(page_token=token, **request))
        records += page.records
        token = page.next_page_token
        if not token:
            return records


@pytest.fixture(scope="module")
def usage_cloud():
    cloud, store = start_cloud("usage", agent_settings={"driver": "fake"})
    yield cloud, store, login(cloud, "admin")
    stop_cloud(cloud, "usage")


@pytest.fixture(scope="module")
def history(usage_cloud):
    """One instance through its whole life at known times, another left running."""
    cloud, _, admin = usage_cloud
    project, client = new_tenant(cloud, admin, instances=5, vcpus=-1, memory_mb=-1, disk_gb=-1)
    t_begin = time.time()
    keeper = client.instances.CreateInstance(pb.CreateInstanceRequest(name="keeper", flavor="tiny"))
    vm = client.instances.CreateInstance(pb.CreateInstanceRequest(name="vm", flavor="small"))
    created = time.time()
    assert client.wait_status(keeper.id, {"ACTIVE", "ERROR"}).status == "ACTIVE"
    assert client.wait_status(vm.id, {"ACTIVE", "ERROR"}).status == "ACTIVE"
    windows = {"created": (t_begin, created), "active": (t_begin, time.time())}
    marks = {"created": ms(vm.created_at), "active": boundary(client, vm.id),
             "keeper_created": ms(keeper.created_at), "keeper_active": boundary(client, keeper.id)}
    op = pb.InstanceOperationRequest(id_or_name="vm")
    steps = [("stopped", lambda: client.instances.StopInstance(op)),
             ("started", lambda: client.instances.StartInstance(op)),
             ("scaled", lambda: client.instances.ScaleInstance(pb.ScaleInstanceRequest(
                 id_or_name="vm", vcpus=2, memory_mb=1024))),
             ("resized", lambda: client.instances.ResizeInstance(pb.ResizeInstanceRequest(
                 id_or_name="vm", flavor="medium")))]
    for mark, call in steps:
        time.sleep(PAUSE_S)  # deliberate: each state lasts PAUSE_S, metered as such
        before = time.time()
        call()
        done = idle(client, vm.id)
        assert not done.HasField("fault"), done.fault.message
        windows[mark] = (before, time.time())
        marks[mark] = boundary(client, vm.id)
    time.sleep(PAUSE_S)  # deliberate, as above
    deleting = time.time()
    client.instances.DeleteInstance(pb.DeleteInstanceRequest(id_or_name=vm.id))
    assert client.wait_gone(vm.id)
    gone = time.time()
    windows["deleted"] = (deleting, gone)
    return {"project": project, "client": client, "vm": vm, "keeper": keeper, "marks": marks,
            "windows": windows, "t_begin": t_begin, "period": (t_begin - 1, gone)}


def expected_vm_records(h, deleted_ms: int):
    m = h["marks"]
    return [("building", "small", 1, 512, 2, m["created"], m["active"]),
            ("running", "small", 1, 512, 2, m["active"], m["stopped"]),
            ("stopped", "small", 1, 512, 2, m["stopped"], m["started"]),
            ("running", "small", 1, 512, 2, m["started"], m["scaled"]),
            ("running", "small", 2, 1024, 2, m["scaled"], m["resized"]),
            ("running", "medium", 2, 1024, 5, m["resized"], deleted_ms)]


def test_an_instance_life_is_metered_to_the_millisecond(history):
    h = history
    stub = usage_stub(h["client"])
    records = all_records(stub, instance_id=h["vm"].id)
    deleted_ms = ms(records[-1].end)
    # Each boundary is the control plane's commit of the change, inside the window
    # the test saw the operation in (same machine, same clock).
    for mark, (before, after) in h["windows"].items():
        at = deleted_ms if mark == "deleted" else h["marks"][mark]
        assert before * 1000 - 1 <= at <= after * 1000 + 1, (mark, before, at, after)
    got = [(r.state, r.flavor, r.vcpus, r.memory_mb, r.disk_gb, ms(r.start), ms(r.end))
           for r in records]
    want = expected_vm_records(h, deleted_ms)
    assert [g[:5] for g in got] == [w[:5] for w in want]
    for g, w in zip(got, want, strict=True):  # Timestamps vs updated_at floats: within 1 ms
        assert abs(g[5] - w[5]) <= 1 and abs(g[6] - w[6]) <= 1, (g, w)
    assert not any(r.open for r in records)
    # Contiguous: each interval starts where the one before ended.
    assert all(a.end == b.start for a, b in zip(records, records[1:], strict=False))
    # Each state lasted what the test waited, to the second.
    seconds = {}
    for state, *_, start, end in got:
        seconds[state] = seconds.get(state, 0) + (end - start) / 1000
    # (Never less than the test waited; more only by how long the operations took.)
    spent = sum(after - before for mark, (before, after) in h["windows"].items()
                if mark not in ("created", "active"))
    assert PAUSE_S <= seconds["stopped"] <= PAUSE_S + 1
    assert 4 * PAUSE_S <= seconds["running"] <= 4 * PAUSE_S + spent + 1

    start, end = h["period"]
    report = stub.GetProjectUsage(upb.GetProjectUsageRequest(start=ts(start), end=ts(end)))
    assert report.project == h["project"]
    by_id = {i.instance_id: i for i in report.instances}
    vm_usage = by_id[h["vm"].id]
    assert (vm_usage.name, vm_usage.live) == ("vm", False)
    assert exact(vm_usage.usage.total) == amounts([(ms(r.start), ms(r.end), r.vcpus, r.memory_mb,
                                                    r.disk_gb) for r in records])
    assert vm_usage.usage.by_state["stopped"].instance_ms == ms(records[2].end) - ms(records[2].start)
    assert [f.flavor for f in vm_usage.flavors] == ["medium", "small"]
    # The keeper still runs: its open interval counts up to the period's end.
    m, end_ms = h["marks"], ts(end).ToMilliseconds()
    keeper = by_id[h["keeper"].id]
    assert keeper.live
    assert exact(keeper.usage.total) == amounts([(m["keeper_created"], m["keeper_active"], 1, 256, 1),
                                                 (m["keeper_active"], end_ms, 1, 256, 1)])
    # Exact sums: per instance and per flavor add up to the total, integer for integer.
    for f in FIELDS:
        total = getattr(report.usage.total, f)
        assert sum(getattr(i.usage.total, f) for i in report.instances) == total
        assert sum(getattr(fl.usage.total, f) for fl in report.flavors) == total
        assert sum(getattr(a, f) for a in report.usage.by_state.values()) == total
    assert report.usage.total.vcpu_hours == report.usage.total.vcpu_ms / 3_600_000
    assert {f.flavor: f.instances for f in report.flavors} == {"tiny": 1, "small": 1, "medium": 1}


def test_a_period_cuts_intervals_and_the_future_is_not_billed(history):
    h = history
    stub = usage_stub(h["client"])
    [stopped] = [r for r in all_records(stub, instance_id=h["vm"].id) if r.state == "stopped"]
    # Only the stopped interval, and one second on each side of it.
    start_ms, end_ms = ms(stopped.start) - 1000, ms(stopped.end) + 1000
    period = upb.GetProjectUsageRequest()
    period.start.FromMilliseconds(start_ms)
    period.end.FromMilliseconds(end_ms)
    cut = stub.GetProjectUsage(period)
    vm = {i.instance_id: i for i in cut.instances}[h["vm"].id]
    assert vm.usage.total.instance_ms == end_ms - start_ms
    assert vm.usage.by_state["running"].instance_ms == 2000
    assert vm.usage.by_state["stopped"].instance_ms == ms(stopped.end) - ms(stopped.start)
    assert (ms(vm.first), ms(vm.last)) == (start_ms, end_ms)
    future = stub.GetProjectUsage(upb.GetProjectUsageRequest(end=ts(time.time() + 86400)))
    assert ms(future.end) == ms(future.computed_at) <= time.time() * 1000 + 1
    expect(grpc.StatusCode.INVALID_ARGUMENT, lambda: stub.GetProjectUsage(
        upb.GetProjectUsageRequest(start=ts(time.time()), end=ts(time.time() - 60))))


def test_tenants_see_only_their_own_usage_and_admins_any(history, usage_cloud):
    cloud, _, admin = usage_cloud
    h = history
    project = h["project"]
    _, other = new_tenant(cloud, admin, instances=1)
    other_stub = usage_stub(other)
    for call in (lambda: other_stub.GetProjectUsage(upb.GetProjectUsageRequest(project=project)),
                 lambda: other_stub.ListUsageRecords(upb.ListUsageRecordsRequest(project=project))):
        assert project in expect(grpc.StatusCode.NOT_FOUND, call)
    own = other_stub.GetProjectUsage(upb.GetProjectUsageRequest())
    assert own.instances == [] and own.usage.total.instance_ms == 0
    # A reader of the project may look; an admin may name any project.
    admin.identity.CreateUser(ipb.CreateUserRequest(name=f"{project}-reader", password="pw-reader-1",
                                                    project=project, role="reader"))
    reader = ApiClient(cloud.endpoint)
    reader.login(f"{project}-reader", "pw-reader-1", project)
    start, end = h["period"]
    period = {"start": ts(start), "end": ts(end)}
    mine = usage_stub(h["client"]).GetProjectUsage(upb.GetProjectUsageRequest(**period))
    as_reader = usage_stub(reader).GetProjectUsage(upb.GetProjectUsageRequest(**period))
    as_admin = usage_stub(admin).GetProjectUsage(upb.GetProjectUsageRequest(project=project, **period))
    for report in (as_reader, as_admin):
        report.ClearField("computed_at")
    mine.ClearField("computed_at")
    assert mine == as_reader == as_admin
    expect(grpc.StatusCode.NOT_FOUND, lambda: usage_stub(admin).GetProjectUsage(
        upb.GetProjectUsageRequest(project="no-such-project")))


def test_records_page_in_a_stable_order(history):
    stub = usage_stub(history["client"])
    one_page = stub.ListUsageRecords(upb.ListUsageRecordsRequest(include_open=True, page_size=1000))
    assert one_page.next_page_token == ""
    by_one, token, pages = [], "", 0
    while True:
        page = stub.ListUsageRecords(upb.ListUsageRecordsRequest(include_open=True, page_size=1,
                                                                 page_token=token))
        assert len(page.records) <= 1
        by_one += page.records
        token, pages = page.next_page_token, pages + 1
        if not token:
            break
    def key(r):
        return (r.instance_id, ms(r.start), r.state, r.open)
    assert [key(r) for r in by_one] == [key(r) for r in one_page.records]
    assert len(by_one) == 6 + 2 and pages in (8, 9)  # vm: 6 closed; keeper: building + open running
    assert [key(r)[:2] for r in by_one] == sorted(key(r)[:2] for r in by_one)
    assert [r.open for r in by_one if r.instance_id == history["keeper"].id] == [False, True]
    closed = stub.ListUsageRecords(upb.ListUsageRecordsRequest()).records
    assert len(closed) == 7 and not any(r.open for r in closed)
    expect(grpc.StatusCode.INVALID_ARGUMENT, lambda: stub.ListUsageRecords(
        upb.ListUsageRecordsRequest(page_token="garbage!")))
    expect(grpc.StatusCode.INVALID_ARGUMENT, lambda: stub.ListUsageRecords(
        upb.ListUsageRecordsRequest(page_size=-1)))


def test_the_service_is_listed_by_health_checks(usage_cloud):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    cloud, _, _ = usage_cloud
    with grpc.insecure_channel(cloud.endpoint) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="cloudapi.v1.UsageService"), timeout=10)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat()


def test_cloudctl_usage_show(history, usage_cloud):
    cloud, _, _ = usage_cloud
    h = history
    start, end = h["period"]
    env = {**os.environ, "CLOUD_ENDPOINT": cloud.endpoint, "CLOUD_USERNAME": f"{h['project']}-user",
           "CLOUD_PASSWORD": "pw-" + h["project"], "CLOUD_PROJECT": h["project"],
           "CLOUD_CONFIG": "/nonexistent/cloudctl.toml", "COLUMNS": "200"}

    def cloudctl(*args):
        result = subprocess.run([sys.executable, "-m", "cloudclient.cli", "usage", *args], env=env,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout

    shown = json.loads(cloudctl("show", "--start", iso(start), "--end", iso(end), "-o", "json"))
    api = usage_stub(h["client"]).GetProjectUsage(upb.GetProjectUsageRequest(start=ts(start),
                                                                             end=ts(end)))
    assert int(shown["usage"]["total"]["vcpu_ms"]) == api.usage.total.vcpu_ms
    assert len(shown["instances"]) == 2
    table = cloudctl("show", "--start", iso(start), "--end", iso(end))
    assert "per flavor" in table and "medium" in table and "(deleted)" in table
    records = json.loads(cloudctl("records", "-o", "json", "--page-size", "2"))
    assert len(records) == 8 and [r["name"] for r in records if r["open"]] == ["keeper"]


def hours(ms: Decimal) -> Decimal:
    """Milliseconds as hours, rounded as invoices round (half up, 6 places): Python's
    round() rounds half to even, which differed on exact halves (0.0070325)."""
    return (ms / 3_600_000).quantize(Decimal("0.000001"), ROUND_HALF_UP)


def test_hours_round_half_up_as_the_exporter():
    assert hours(Decimal(25317)) == Decimal("0.007033")


def test_billing_exporter_prints_the_invoice_as_csv(history, usage_cloud):
    cloud, _, admin = usage_cloud
    h = history
    start, end = h["period"]
    env = {**os.environ, "CLOUD_ENDPOINT": cloud.endpoint, "CLOUD_USERNAME": "admin",
           "CLOUD_PASSWORD": cloud.password("admin")}
    result = subprocess.run(
        [sys.executable, str(REPO / "examples" / "billing_exporter.py"), "--project", h["project"],
         "--start", iso(start), "--end", iso(end), "--rate", "vcpu=0.04", "--rate", "ram=0.01",
         "--rate", "disk=0.001", "--rate", "stopped.vcpu=0"],
        env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = list(csv.DictReader(io.StringIO(result.stdout)))
    api = usage_stub(admin).GetProjectUsage(upb.GetProjectUsageRequest(
        project=h["project"], start=ts(start), end=ts(end)))
    assert [(x["instance_id"], x["flavor"]) for x in lines] == [
        *[(i.instance_id, f.flavor) for i in api.instances for f in i.flavors], ("TOTAL", "")]
    total = lines[-1]
    assert Decimal(total["vcpu_hours"]) == hours(Decimal(api.usage.total.vcpu_ms))
    assert Decimal(total["ram_gib_hours"]) == hours(Decimal(api.usage.total.ram_mib_ms) / 1024)
    assert Decimal(total["amount"]) == sum(Decimal(x["amount"]) for x in lines[:-1])
    # The price: vCPU-hours at 0.04 except while stopped, RAM at 0.01, disk at 0.001 per GiB-hour.
    u = api.usage
    stopped = u.by_state["stopped"]
    expected = (Decimal(u.total.vcpu_ms - stopped.vcpu_ms) * Decimal("0.04")
                + Decimal(u.total.ram_mib_ms) / 1024 * Decimal("0.01")
                + Decimal(u.total.disk_gib_ms) * Decimal("0.001")) / 3_600_000
    assert abs(Decimal(total["amount"]) - expected) <= Decimal("0.0001") * len(lines)
    assert Decimal(total["amount"]) > 0
    vm_lines = [x for x in lines if x["instance_id"] == h["vm"].id]
    assert {x["instance_name"] for x in vm_lines} == {"vm"} and len(vm_lines) == 2
    [vm] = [i for i in api.instances if i.instance_id == h["vm"].id]
    assert abs(sum(Decimal(x["instance_hours"]) for x in vm_lines)
               - Decimal(vm.usage.total.instance_ms) / 3_600_000) <= Decimal("0.000001")


def test_usage_survives_a_restart_of_the_api_and_the_worker(history, usage_cloud):
    cloud, _, _ = usage_cloud
    h = history
    client = h["client"]
    stub = usage_stub(client)
    start, end = h["period"]
    period = upb.GetProjectUsageRequest(start=ts(start), end=ts(end))
    before = stub.GetProjectUsage(period)
    records_before = all_records(stub, include_open=True)

    for name in ("api", "worker"):
        assert cloud.procs.stop(name)
    cloud.start_api()
    cloud.start_worker()

    deadline = time.monotonic() + 30
    while True:
        try:
            after = stub.GetProjectUsage(period, wait_for_ready=True, timeout=10)
            break
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    before.ClearField("computed_at")
    after.ClearField("computed_at")
    assert after == before
    records_after = all_records(stub, include_open=True)
    closed = [r for r in records_before if not r.open]
    assert [r for r in records_after if not r.open] == closed
    # The keeper's open interval is the same one, still counting.
    [open_before] = [r for r in records_before if r.open]
    [open_after] = [r for r in records_after if r.open]
    assert open_after.start == open_before.start and ms(open_after.end) > ms(open_before.end)
    # The restarted worker meters too: a stop closes the keeper's running interval.
    client.instances.StopInstance(pb.InstanceOperationRequest(id_or_name="keeper"))
    assert idle(client, h["keeper"].id).status == "SHUTOFF"
    stopped_at = boundary(client, h["keeper"].id)
    newest = [r for r in all_records(stub, include_open=True) if r.instance_id == h["keeper"].id]
    assert [(r.state, r.open) for r in newest] == [("building", False), ("running", False),
                                                   ("stopped", True)]
    assert abs(ms(newest[1].end) - stopped_at) <= 1 and newest[1].start == open_before.start
