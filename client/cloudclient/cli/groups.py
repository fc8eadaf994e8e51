"""cloudctl scaling groups (`cloudctl group ...`) and instance metrics
(`cloudctl instance metrics NAME`)."""

import json
import sys
import time
import uuid
from typing import Any

import click
import grpc
from cloudapi.v1 import scaling_pb2 as spb
from rich.table import Table

from cloudclient.cli.base import (
    CloudGroup,
    api,
    as_dict,
    cell,
    cli,
    err,
    out,
    output_option,
    print_rows,
)
from cloudclient.cli.instances import instance

POLICIES = ["affinity", "anti-affinity", "soft-affinity", "soft-anti-affinity"]
GROUP_COLUMNS = ["name", "status", "current", "desired", "min_size", "max_size", "flavor",
                 "policy", "last_error"]


def _when(stamp: Any) -> str:
    if not stamp.seconds and not stamp.nanos:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp.seconds))


def _policy(g: spb.ScalingGroup) -> str:
    if not g.HasField("policy") or not g.policy.target:
        return ""
    p = g.policy
    return (f"{p.metric} {p.target:g} (out cooldown {p.scale_out_cooldown_s}s, "
            f"in {p.scale_in_cooldown_s}s)")


def group_row(g: spb.ScalingGroup) -> dict[str, Any]:
    return {**as_dict(g), "policy": _policy(g)}


def print_group(g: spb.ScalingGroup, metrics: spb.GroupMetrics | None, output: str) -> None:
    by_id = {m.instance_id: m for m in metrics.instances} if metrics else {}
    if output == "json":
        data = group_row(g)
        if metrics is not None:
            data["metrics"] = as_dict(metrics)
        click.echo(json.dumps(data, indent=2))
        return
    table = Table("field", "value", show_header=False)
    rows = [("name", g.name), ("status", g.status),
            ("size", f"{g.current} of desired {g.desired} (min {g.min_size}, max {g.max_size})"),
            ("flavor", g.flavor), ("image", g.image), ("key_name", g.key_name),
            ("server_group", f"{g.server_group} ({g.server_group_policy})" if g.server_group else ""),
            ("policy", _policy(g)),
            ("last_scaled", f"{_when(g.last_scaled_at)}: {g.last_scaling_reason}"),
            ("last_error", f"{_when(g.last_error_at)}: {g.last_error}" if g.last_error else "")]
    if metrics is not None and metrics.reporting:
        rows.append(("cpu_utilisation", f"{metrics.cpu_utilisation:.1f}% average of "
                                        f"{metrics.reporting} members over {metrics.window_s}s"))
    for key, value in rows:
        table.add_row(key, cell(value))
    out.print(table)
    members = Table("member", "status", "host", "cpu %", "memory used", "fault")
    for m in g.members:
        found = by_id.get(m.id)
        cpu = f"{found.cpu_utilisation:.1f}" if found is not None and found.fresh else ""
        memory = f"{found.memory_used_kb // 1024} MiB" if found is not None and found.memory_used_kb \
            else ""
        members.add_row(m.name, m.status, m.host, cpu, memory, m.fault)
    out.print(members)


@cli.group(cls=CloudGroup)
def group() -> None:
    """Scaling groups: instances kept at a desired size (optionally tracking CPU)."""


@group.command("create")
@click.argument("name")
@click.option("--flavor", "flavor_name", required=True)
@click.option("--image", "image_ref", default="", help="image id or name (default: the cloud's)")
@click.option("--key", "key_name", default="", help="keypair for the guests")
@click.option("--min", "min_size", type=int, default=1, show_default=True)
@click.option("--max", "max_size", type=int, default=5, show_default=True)
@click.option("--desired", type=int, default=None, help="default: --min")
@click.option("--anti-affinity", is_flag=True, help="members on different hosts (hard)")
@click.option("--server-group-policy", type=click.Choice(POLICIES), default=None,
              help="members join a server group with this policy")
@click.option("--cpu-target", type=float, default=0.0,
              help="target tracking: keep the members' average CPU %% near this")
@click.option("--scale-out-cooldown", type=int, default=60, show_default=True,
              help="seconds after a change before the policy grows the group")
@click.option("--scale-in-cooldown", type=int, default=120, show_default=True,
              help="seconds after a change before the policy shrinks the group")
