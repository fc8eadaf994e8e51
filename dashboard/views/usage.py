"""Usage: what a project will be billed for in a period (UsageService.GetProjectUsage):
totals, a row per instance and flavor, and the same rows as CSV. Tenants see their
own project, admins choose any; the API decides, the page shows its refusal."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import grpc
from cloudapi.v1 import identity_pb2 as ipb
from cloudapi.v1 import usage_pb2 as upb
from flask import Blueprint, Response, abort, render_template, request, session, url_for
from google.protobuf.timestamp_pb2 import Timestamp
from wtforms.validators import ValidationError

from dashboard import api
from dashboard.forms import UsageForm, options, parse_utc

bp = Blueprint("usage", __name__)

MS_PER_HOUR = Decimal(3_600_000)
# The API's exact amounts (units x milliseconds) and what turns each into hours.
AMOUNTS = [("instance_ms", "Instance-hours", MS_PER_HOUR), ("vcpu_ms", "vCPU-hours", MS_PER_HOUR),
           ("ram_mib_ms", "RAM GiB-hours", MS_PER_HOUR * 1024),
           ("disk_gib_ms", "Disk GiB-hours", MS_PER_HOUR)]
STATES = ("building", "running", "stopped", "error")
SHOWN = Decimal("0.0001")  # the page's rounding, as cloudctl usage show
# The table's rows per page: 2,000 rows are 1.2 MB of HTML that Chromium took 0.8 s to
# show (200: 0.25 s). The totals and the CSV always cover every row.
ROWS_PER_PAGE = 200
# The CSV is examples/billing_exporter.py's invoice without prices: the same columns
# (but amount and currency), the same rounding (6 places, half up) and a TOTAL line.
CSV_QUANTITY = Decimal("0.000001")
CSV_COLUMNS = ["project", "period_start", "period_end", "instance_id", "instance_name", "flavor",
               "instance_hours", "vcpu_hours", "ram_gib_hours", "disk_gib_hours"]


def hours(amounts: upb.UsageAmounts) -> list[Decimal]:
    """The four amounts in hours, exact (from the integer milliseconds, not the doubles)."""
    return [Decimal(getattr(amounts, name)) / per_hour for name, _, per_hour in AMOUNTS]


def shown(value: Decimal) -> str:
    return f"{value.quantize(SHOWN, ROUND_HALF_UP):,}"


def line(instance_id: str, name: str, live: bool, flavor: str, usage: upb.Usage) -> dict[str, Any]:
    """One row: what the page shows (rounded) and the CSV writes (exact hours)."""
    exact = hours(usage.total)
    return {"instance_id": instance_id, "name": name, "live": live, "flavor": flavor, "hours": exact,
            "shown": [shown(h) for h in exact],
            "ms": [getattr(usage.total, field) for field, _, _ in AMOUNTS],
            "states": [(state, shown(Decimal(usage.by_state[state].instance_ms) / MS_PER_HOUR))
                       for state in STATES if state in usage.by_state]}


def usage_lines(report: upb.GetProjectUsageResponse) -> list[dict[str, Any]]:
    """Per instance and flavor (a resized instance has a line per flavor it had)."""
    return [line(i.instance_id, i.name, i.live, f.flavor, f.usage)
            for i in report.instances for f in i.flavors]


def _timestamp(when: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(when)
    return ts


def _iso(ts: Timestamp) -> str:
    return ts.ToDatetime(tzinfo=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _form(project_choices: bool = True) -> UsageForm:
    form = UsageForm(request.args)
    if project_choices and session.get("role") == "admin":
        found = api.call(api.client().identity.ListProjects, ipb.ListProjectsRequest()).projects
        form.project.choices = options([(p.name, p.name) for p in sorted(found, key=lambda p: p.name)])
        form.project.data = form.project.data or str(session.get("project", ""))
    return form


def _report(form: UsageForm) -> upb.GetProjectUsageResponse:
    start, end = form.period
    period = {"start": _timestamp(start), **({"end": _timestamp(end)} if end else {})}
    return api.call(api.client().usage.GetProjectUsage,
                    upb.GetProjectUsageRequest(project=form.project.data or "", **period))


def _as_input(form: UsageForm) -> None:
    """The times as a datetime-local input shows them (UTC); unparsable ones stay as typed."""
    for field in (form.start, form.end):
        try:
            if field.data:
                field.data = parse_utc(field.data).replace(tzinfo=None).isoformat(timespec="seconds")
        except ValidationError:
            pass


@bp.get("/usage")
def index() -> Any:
    form = _form()
    valid = form.validate()
    if valid and not form.start.data:
        form.start.data = form.period[0].isoformat()  # the default start, shown
    _as_input(form)
    if not valid:
        return render_template("usage.html", form=form, report=None, error=""), 400
    try:
        report = _report(form)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
            raise
        # On the page, with the form: e.g. NOT_FOUND for a project the caller may not see.
        return (render_template("usage.html", form=form, report=None, error=api.error_message(exc)),
                api.HTTP_STATUS.get(exc.code(), 502))
    csv_url = url_for("usage.download", project=report.project, start=_iso(report.start),
                      end=_iso(report.end))
    return render_template("usage.html", form=form, report=report, error="", csv_url=csv_url,
                           own=report.project == session.get("project"),
                           total=line("", "", False, "", report.usage),
                           labels=[label for _, label, _ in AMOUNTS], **_table_page(form, report))


def _table_page(form: UsageForm, report: upb.GetProjectUsageResponse) -> dict[str, Any]:
    """One page of the table, by instance name; rows are made for that page only."""
    pairs = sorted(((i, f) for i in report.instances for f in i.flavors),
                   key=lambda p: (p[0].name, p[0].instance_id, p[1].flavor))
    pages = max(1, -(-len(pairs) // ROWS_PER_PAGE))
    page = min(form.page.data or 1, pages)
    first = (page - 1) * ROWS_PER_PAGE

    def url(n: int) -> str:
        return url_for("usage.index", project=form.project.data or None, start=form.start.data,
                       end=form.end.data or None, page=n)

    return {"lines": [line(i.instance_id, i.name, i.live, f.flavor, f.usage)
                      for i, f in pairs[first:first + ROWS_PER_PAGE]],
            "count": len(pairs), "first": first + 1, "page": page, "pages": pages,
            "previous_url": url(page - 1) if page > 1 else "",
            "next_url": url(page + 1) if page < pages else ""}


@bp.get("/usage.csv")
def download() -> Any:
    form = _form(project_choices=False)  # no select to fill: an empty project is one's own
    if not form.validate():
        abort(400, description="; ".join(e for errors in form.errors.values() for e in errors))
    report = _report(form)
    period = {"project": report.project,
              "period_start": report.start.ToDatetime(tzinfo=UTC).isoformat(),
              "period_end": report.end.ToDatetime(tzinfo=UTC).isoformat()}
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in [*usage_lines(report), line("TOTAL", "", False, "", report.usage)]:
        values = [str(h.quantize(CSV_QUANTITY, ROUND_HALF_UP)) for h in row["hours"]]
        writer.writerow({**period, "instance_id": row["instance_id"], "instance_name": row["name"],
                         "flavor": row["flavor"], **dict(zip(CSV_COLUMNS[6:], values, strict=True))})
    name = (f"usage-{report.project}-{report.start.ToDatetime():%Y%m%dT%H%M%S}-"
            f"{report.end.ToDatetime():%Y%m%dT%H%M%S}.csv")
    return Response(out.getvalue(), mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})
