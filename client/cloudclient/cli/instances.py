"""cloudctl instance commands."""


import json
import sys
import time
import uuid
from typing import Any, BinaryIO

import click
from cloudapi.v1 import compute_pb2 as pb
from rich.table import Table

from cloudclient.cli.base import (
    INSTANCE_COLUMNS,
    CloudGroup,
    api,
    as_dict,
    build_failed,
    cell,
    cli,
    err,
    instance_dict,
    operate,
    out,
    output_option,
    print_instance,
    print_rows,
    timeout_option,
    wait_for,
    wait_option,
)


@cli.group(cls=CloudGroup)
def instance() -> None:
    """Virtual machines."""


# ---------------------------------------------------------------- instances




@instance.command("create")
@click.option("--name", required=True, help="1-63 characters from A-Z a-z 0-9 . _ -")
@click.option("--flavor", "flavor_name", required=True)
@click.option("--image", "image_ref", default="",
              help="image id or name (default: the cloud's default image)")
@click.option("--request-id", default="", help="idempotency key; default: a new one")
@click.option("--wait", is_flag=True, help="wait until ACTIVE or ERROR; exit non-zero on ERROR")
@click.option("--timeout", default=300.0, show_default=True)
@click.option("--group", default="", help="server group to join (see cloudctl server-group)")
@click.option("--key", "key_name", default="", help="keypair for the guest (see cloudctl keypair)")
@click.option("--user-data", "user_data_file", type=click.File("rb"), default=None,
              help="file given to the guest as cloud-init user-data (a script or #cloud-config; "
                   "at most 64 KiB)")
@click.option("--count", type=int, default=0,
              help="scale out: NAME-1..NAME-COUNT, quota and hosts claimed for all or none")
@click.option("--min-count", type=int, default=0, help="with --count: accept as few as this")
@click.option("--network", "networks", multiple=True,
              help="a network (id or name) to put a NIC on; repeat for several, in order "
                   "(default: the project's \"default\" network)")
@click.option("--security-group", "security_groups", multiple=True,
              help="a security group (id or name) to put it in; repeat for several "
                   "(default: the project's \"default\" group)")
@click.option("--dry-run", is_flag=True,
              help="show the host it would go to and why others can't take it; create nothing")
@output_option
@click.pass_context
def instance_create(ctx: click.Context, name: str, flavor_name: str, image_ref: str,
                    request_id: str, wait: bool, timeout: float, group: str, key_name: str,
                    user_data_file: BinaryIO | None, count: int, min_count: int,
                    networks: tuple[str, ...], security_groups: tuple[str, ...], dry_run: bool,
                    output: str) -> None:
    """Create an instance (or, with --count, several); --wait follows its build."""
    user_data = user_data_file.read() if user_data_file else b""
    # CreateInstancesRequest has no networks (yet): refuse rather than ignore them.
    if count and networks:
        raise click.UsageError("--network does not go with --count: create them one by one")
    if count:
        create_many(ctx, pb.CreateInstancesRequest(
            name=name, flavor=flavor_name, image=image_ref, count=count, min_count=min_count,
            request_id=request_id or str(uuid.uuid4()), key_name=key_name, user_data=user_data,
            group=group, security_groups=list(security_groups)), wait, timeout, output)
        return
    request = pb.CreateInstanceRequest(name=name, flavor=flavor_name, image=image_ref,
                                       request_id=request_id or str(uuid.uuid4()), group=group,
                                       key_name=key_name, user_data=user_data,
                                       networks=list(networks),
                                       security_groups=list(security_groups))
    if dry_run:
        preview = api(ctx).instances.PreviewPlacement(request)
        if output == "json":
            click.echo(json.dumps(as_dict(preview), indent=2))
        else:
            out.print(f"would go to: {preview.host or 'no host'}", highlight=False)
            out.print(f"hosts: {preview.summary}", highlight=False)
        sys.exit(0 if preview.host else 1)
    created = api(ctx).instances.CreateInstance(request)
    if wait:
        created = wait_for(ctx, created.id, until_gone=False, timeout_s=timeout)
    print_instance(created, output)
    if build_failed(created):
        sys.exit(1)


