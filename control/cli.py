"""cloudctl: the command-line client of the cloud's public gRPC API.

The API endpoint comes from $CLOUD_ENDPOINT, else from the config file
($CLOUD_CONFIG, default ~/.config/cloudctl/config.toml, written by `make up`).
"""

from __future__ import annotations

import json
import os
import sys
import time
import tomllib
import uuid
from pathlib import Path
from typing import Any

import click
import grpc
from cloudapi.v1 import compute_pb2 as pb
from cloudapi.v1 import compute_pb2_grpc as pb_grpc
from google.protobuf.json_format import MessageToDict
from rich.console import Console
from rich.table import Table

DEFAULT_ENDPOINT = "127.0.0.1:50051"
# Piped output is not cut to 80 columns: ids must stay whole for scripts and logs.
out = Console(width=None if sys.stdout.isatty() else 400)
err = Console(stderr=True)


def config_path() -> Path:
    return Path(os.environ.get("CLOUD_CONFIG") or Path.home() / ".config/cloudctl/config.toml")


def endpoint() -> str:
    if os.environ.get("CLOUD_ENDPOINT"):
        return os.environ["CLOUD_ENDPOINT"]
    path = config_path()
    if path.exists():
        with open(path, "rb") as f:
            return tomllib.load(f).get("endpoint", DEFAULT_ENDPOINT)
    return DEFAULT_ENDPOINT


class Api:
    def __init__(self, target: str):
        self.target = target
        channel = grpc.insecure_channel(target)
        self.instances = pb_grpc.InstanceServiceStub(channel)
        self.flavors = pb_grpc.FlavorServiceStub(channel)
        self.images = pb_grpc.ImageServiceStub(channel)


def api(ctx: click.Context) -> Api:
    return ctx.ensure_object(dict).setdefault("api", Api(endpoint()))


def as_dict(message: Any) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True,
                         always_print_fields_with_no_presence=True)


def instance_dict(i: pb.Instance) -> dict[str, Any]:
    data = as_dict(i)
    if not i.HasField("fault"):
        data["fault"] = None
    return data


INSTANCE_COLUMNS = ["id", "name", "status", "flavor", "host", "addresses"]


def print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    table = Table(*columns)
    for row in rows:
        table.add_row(*[", ".join(v) if isinstance(v := row.get(c, ""), list) else str(v or "")
                        for c in columns])
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
    for key in ["id", "name", "status", "task_state", "power_state", "flavor", "vcpus",
                "memory_mb", "disk_gb", "image", "host", "addresses", "created_at",
                "launched_at"]:
        value = data.get(key)
        table.add_row(key, ", ".join(value) if isinstance(value, list) else str(value or ""))
    if data["fault"]:
        table.add_row("fault", f"[red]{data['fault']['phase']}: {data['fault']['message']}[/red]")
    out.print(table)


output_option = click.option("-o", "--output", type=click.Choice(["table", "json"]),
                             default="table", show_default=True)


