"""cloudctl server groups, hosts, aggregates and capacity (admin)."""


import json
from typing import Any

import click
from cloudapi.v1 import compute_pb2 as pb
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
    print_table,
)

# ---------------------------------------------------------------- server groups

@cli.group("server-group", cls=CloudGroup)
def server_group() -> None:
    """Instances that should or must (not) share a host."""


@server_group.command("create")
@click.argument("name")
@click.option("--policy", required=True,
              type=click.Choice(["affinity", "anti-affinity", "soft-affinity", "soft-anti-affinity"]))
@output_option
@click.pass_context
def server_group_create(ctx: click.Context, name: str, policy: str, output: str) -> None:
    group = api(ctx).groups.CreateServerGroup(pb.CreateServerGroupRequest(name=name, policy=policy))
    print_rows([as_dict(group)], ["name", "policy", "members"], output)


@server_group.command("list")
@output_option
@click.pass_context
def server_group_list(ctx: click.Context, output: str) -> None:
    groups = api(ctx).groups.ListServerGroups(pb.ListServerGroupsRequest()).groups
    print_rows([as_dict(g) for g in groups], ["name", "policy", "members"], output)


@server_group.command("show")
@click.argument("name")
@output_option
@click.pass_context
def server_group_show(ctx: click.Context, name: str, output: str) -> None:
    group = api(ctx).groups.GetServerGroup(pb.GetServerGroupRequest(name=name))
    print_rows([as_dict(group)], ["name", "policy", "members"], output)


@server_group.command("delete")
@click.argument("name")
@click.pass_context
def server_group_delete(ctx: click.Context, name: str) -> None:
    api(ctx).groups.DeleteServerGroup(pb.DeleteServerGroupRequest(name=name))
    err.print(f"server group {name} deleted", highlight=False)


# ---------------------------------------------------------------- hosts (admin)

def host_row(h: pb.HostInfo) -> dict[str, Any]:
    row = {**as_dict(h), "state": ("up" if h.up else "DOWN") + ("" if h.enabled else " disabled")}
    for item in h.inventory:
        row[item.resource_class] = f"{item.used}/{item.capacity}"
    return row


HOST_COLUMNS = ["name", "state", "zone", "traits", "aggregates", "instances", "VCPU", "MEMORY_MB",
                "DISK_GB"]


@cli.group(cls=CloudGroup)
def host() -> None:
    """Compute hosts: capacity, usage, maintenance (admin)."""


@host.command("list")
@output_option
@click.pass_context
def host_list(ctx: click.Context, output: str) -> None:
    hosts = api(ctx).hosts.ListHosts(pb.ListHostsRequest()).hosts
    rows = [host_row(h) for h in hosts]
    print_rows(rows if output == "table" else [as_dict(h) for h in hosts], HOST_COLUMNS, output)


def print_host(h: pb.HostInfo, output: str) -> None:
    if output == "json":
        click.echo(json.dumps(as_dict(h), indent=2))
        return
    row = host_row(h)
    table = Table("field", "value", show_header=False)
    for key in ["name", "address", "state", "disabled_reason", "zone", "traits", "instances",
                "virt_type", "hypervisor", "last_heartbeat"]:
        table.add_row(key, cell(row.get(key)))
    out.print(table)
    print_table([{**as_dict(i), "used/capacity": f"{i.used}/{i.capacity}"} for i in h.inventory],
                ["resource_class", "total", "reserved", "allocation_ratio", "used/capacity"])


@host.command("show")
@click.argument("name")
@output_option
@click.pass_context
def host_show(ctx: click.Context, name: str, output: str) -> None:
    print_host(api(ctx).hosts.GetHost(pb.GetHostRequest(name=name)), output)


@host.command("disable")
@click.argument("name")
@click.option("--reason", default="", help="why (shown in host show)")
@click.pass_context
def host_disable(ctx: click.Context, name: str, reason: str) -> None:
    """Maintenance: no new instances on this host."""
    print_host(api(ctx).hosts.UpdateHost(pb.UpdateHostRequest(
        name=name, enabled=False, disabled_reason=reason)), "table")


@host.command("enable")
@click.argument("name")
@click.pass_context
def host_enable(ctx: click.Context, name: str) -> None:
    print_host(api(ctx).hosts.UpdateHost(pb.UpdateHostRequest(name=name, enabled=True)), "table")


@host.command("set")
@click.argument("name")
@click.option("--zone", default=None, help="availability zone")
@click.option("--add-trait", "add", multiple=True)
@click.option("--remove-trait", "remove", multiple=True)
@click.pass_context
def host_set(ctx: click.Context, name: str, zone: str | None, add: tuple[str, ...],
             remove: tuple[str, ...]) -> None:
    request = pb.UpdateHostRequest(name=name, add_traits=list(add), remove_traits=list(remove))
    if zone is not None:
        request.zone = zone
    print_host(api(ctx).hosts.UpdateHost(request), "table")


