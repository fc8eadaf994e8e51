"""usage blueprint: a project's metered usage for a period (UsageService), totals and a
row per instance and flavor, as a page and as CSV; tenants see only their own
project, admins choose any; bad periods are a 400 with the reason."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

import pytest
from cloudapi.v1 import compute_pb2 as pb
from cloudapi.v1 import identity_pb2 as ipb
from cloudapi.v1 import usage_pb2 as upb
from cloudapi.v1 import usage_pb2_grpc
from google.protobuf.timestamp_pb2 import Timestamp

from tests.conftest import OUTPUT, REPO
from tests.dashboard.conftest import Web, make_tenant

RAN_S = 3.0


def iso(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S")


def cells(page: str, instance_id: str) -> list[list[str]]:
    """The words of each cell of an instance's row."""
    row = re.search(rf'<tr data-id="{instance_id}">(.*?)</tr>', page, re.S)
    assert row, f"no row for {instance_id}"
    found = re.findall(r"<td[^>]*>(.*?)</td>", row.group(1), re.S)
    return [re.sub(r"<[^>]+>", " ", c).split() for c in found]


def shown(ms: int, per_hour: int = 3_600_000) -> str:
    return f"{(Decimal(ms) / per_hour).quantize(Decimal('0.0001'), ROUND_HALF_UP):,}"


def best_ms(call, runs: int = 3) -> float:
    """The fastest of a few runs, after one to warm up (ms)."""
    call()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return round(min(times) * 1000, 1)


@pytest.fixture(scope="module")
def ran(cloud, admin):
    """A tenant whose instance was created, became ACTIVE, ran for a few seconds and was
    deleted, all in the period [begin, end)."""
    tenant = make_tenant(cloud, admin, "use")
    begin = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=1)
    made = tenant.api.instances.CreateInstance(pb.CreateInstanceRequest(
        name="metered", flavor="tiny", request_id=str(uuid.uuid4())))
    try:
        assert tenant.api.wait_status(made.id, {"ACTIVE", "ERROR"}).status == "ACTIVE"
        time.sleep(RAN_S)  # deliberate: it must run (and be metered) for RAN_S
    finally:
        tenant.api.instances.DeleteInstance(pb.DeleteInstanceRequest(id_or_name=made.id))
        assert tenant.api.wait_gone(made.id)
    end = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)
    # The page refuses a period that ends in the future: wait until `end` has passed.
    time.sleep(max(0.0, (end - datetime.now(UTC)).total_seconds()) + 0.05)
    return tenant, made, begin, end


def test_a_tenant_sees_hours_of_an_instance_that_ran(app, ran):
    tenant, made, begin, end = ran
    web = Web(app).login(tenant.username, tenant.password)
    assert 'href="/usage"' in web.get("/instances").get_data(as_text=True)  # in the nav

    # This month so far, by default: the instance is in it.
    response = web.get("/usage")
    page = response.get_data(as_text=True)
    assert response.status_code == 200, page
    assert f"Usage of {tenant.project}" in page and 'name="project"' not in page
    assert f'value="{datetime.now(UTC):%Y-%m}-01T00:00:00"' in page  # the month's start, shown
    name, flavor, states, *hours = cells(page, made.id)
    assert name[:2] == ["metered", "(deleted)"] and flavor == ["tiny"]
    assert "building" in states and "running" in states
    assert all(float(h[0]) > 0 for h in hours), hours

    # A period given: the page's figures are the API's exact milliseconds, rounded.
    page = web.get(f"/usage?start={iso(begin)}&end={iso(end)}").get_data(as_text=True)
    stub = usage_pb2_grpc.UsageServiceStub(tenant.api.channel)
    start_ts, end_ts = Timestamp(), Timestamp()
    start_ts.FromDatetime(begin)
    end_ts.FromDatetime(end)
    report = stub.GetProjectUsage(upb.GetProjectUsageRequest(start=start_ts, end=end_ts))
    total = report.usage.total
    assert total.instance_ms > RAN_S * 1000 and total.vcpu_ms == total.instance_ms
    running = report.instances[0].usage.by_state["running"].instance_ms
    assert running >= RAN_S * 1000
    _, _, states, *hours = cells(page, made.id)
    assert hours == [[shown(total.instance_ms)], [shown(total.vcpu_ms)],
                     [shown(total.ram_mib_ms, 3_600_000 * 1024)], [shown(total.disk_gib_ms)]]
    assert shown(running) in states and "running" in states
    totals = page[page.index('data-testid="usage-totals"'):]
    for ms in (total.instance_ms, total.ram_mib_ms):
        assert f"{ms:,} unit-milliseconds" in totals