class CloudGroup(click.Group):
    """Turns gRPC errors into one readable line and a non-zero exit."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except grpc.RpcError as exc:
            code = exc.code()
            detail = exc.details()
            if code == grpc.StatusCode.UNAVAILABLE and "failed to connect" in (detail or ""):
                detail = f"cannot reach the cloud API at {endpoint()} ({detail})"
            err.print(f"[red]error[/red] ({code.name}): {detail}", highlight=False)
            sys.exit(1)


@click.group(cls=CloudGroup)
def cli() -> None:
    """Manage virtual machines in the cloud."""


# ---------------------------------------------------------------- flavors, images

@cli.group(cls=CloudGroup)
def flavor() -> None:
    """Instance types (vCPUs, memory, disk)."""


@flavor.command("list")
@output_option
@click.pass_context
def flavor_list(ctx: click.Context, output: str) -> None:
    flavors = api(ctx).flavors.ListFlavors(pb.ListFlavorsRequest()).flavors
    print_rows([as_dict(f) for f in flavors], ["name", "vcpus", "memory_mb", "disk_gb"], output)


@cli.group(cls=CloudGroup)
def image() -> None:
    """Bootable images."""


@image.command("list")
@output_option
@click.pass_context
def image_list(ctx: click.Context, output: str) -> None:
    images = api(ctx).images.ListImages(pb.ListImagesRequest()).images
    print_rows([as_dict(i) for i in images],
               ["id", "name", "os", "status", "min_disk_gb", "min_memory_mb"], output)


# ---------------------------------------------------------------- instances

@cli.group(cls=CloudGroup)
def instance() -> None:
    """Virtual machines."""


def wait_for(ctx: click.Context, id_or_name: str, until_gone: bool, timeout_s: float) -> pb.Instance | None:
    """Poll until the instance leaves its transitional state, showing each phase."""
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
            if not until_gone and current.status in ("ACTIVE", "ERROR"):
                return current
            time.sleep(0.2)
    err.print(f"[red]timed out[/red] after {timeout_s:.0f}s; last status: {shown}")
    sys.exit(2)


@instance.command("create")
@click.option("--name", required=True, help="1-63 characters from A-Z a-z 0-9 . _ -")
@click.option("--flavor", "flavor_name", required=True)
@click.option("--image", "image_ref", default="",
              help="image id or name (default: the cloud's default image)")
@click.option("--request-id", default="", help="idempotency key; default: a new one")
@click.option("--wait", is_flag=True, help="wait until ACTIVE or ERROR; exit non-zero on ERROR")
@click.option("--timeout", default=300.0, show_default=True)
@output_option
@click.pass_context
def instance_create(ctx: click.Context, name: str, flavor_name: str, image_ref: str,
                    request_id: str, wait: bool, timeout: float, output: str) -> None:
    created = api(ctx).instances.CreateInstance(pb.CreateInstanceRequest(
        name=name, flavor=flavor_name, image=image_ref,
        request_id=request_id or str(uuid.uuid4())))
    if wait:
        created = wait_for(ctx, created.id, until_gone=False, timeout_s=timeout)
    print_instance(created, output)
    if created.status == "ERROR":
        sys.exit(1)


@instance.command("list")
@output_option
@click.pass_context
def instance_list(ctx: click.Context, output: str) -> None:
    instances = api(ctx).instances.ListInstances(pb.ListInstancesRequest()).instances
    print_rows([instance_dict(i) for i in instances], INSTANCE_COLUMNS, output)


@instance.command("show")
@click.argument("instance_ref")
@output_option
@click.pass_context
def instance_show(ctx: click.Context, instance_ref: str, output: str) -> None:
    print_instance(api(ctx).instances.GetInstance(pb.GetInstanceRequest(id_or_name=instance_ref)),
                   output)


@instance.command("console")
@click.argument("instance_ref")
@click.option("--bytes", "max_bytes", default=65536, show_default=True,
              help="how much of the end of the log to show")
@click.pass_context
def instance_console(ctx: click.Context, instance_ref: str, max_bytes: int) -> None:
    result = api(ctx).instances.GetConsoleOutput(
        pb.GetConsoleOutputRequest(id_or_name=instance_ref, max_bytes=max_bytes))
    click.echo(result.output, nl=False)


@instance.command("delete")
@click.argument("instance_ref")
@click.option("--wait", is_flag=True, help="wait until the instance is gone")
@click.option("--timeout", default=300.0, show_default=True)
@click.pass_context
def instance_delete(ctx: click.Context, instance_ref: str, wait: bool, timeout: float) -> None:
    deleted = api(ctx).instances.DeleteInstance(
        pb.DeleteInstanceRequest(id_or_name=instance_ref, request_id=str(uuid.uuid4())))
    err.print(f"{deleted.name}: {deleted.status}", highlight=False)
    if wait:
        wait_for(ctx, deleted.id, until_gone=True, timeout_s=timeout)


def main() -> None:
    cli(obj={})


if __name__ == "__main__":
    main()