@host.command("inventory")
@click.argument("name")
@click.argument("resource_class", type=click.Choice(["VCPU", "MEMORY_MB", "DISK_GB"]))
@click.option("--reserved", type=int, default=None)
@click.option("--ratio", "allocation_ratio", type=float, default=None, help="overcommit ratio")
@click.pass_context
def host_inventory(ctx: click.Context, name: str, resource_class: str, reserved: int | None,
                   allocation_ratio: float | None) -> None:
    """Override a host's reserved amount or allocation ratio (kept across agent reports)."""
    request = pb.SetInventoryRequest(name=name, resource_class=resource_class)
    if reserved is not None:
        request.reserved = reserved
    if allocation_ratio is not None:
        request.allocation_ratio = allocation_ratio
    print_host(api(ctx).hosts.SetInventory(request), "table")


@cli.group(cls=CloudGroup)
def aggregate() -> None:
    """Host aggregates: hosts sharing traits and maybe a zone (admin)."""


AGGREGATE_COLUMNS = ["name", "zone", "traits", "hosts"]


@aggregate.command("create")
@click.argument("name")
@click.option("--zone", default="")
@click.option("--trait", "traits", multiple=True)
@output_option
@click.pass_context
def aggregate_create(ctx: click.Context, name: str, zone: str, traits: tuple[str, ...],
                     output: str) -> None:
    created = api(ctx).hosts.CreateAggregate(pb.CreateAggregateRequest(aggregate=pb.Aggregate(
        name=name, zone=zone, traits=list(traits))))
    print_rows([as_dict(created)], AGGREGATE_COLUMNS, output)


@aggregate.command("list")
@output_option
@click.pass_context
def aggregate_list(ctx: click.Context, output: str) -> None:
    aggregates = api(ctx).hosts.ListAggregates(pb.ListAggregatesRequest()).aggregates
    print_rows([as_dict(a) for a in aggregates], AGGREGATE_COLUMNS, output)


@aggregate.command("add-host")
@click.argument("name")
@click.argument("host_name")
@click.pass_context
def aggregate_add_host(ctx: click.Context, name: str, host_name: str) -> None:
    updated = api(ctx).hosts.AddHostToAggregate(pb.AggregateHostRequest(aggregate=name,
                                                                        host=host_name))
    print_table([as_dict(updated)], AGGREGATE_COLUMNS)


@aggregate.command("remove-host")
@click.argument("name")
@click.argument("host_name")
@click.pass_context
def aggregate_remove_host(ctx: click.Context, name: str, host_name: str) -> None:
    updated = api(ctx).hosts.RemoveHostFromAggregate(pb.AggregateHostRequest(aggregate=name,
                                                                             host=host_name))
    print_table([as_dict(updated)], AGGREGATE_COLUMNS)


@aggregate.command("delete")
@click.argument("name")
@click.pass_context
def aggregate_delete(ctx: click.Context, name: str) -> None:
    api(ctx).hosts.DeleteAggregate(pb.DeleteAggregateRequest(name=name))
    err.print(f"aggregate {name} deleted", highlight=False)


@cli.command("capacity")
@click.option("--flavor", "flavor_name", required=True)
@output_option
@click.pass_context
def capacity(ctx: click.Context, flavor_name: str, output: str) -> None:
    """How many more instances of a flavor fit, per host and in total (admin)."""
    result = api(ctx).hosts.GetCapacity(pb.GetCapacityRequest(flavor=flavor_name))
    if output == "json":
        click.echo(json.dumps(as_dict(result), indent=2))
        return
    print_table([as_dict(h) for h in result.hosts], ["host", "fits"])
    out.print(f"{result.total} more of flavor {result.flavor} fit", highlight=False)


# ---------------------------------------------------------------- the state store

@cli.group(cls=CloudGroup)
def store() -> None:
    """The state store, etcd: size against its quota, alarms (admin)."""


def mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


@store.command("status")
@output_option
@click.pass_context
def store_status(ctx: click.Context, output: str) -> None:
    """Each etcd member's size and what of it is in use, the quota, and alarms
    (NOSPACE: every write in the cloud is refused until space is freed)."""
    status = api(ctx).hosts.GetStoreStatus(pb.GetStoreStatusRequest())
    if output == "json":
        click.echo(json.dumps(as_dict(status), indent=2))
        return
    rows = [{"endpoint": m.endpoint, "id": m.id, "leader": m.leader, "version": m.version,
             "size": "" if m.error else mib(m.db_size_bytes),
             "in use": "" if m.error else mib(m.db_size_in_use_bytes),
             "of quota": "" if m.error else f"{100 * m.db_size_bytes / status.quota_bytes:.1f}%",
             "error": m.error} for m in status.members]
    print_table(rows, ["endpoint", "id", "leader", "version", "size", "in use", "of quota", "error"])
    out.print(f"quota {mib(status.quota_bytes)}; history kept {status.history}; alarms: "
              f"{', '.join(status.alarms) or 'none'}", highlight=False)