def test_the_csv_is_the_billing_exporters_invoice_without_prices(app, cloud, ran):
    tenant, made, begin, end = ran
    web = Web(app).login(tenant.username, tenant.password)
    page = web.get(f"/usage?start={iso(begin)}&end={iso(end)}").get_data(as_text=True)
    link = re.search(r'href="([^"]+)" data-testid="usage-csv"', page).group(1).replace("&amp;", "&")
    response = web.get(link)
    assert response.status_code == 200 and response.mimetype == "text/csv"
    disposition = response.headers["Content-Disposition"]
    assert disposition.startswith(f'attachment; filename="usage-{tenant.project}-')
    ours = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    assert [r["instance_id"] for r in ours] == [made.id, "TOTAL"]
    assert Decimal(ours[0]["vcpu_hours"]) > 0

    env = {**os.environ, "CLOUD_ENDPOINT": cloud.endpoint, "CLOUD_USERNAME": tenant.username,
           "CLOUD_PASSWORD": tenant.password, "CLOUD_PROJECT": tenant.project}
    exported = subprocess.run([sys.executable, str(REPO / "examples/billing_exporter.py"),
                               "--start", iso(begin), "--end", iso(end)],
                              env=env, capture_output=True, text=True, timeout=60, check=True).stdout
    theirs = [{k: v for k, v in r.items() if k not in ("amount", "currency")}
              for r in csv.DictReader(io.StringIO(exported))]
    assert ours == theirs


def test_a_tenant_cannot_see_another_projects_usage(demo, other_tenant):
    for url in (f"/usage?project={other_tenant.project}", f"/usage.csv?project={other_tenant.project}"):
        response = demo.get(url)
        page = response.get_data(as_text=True)
        assert response.status_code == 404, url
        assert f"Project &#39;{other_tenant.project}&#39; not found" in page
        assert "unit-milliseconds" not in page
        if url.startswith("/usage?"):  # the page shows the refusal above its form
            assert 'data-testid="usage-error"' in page and 'data-testid="usage-form"' in page


@pytest.mark.parametrize("query, reason", [
    ("start=yesterday", "&#39;yesterday&#39; is not a date or time"),
    ("end=2024-13-01", "&#39;2024-13-01&#39; is not a date or time"),
    ("start=2024-05-02&end=2024-05-01", "The end must be after the start."),
    ("start=2024-05-01&end=2024-05-01T00:00:00Z", "The end must be after the start."),
    ("start=2999-01-01", "The start must be before now (the end)."),
    ("end=2999-01-01", "The end is in the future"),
    ("start=" + "1" * 65, "Field cannot be longer than 64 characters."),
])
def test_bad_periods_are_refused_with_the_reason(demo, query, reason):
    response = demo.get(f"/usage?{query}")
    page = response.get_data(as_text=True)
    assert response.status_code == 400
    assert reason in page and 'data-testid="usage-error"' in page and 'data-testid="usage-form"' in page
    assert demo.get(f"/usage.csv?{query}").status_code == 400


def test_admin_picks_a_project(admin_web, ran):
    tenant, made, begin, end = ran
    page = admin_web.get("/usage").get_data(as_text=True)
    assert "Usage of admin" in page and '<select id="project" name="project">' in page
    assert f'<option value="{tenant.project}">' in page
    response = admin_web.get(f"/usage?project={tenant.project}&start={iso(begin)}&end={iso(end)}")
    page = response.get_data(as_text=True)
    assert response.status_code == 200, page
    assert f"Usage of {tenant.project}" in page and f'<option selected value="{tenant.project}">' in page
    assert cells(page, made.id)[0][:2] == ["metered", "(deleted)"]
    assert admin_web.get("/usage?project=no-such-project").status_code == 404