@click.option("--request-id", default="", help="idempotency key; default: a new one")
@output_option
@click.pass_context
def group_create(ctx: click.Context, name: str, flavor_name: str, image_ref: str, key_name: str,
                 min_size: int, max_size: int, desired: int | None, anti_affinity: bool,
                 server_group_policy: str | None, cpu_target: float, scale_out_cooldown: int,
                 scale_in_cooldown: int, request_id: str, output: str) -> None:
    """A group of NAME-1..NAME-N, kept at the desired size (and, with --cpu-target,
    sized by its members' average CPU)."""
    if anti_affinity and server_group_policy and server_group_policy != "anti-affinity":
        raise click.UsageError("--anti-affinity and --server-group-policy disagree")
    policy = spb.TargetTrackingPolicy(metric="cpu_utilisation", target=cpu_target,
                                      scale_out_cooldown_s=scale_out_cooldown,
                                      scale_in_cooldown_s=scale_in_cooldown) if cpu_target else None
    created = api(ctx).scaling_groups.CreateScalingGroup(spb.CreateScalingGroupRequest(
        name=name, flavor=flavor_name, image=image_ref, key_name=key_name, min_size=min_size,
        max_size=max_size, desired=min_size if desired is None else desired,
        server_group_policy=server_group_policy or ("anti-affinity" if anti_affinity else ""),
        policy=policy, request_id=request_id or str(uuid.uuid4())))
    print_group(created, None, output)


def _metrics(ctx: click.Context, name: str) -> spb.GroupMetrics | None:
    try:
        return api(ctx).metrics.GetGroupMetrics(spb.GetGroupMetricsRequest(name=name))
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.UNAVAILABLE:
            err.print(f"[yellow]no metrics[/yellow]: {exc.details()}", highlight=False)
            return None
        raise


@group.command("show")
@click.argument("name")
@output_option
@click.pass_context
def group_show(ctx: click.Context, name: str, output: str) -> None:
    """The group, its members with their status and CPU, and its last error."""
    found = api(ctx).scaling_groups.GetScalingGroup(spb.GetScalingGroupRequest(name=name))
    print_group(found, _metrics(ctx, name), output)


@group.command("list")
@output_option
@click.pass_context
def group_list(ctx: click.Context, output: str) -> None:
    """The project's scaling groups."""
    stub = api(ctx).scaling_groups
    groups, token = [], ""
    while True:
        page = stub.ListScalingGroups(spb.ListScalingGroupsRequest(page_token=token))
        groups.extend(page.groups)
        token = page.next_page_token
        if not token:
            break
    print_rows([group_row(g) for g in groups], GROUP_COLUMNS, output)


@group.command("set-desired")
@click.argument("name")
@click.argument("desired", type=int)
@output_option
@click.pass_context
def group_set_desired(ctx: click.Context, name: str, desired: int, output: str) -> None:
    """Set the size the control plane converges the group to."""
    changed = api(ctx).scaling_groups.SetDesired(spb.SetDesiredRequest(
        name=name, desired=desired, request_id=str(uuid.uuid4())))
    err.print(f"{name}: desired {changed.desired} ({changed.current} now)", highlight=False)


@group.command("delete")
@click.argument("name")
@click.option("--wait", is_flag=True, help="wait until the group and its members are gone")
@click.option("--timeout", default=300.0, show_default=True)
@click.pass_context
def group_delete(ctx: click.Context, name: str, wait: bool, timeout: float) -> None:
    """Delete the group and every member."""
    stub = api(ctx).scaling_groups
    deleting = stub.DeleteScalingGroup(spb.DeleteScalingGroupRequest(
        name=name, request_id=str(uuid.uuid4())))
    err.print(f"{name}: deleting ({len(deleting.members)} members)", highlight=False)
    if not wait:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            stub.GetScalingGroup(spb.GetScalingGroupRequest(name=name))
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                err.print(f"{name}: deleted", highlight=False)
                return
            raise
        time.sleep(0.5)
    err.print(f"[red]timed out[/red] after {timeout:.0f}s")
    sys.exit(2)


@instance.command("metrics")
@click.argument("instance_ref")
@click.option("--window", "window_s", type=int, default=0,
              help="seconds to average over (default: the cloud's, 60)")
@output_option
@click.pass_context
def instance_metrics(ctx: click.Context, instance_ref: str, window_s: int, output: str) -> None:
    """CPU utilisation, memory and disk I/O its agent reported, over a window."""
    found = api(ctx).metrics.GetInstanceMetrics(spb.GetInstanceMetricsRequest(
        id_or_name=instance_ref, window_s=window_s))
    if output == "json":
        click.echo(json.dumps(as_dict(found), indent=2))
        return
    table = Table("field", "value", show_header=False)
    for key, value in [
            ("instance", f"{found.instance_name} ({found.instance_id})"),
            ("updated_at", _when(found.updated_at) + ("" if found.fresh else " (not fresh)")),
            ("window", f"{found.window_s}s, {len(found.samples)} samples"),
            ("vcpus", found.vcpus), ("cpu_utilisation", f"{found.cpu_utilisation:.1f}%"),
            ("memory_used", f"{found.memory_used_kb // 1024} MiB of "
                            f"{found.memory_available_kb // 1024} MiB"),
            ("disk_read", f"{found.disk_read_bytes_per_s:.0f} B/s"),
            ("disk_write", f"{found.disk_write_bytes_per_s:.0f} B/s")]:
        table.add_row(key, cell(value))
    out.print(table)
