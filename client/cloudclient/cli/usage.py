"""cloudctl usage commands: metered usage for billing (UsageService)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import click
from cloudapi.v1 import usage_pb2 as pb
from google.protobuf.timestamp_pb2 import Timestamp
from rich.table import Table

from cloudclient.cli.base import CloudGroup, api, as_dict, cli, out, output_option


def parse_time(value: str) -> Timestamp:
    """An ISO 8601 date or time; without a zone it is UTC."""
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO 8601 date or time "
                                 f"(e.g. 2024-05-01 or 2024-05-01T12:00:00+02:00)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    ts = Timestamp()
    ts.FromDatetime(when)
    return ts


def _iso(ts: Timestamp) -> str:
    return ts.ToDatetime(tzinfo=UTC).isoformat(timespec="seconds")


def _hours(a: pb.UsageAmounts) -> list[str]:
    return [f"{a.instance_hours:.4f}", f"{a.vcpu_hours:.4f}", f"{a.ram_gib_hours:.4f}",
            f"{a.disk_gib_hours:.4f}"]


def _state_hours(u: pb.Usage) -> str:
    return ", ".join(f"{state} {u.by_state[state].instance_hours:.4f}"
                     for state in ("building", "running", "stopped", "error") if state in u.by_state)


def period_options(f: Any) -> Any:
    f = click.option("--end", help="end of the period (ISO 8601, UTC if no zone); default: now")(f)
    f = click.option("--start", help="start of the period (ISO 8601, UTC if no zone); "
                                     "default: the start of this month (UTC)")(f)
    return click.option("--project", default="", help="admins: another project")(f)


def _period(start: str | None, end: str | None) -> dict[str, Timestamp]:
    return {**({"start": parse_time(start)} if start else {}),
            **({"end": parse_time(end)} if end else {})}


@cli.group(cls=CloudGroup)
def usage() -> None:
    """Metered usage for billing: vCPU, RAM, disk and instance hours."""


@usage.command("show")
@period_options
@output_option
@click.pass_context
def usage_show(ctx: click.Context, project: str, start: str | None, end: str | None,
               output: str) -> None:
    """A project's usage in a period: per flavor, per instance, and in total."""
    report = api(ctx).usage.GetProjectUsage(pb.GetProjectUsageRequest(project=project,
                                                                   **_period(start, end)))
    if output == "json":
        click.echo(json.dumps(as_dict(report), indent=2))
        return
    out.print(f"project {report.project}: {_iso(report.start)} .. {_iso(report.end)}",
              highlight=False)
    columns = ["instance-h", "vCPU-h", "RAM GiB-h", "disk GiB-h", "hours by state"]
    flavors = Table("flavor", "instances", *columns, title="per flavor")
    for f in report.flavors:
        flavors.add_row(f.flavor, str(f.instances), *_hours(f.usage.total), _state_hours(f.usage))
    flavors.add_row("[bold]total[/bold]", str(len(report.instances)), *_hours(report.usage.total),
                    _state_hours(report.usage))
    out.print(flavors)
    instances = Table("id", "name", "flavor", *columns, title="per instance")
    for i in report.instances:
        name = i.name if i.live else f"{i.name} (deleted)"
        for f in i.flavors:
            instances.add_row(i.instance_id, name, f.flavor, *_hours(f.usage.total),
                              _state_hours(f.usage))
    out.print(instances)


RECORD_COLUMNS = ["instance_id", "name", "state", "flavor", "vcpus", "memory_mb", "disk_gb",
                  "start", "end", "hours"]


@usage.command("records")
@period_options
@click.option("--instance", "instance_id", default="", help="only this instance (id)")
@click.option("--open/--closed-only", "include_open", default=True, show_default=True,
              help="include the live instances' current intervals")
@click.option("--page-size", default=0, help="records per API call (0: all in one)")
@output_option
@click.pass_context
def usage_records(ctx: click.Context, project: str, start: str | None, end: str | None,
                  instance_id: str, include_open: bool, page_size: int, output: str) -> None:
    """Every usage interval in a period, in (instance, start) order."""
    stub, token, rows = api(ctx).usage, "", []
    while True:
        page = stub.ListUsageRecords(pb.ListUsageRecordsRequest(
            project=project, instance_id=instance_id, include_open=include_open,
            page_size=page_size, page_token=token, **_period(start, end)))
        rows += list(page.records)
        token = page.next_page_token
        if not token:
            break
    if output == "json":
        click.echo(json.dumps([as_dict(r) for r in rows], indent=2))
        return
    table = Table(*RECORD_COLUMNS)
    for r in rows:
        table.add_row(r.instance_id, r.name, r.state + (" (open)" if r.open else ""), r.flavor,
                      str(r.vcpus), str(r.memory_mb), str(r.disk_gb), _iso(r.start), _iso(r.end),
                      f"{r.usage.instance_hours:.4f}")
    out.print(table)