def create_many(ctx: click.Context, request: pb.CreateInstancesRequest, wait: bool, timeout: float,
                output: str) -> None:
    made = api(ctx).instances.CreateInstances(request).instances
    err.print(f"{len(made)} instances requested", highlight=False)
    if wait:
        made = [wait_for(ctx, i.id, until_gone=False, timeout_s=timeout) for i in made]
    print_rows([instance_dict(i) for i in made], INSTANCE_COLUMNS, output)
    if any(build_failed(i) for i in made):
        sys.exit(1)


@instance.command("list")
@output_option
@click.pass_context
def instance_list(ctx: click.Context, output: str) -> None:
    """The project's instances."""
    instances = api(ctx).instances.ListInstances(pb.ListInstancesRequest()).instances
    print_rows([instance_dict(i) for i in instances], INSTANCE_COLUMNS, output)


@instance.command("show")
@click.argument("instance_ref")
@output_option
@click.pass_context
def instance_show(ctx: click.Context, instance_ref: str, output: str) -> None:
    """One instance, by id or name."""
    print_instance(api(ctx).instances.GetInstance(pb.GetInstanceRequest(id_or_name=instance_ref)),
                   output)


@instance.command("set-security-groups")
@click.argument("instance_ref")
@click.argument("groups", nargs=-1, required=True)
@output_option
@click.pass_context
def instance_set_security_groups(ctx: click.Context, instance_ref: str, groups: tuple[str, ...],
                                 output: str) -> None:
    """Put an instance in exactly these security groups (ids or names), live."""
    print_instance(api(ctx).instances.SetInstanceSecurityGroups(pb.SetInstanceSecurityGroupsRequest(
        id_or_name=instance_ref, security_groups=list(groups))), output)


@instance.command("console")
@click.argument("instance_ref")
@click.option("--bytes", "max_bytes", default=65536, show_default=True,
              help="how much of the end of the log to show")
@click.pass_context
def instance_console(ctx: click.Context, instance_ref: str, max_bytes: int) -> None:
    """The end of the guest's serial console."""
    result = api(ctx).instances.GetConsoleOutput(
        pb.GetConsoleOutputRequest(id_or_name=instance_ref, max_bytes=max_bytes))
    click.echo(result.output, nl=False)


@instance.command("delete")
@click.argument("instance_ref")
@click.option("--wait", is_flag=True, help="wait until the instance is gone")
@click.option("--timeout", default=300.0, show_default=True)
@click.pass_context
def instance_delete(ctx: click.Context, instance_ref: str, wait: bool, timeout: float) -> None:
    """Delete an instance, whatever its state; nothing of it is left behind."""
    deleted = api(ctx).instances.DeleteInstance(
        pb.DeleteInstanceRequest(id_or_name=instance_ref, request_id=str(uuid.uuid4())))
    err.print(f"{deleted.name}: {deleted.status}", highlight=False)
    if wait:
        wait_for(ctx, deleted.id, until_gone=True, timeout_s=timeout)


@instance.command("stop")
@click.argument("instance_ref")
@wait_option
@timeout_option
@output_option
@click.pass_context
def instance_stop(ctx: click.Context, instance_ref: str, wait: bool, timeout: float,
                  output: str) -> None:
    """Shut the guest down (cleanly, then powered off after a timeout)."""
    operate(ctx, api(ctx).instances.StopInstance, pb.InstanceOperationRequest(
        id_or_name=instance_ref, request_id=str(uuid.uuid4())), wait, timeout, output)


@instance.command("start")
@click.argument("instance_ref")
@wait_option
@timeout_option
@output_option
@click.pass_context
def instance_start(ctx: click.Context, instance_ref: str, wait: bool, timeout: float,
                   output: str) -> None:
    operate(ctx, api(ctx).instances.StartInstance, pb.InstanceOperationRequest(
        id_or_name=instance_ref, request_id=str(uuid.uuid4())), wait, timeout, output)


@instance.command("reboot")
@click.argument("instance_ref")
@click.option("--hard", is_flag=True, help="reset instead of a clean restart")
@wait_option
@timeout_option
@output_option
@click.pass_context
def instance_reboot(ctx: click.Context, instance_ref: str, hard: bool, wait: bool, timeout: float,
                    output: str) -> None:
    operate(ctx, api(ctx).instances.RebootInstance, pb.InstanceOperationRequest(
        id_or_name=instance_ref, request_id=str(uuid.uuid4()), hard=hard), wait, timeout, output)


