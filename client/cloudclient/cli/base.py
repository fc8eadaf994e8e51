"""What every cloudctl command shares: the API client, output as tables or
JSON, errors as one line and an exit code, waiting for operations."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click
import grpc
from cloudapi.v1 import compute_pb2 as pb
from google.protobuf.json_format import MessageToDict
from rich.console import Console
from rich.table import Table

from cloudclient.client import CloudClient, endpoint

# Piped output is not cut to 80 columns: ids must stay whole for scripts and logs.
out = Console(width=None if sys.stdout.isatty() else 400)
err = Console(stderr=True)


def api(ctx: click.Context) -> CloudClient:
    """The API client, logged in as the environment or the config file says."""
    obj = ctx.ensure_object(dict)
    if "api" not in obj:
        obj["api"] = CloudClient.from_environment()
    return obj["api"]


def as_dict(message: Any) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True,
                         always_print_fields_with_no_presence=True)


def instance_dict(i: pb.Instance) -> dict[str, Any]:
    data = as_dict(i)
    if not i.HasField("fault"):
        data["fault"] = None
    return data


FLAVOR_COLUMNS = ["name", "vcpus", "memory_mb", "disk_gb", "public", "projects", "required_traits",
                  "zone"]
INSTANCE_COLUMNS = ["id", "name", "status", "flavor", "host", "addresses"]
NIC_COLUMNS = ["network", "fixed_ip", "mac", "floating_ip"]


def cell(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return "" if value is None else str(value)


def print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    table = Table(*columns)
    for row in rows:
        table.add_row(*[cell(row.get(c)) for c in columns])
    out.print(table)


def print_rows(rows: list[dict[str, Any]], columns: list[str], output: str) -> None:
    if output == "json":
        click.echo(json.dumps(rows, indent=2))
    else:
        print_table(rows, columns)


def print_instance(i: pb.Instance, output: str) -> None:
    data = instance_dict(i)
    if output == "json":
        click.echo(json.dumps(data, indent=2))
        return
    table = Table("field", "value", show_header=False)
    for key in ["id", "name", "status", "task_state", "power_state", "allowed_actions", "flavor",
                "vcpus", "memory_mb", "disk_gb", "max_vcpus", "max_memory_mb", "image", "host",
                "addresses", "group", "created_at", "launched_at"]:
        value = data.get(key)
        table.add_row(key, cell(value))
    if i.security_groups:
        table.add_row("security_groups", ", ".join(g.name for g in i.security_groups))
    if data["fault"]:
        table.add_row("fault", f"[red]{data['fault']['phase']}: {data['fault']['message']}[/red]")
    out.print(table)
    if i.nics:  # its addresses on tenant networks
        print_table([{"network": n.network_name, "fixed_ip": n.fixed_ip, "mac": n.mac,
                      "floating_ip": n.floating_ip} for n in i.nics], NIC_COLUMNS)


def print_record(data: dict[str, Any], fields: list[str], output: str) -> None:
    """One resource: JSON, or a two-column table of its fields."""
    if output == "json":
        click.echo(json.dumps(data, indent=2))
        return
    table = Table("field", "value", show_header=False)
    for key in fields:
        table.add_row(key, cell(data.get(key)))
    out.print(table)


output_option = click.option("-o", "--output", type=click.Choice(["table", "json"]),
                             default="table", show_default=True)


class CloudGroup(click.Group):
    """Turns gRPC errors into one readable line and a non-zero exit."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except grpc.RpcError as exc:
            print_error(exc)
            sys.exit(1)


def print_error(exc: grpc.RpcError) -> None:
    code = exc.code()
    detail = exc.details()
    if code == grpc.StatusCode.UNAVAILABLE and "failed to connect" in (detail or ""):
        detail = f"cannot reach the cloud API at {endpoint()} ({detail})"
    elif code == grpc.StatusCode.UNAUTHENTICATED:
        detail = f"{detail} (cloudctl login, or set CLOUD_TOKEN or CLOUD_USERNAME/CLOUD_PASSWORD)"
    err.print(f"[red]error[/red] ({code.name}): {detail}", highlight=False)


@click.group(cls=CloudGroup)
def cli() -> None:
    """Manage virtual machines in the cloud."""


def build_over(i: pb.Instance) -> bool:
    """Its build succeeded or failed: it left BUILDING (whatever the status word says:
    e.g. SHUTOFF if the guest powered itself off at once)."""
    return i.vm_state_enum != pb.VM_STATE_BUILDING


def build_failed(i: pb.Instance) -> bool:
    return i.vm_state_enum == pb.VM_STATE_ERROR


def wait_for(ctx: click.Context, id_or_name: str, until_gone: bool, timeout_s: float) -> pb.Instance | None:
    """Poll until the instance's build is over (or, until_gone, it is gone), showing each phase."""
    stub = api(ctx).instances
    deadline = time.monotonic() + timeout_s
    shown = ""
    current = None
    with err.status("waiting...") as status:
        while time.monotonic() < deadline:
            try:
                current = stub.GetInstance(pb.GetInstanceRequest(id_or_name=id_or_name))
            except grpc.RpcError as exc:
                if until_gone and exc.code() == grpc.StatusCode.NOT_FOUND:
                    err.print(f"{id_or_name}: deleted")
                    return None
                raise
            phase = current.status + (f" ({current.task_state})" if current.task_state else "")
            if phase != shown:
                err.print(f"{current.name}: {phase}", highlight=False)
                status.update(f"{current.name}: {phase}")
                shown = phase
            if not until_gone and build_over(current):
                return current
            time.sleep(0.2)
    err.print(f"[red]timed out[/red] after {timeout_s:.0f}s; last status: {shown}")
    sys.exit(2)


def operate(ctx: click.Context, call: Any, request: Any, wait: bool, timeout: float,
            output: str) -> None:
    """Send an operation; with --wait, follow it until done, non-zero if it failed."""
    started = time.time()
    try:
        changed = call(request)
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
            raise
        print_error(exc)  # then what the API would accept instead
        refused_hint(ctx, request.id_or_name)
        sys.exit(1)
    err.print(f"{changed.name}: {changed.status}"
              + (f" ({changed.task_state})" if changed.task_state else ""), highlight=False)
    if not wait:
        return
    stub = api(ctx).instances
    deadline = time.monotonic() + timeout
    with err.status(f"{changed.name}: {changed.task_state}"):
        while True:
            current = stub.GetInstance(pb.GetInstanceRequest(id_or_name=changed.id))
            if current.task_state_enum == pb.TASK_STATE_NONE:  # no operation in flight
                break
            if time.monotonic() > deadline:
                err.print(f"[red]timed out[/red] after {timeout:.0f}s ({current.task_state})")
                sys.exit(2)
            time.sleep(0.2)
    print_instance(current, output)
    if current.HasField("fault") and current.fault.time.ToNanoseconds() / 1e9 >= started - 1:
        err.print(f"[red]failed[/red]: {current.fault.message}", highlight=False)
        sys.exit(1)


def refused_hint(ctx: click.Context, id_or_name: str) -> None:
    """After an operation refused in the instance's state: what the API accepts now."""
    try:
        now = api(ctx).instances.GetInstance(pb.GetInstanceRequest(id_or_name=id_or_name))
    except grpc.RpcError:
        return  # the refusal itself is what matters
    allowed = ", ".join(now.allowed_actions) or "none"
    err.print(f"{now.name} is {now.status}; allowed now: {allowed}", highlight=False)


wait_option = click.option("--wait", is_flag=True, help="wait until done; exit non-zero if it failed")
timeout_option = click.option("--timeout", default=300.0, show_default=True)