def test_the_page_is_fast_with_2000_usage_records(app, cloud, admin, store):
    """2,000 closed records (200 deleted instances, 10 intervals each, two flavors),
    written to etcd as the control plane writes them: the page and the CSV stay fast."""
    from control.metering.usage import UsageRecord
    from control.store import keys
    from control.store.etcd import Txn

    tenant = make_tenant(cloud, admin, "many")
    t0 = int((datetime.now(UTC) - timedelta(days=1)).timestamp() * 1000)
    try:
        for batch in range(20):
            txn = Txn()
            for n in range(batch * 10, batch * 10 + 10):
                instance_id = str(uuid.UUID(int=n))
                for k in range(10):
                    start = t0 + k * 60_000
                    record = UsageRecord(project=tenant.project, instance_id=instance_id,
                                         name=f"vm{n}", flavor="tiny" if k < 5 else "small",
                                         state="running" if k % 2 else "stopped", vcpus=1,
                                         memory_mb=256, disk_gb=1, start_ms=start, end_ms=start + 60_000)
                    txn.put(keys.usage_record(tenant.project, instance_id, start),
                            record.model_dump(exclude={"open"}))
            assert store.commit(txn)
        web = Web(app).login(tenant.username, tenant.password)
        period = f"?start={iso(datetime.fromtimestamp(t0 / 1000 - 60, UTC))}"
        stub = usage_pb2_grpc.UsageServiceStub(tenant.api.channel)
        request = upb.GetProjectUsageRequest(start=Timestamp(seconds=t0 // 1000 - 60))
        timings = {"page": best_ms(lambda: web.get("/usage" + period)),
                   "csv": best_ms(lambda: web.get("/usage.csv" + period)),
                   # The API's share: the same query straight to GetProjectUsage.
                   "api": best_ms(lambda: stub.GetProjectUsage(request))}
        # 400 rows (200 instances x 2 flavors), in pages of 200; the totals are of all of them.
        page = web.get("/usage" + period).get_data(as_text=True)
        assert f"{200 * 10 * 60_000:,} unit-milliseconds" in page
        assert "Rows 1–200 of 400 (page 1 of 2" in page and 'rel="prev"' not in page
        next_url = re.search(r'href="([^"]+)" rel="next"', page).group(1).replace("&amp;", "&")
        second = web.get(next_url).get_data(as_text=True)
        assert "Rows 201–400 of 400" in second and 'rel="next"' not in second
        table = [re.findall(r'<tr data-id="([^"]+)">\s*<td[^>]*><span>(\w+)', p) for p in (page, second)]
        assert len(table[0]) == len(table[1]) == 200
        names = [name for _, name in table[0] + table[1]]
        assert names == sorted(names) and len(set(table[0] + table[1])) == 200  # each twice: 2 flavors
        assert web.get("/usage" + period + "&page=x").status_code == 400
        lines = list(csv.DictReader(io.StringIO(web.get("/usage.csv" + period).get_data(as_text=True))))
        assert len(lines) == 401 and lines[-1]["instance_hours"] == "33.333333"
        (OUTPUT / "dashboard").mkdir(parents=True, exist_ok=True)
        (OUTPUT / "dashboard" / "usage-timings.json").write_text(json.dumps(
            {"records": 2000, "rows": 400, **{f"{k}_ms": v for k, v in timings.items()}}, indent=2) + "\n")
        # Loose: catches a page that went quadratic, not a slow machine.
        assert timings["page"] < 3000 and timings["csv"] < 3000, timings
    finally:
        admin.identity.DeleteProject(ipb.DeleteProjectRequest(name=tenant.project))
        assert store.list(keys.usage_records(tenant.project)) == []