@instance.command("scale")
@click.argument("instance_ref")
@click.option("--vcpus", type=int, default=0)
@click.option("--memory", "memory_mb", type=int, default=0, help="MiB")
@click.option("--disk", "disk_gb", type=int, default=0, help="GiB (only grows)")
@wait_option
@timeout_option
@output_option
@click.pass_context
def instance_scale(ctx: click.Context, instance_ref: str, vcpus: int, memory_mb: int,
                   disk_gb: int, wait: bool, timeout: float, output: str) -> None:
    """Change vCPUs, memory or disk; live, without a restart, when running."""
    operate(ctx, api(ctx).instances.ScaleInstance, pb.ScaleInstanceRequest(
        id_or_name=instance_ref, vcpus=vcpus, memory_mb=memory_mb, disk_gb=disk_gb,
        request_id=str(uuid.uuid4())), wait, timeout, output)


@instance.command("resize")
@click.argument("instance_ref")
@click.option("--flavor", "flavor_name", required=True)
@wait_option
@timeout_option
@output_option
@click.pass_context
def instance_resize(ctx: click.Context, instance_ref: str, flavor_name: str, wait: bool,
                    timeout: float, output: str) -> None:
    """Move to another flavor (stops, resizes, starts again); the disk only grows."""
    operate(ctx, api(ctx).instances.ResizeInstance, pb.ResizeInstanceRequest(
        id_or_name=instance_ref, flavor=flavor_name, request_id=str(uuid.uuid4())), wait, timeout,
        output)


@instance.command("rename")
@click.argument("instance_ref")
@click.argument("new_name")
@output_option
@click.pass_context
def instance_rename(ctx: click.Context, instance_ref: str, new_name: str, output: str) -> None:
    print_instance(api(ctx).instances.RenameInstance(pb.RenameInstanceRequest(
        id_or_name=instance_ref, name=new_name, request_id=str(uuid.uuid4()))), output)


@instance.command("stats")
@click.argument("instance_ref")
@click.option("--interval", default=1.0, show_default=True,
              help="seconds between the two samples CPU utilisation is computed from")
@output_option
@click.pass_context
def instance_stats(ctx: click.Context, instance_ref: str, interval: float, output: str) -> None:
    """CPU, memory (balloon) and disk I/O as the hypervisor sees them."""
    stub = api(ctx).instances
    first = stub.GetInstanceStats(pb.GetInstanceRequest(id_or_name=instance_ref))
    time.sleep(interval)
    second = stub.GetInstanceStats(pb.GetInstanceRequest(id_or_name=instance_ref))
    # Numbers stay numbers (protobuf's JSON mapping would quote the 64-bit ones).
    data: dict[str, Any] = {f.name: getattr(second, f.name) for f in second.DESCRIPTOR.fields}
    elapsed = second.sampled_at - first.sampled_at
    vcpus = max(second.vcpus, 1)
    data["cpu_percent"] = round(100 * (second.cpu_time_ns - first.cpu_time_ns)
                                / (elapsed * 1e9 * vcpus), 1) if elapsed > 0 else 0.0
    if output == "json":
        click.echo(json.dumps(data, indent=2))
        return
    table = Table("field", "value", show_header=False)
    for key in ["power_state", "vcpus", "cpu_percent", "memory_entitled_kb", "memory_actual_kb",
                "memory_reclaimed_kb", "memory_available_kb", "memory_unused_kb", "memory_usable_kb",
                "memory_rss_kb", "disk_read_bytes", "disk_write_bytes", "disk_read_requests",
                "disk_write_requests"]:
        table.add_row(key, cell(data.get(key)))
    out.print(table)


@instance.command("actions")
@click.argument("instance_ref")
@output_option
@click.pass_context
def instance_actions(ctx: click.Context, instance_ref: str, output: str) -> None:
    """Every operation on the instance: who, when, how it went."""
    found = api(ctx).instances.ListInstanceActions(pb.ListInstanceActionsRequest(id_or_name=instance_ref))
    print_rows([as_dict(a) for a in found.actions],
               ["action", "user", "start", "end", "result", "error", "request_id"], output)
