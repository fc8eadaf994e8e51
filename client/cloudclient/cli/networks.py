"""cloudctl network and floating-ip commands: a project's private networks and
the external addresses it holds (NetworkService in proto/cloudapi/v1/network.proto).

An instance's NICs on these networks are shown by `cloudctl instance show`, and
chosen with `cloudctl instance create --network NAME` (cli/instances.py)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import click
from cloudapi.v1 import compute_pb2 as cpb
from cloudapi.v1 import network_pb2 as pb

from cloudclient.cli.base import CloudGroup, api, as_dict, cli, err, output_option, print_record, print_rows

NETWORK_FIELDS = ["id", "name", "cidr", "gateway_ip", "mtu", "ports", "free_addresses", "created_at"]
NETWORK_COLUMNS = ["name", "cidr", "gateway_ip", "mtu", "ports", "free_addresses", "id"]
FLOATING_IP_COLUMNS = ["address", "instance", "fixed_ip", "network", "created_at"]


def every_page(call: Callable[[Any], Any], request_type: type, items: str) -> list[Any]:
    """All the items of a paged List call, following next_page_token to the end."""
    found: list[Any] = []
    token = ""
    while True:
        page = call(request_type(page_token=token))
        found.extend(getattr(page, items))
        token = page.next_page_token
        if not token:
            return found


# ---------------------------------------------------------------- networks

@cli.group(cls=CloudGroup)
def network() -> None:
    """Private networks of the project (each with one IPv4 subnet)."""


@network.command("create")
@click.argument("name")
@click.option("--cidr", default="", help="its subnet: a private IPv4 range, /16 to /29 "
                                          "(default: 10.0.0.0/24; projects may overlap)")
@output_option
@click.pass_context
def network_create(ctx: click.Context, name: str, cidr: str, output: str) -> None:
    """Make a private network; instances join it with `instance create --network NAME`."""
    made = api(ctx).networks.CreateNetwork(pb.CreateNetworkRequest(name=name, cidr=cidr))
    print_record(as_dict(made), NETWORK_FIELDS, output)


@network.command("list")
@output_option
@click.pass_context
def network_list(ctx: click.Context, output: str) -> None:
    """The project's networks."""
    found = every_page(api(ctx).networks.ListNetworks, pb.ListNetworksRequest, "networks")
    print_rows([as_dict(n) for n in found], NETWORK_COLUMNS, output)


@network.command("show")
@click.argument("network_ref")
@output_option
@click.pass_context
def network_show(ctx: click.Context, network_ref: str, output: str) -> None:
    """One network, by id or name."""
    found = api(ctx).networks.GetNetwork(pb.GetNetworkRequest(id_or_name=network_ref))
    print_record(as_dict(found), NETWORK_FIELDS, output)


@network.command("delete")
@click.argument("network_ref")
@click.pass_context
def network_delete(ctx: click.Context, network_ref: str) -> None:
    """Delete a network (refused while instances have NICs on it: delete those first)."""
    api(ctx).networks.DeleteNetwork(pb.DeleteNetworkRequest(id_or_name=network_ref))
    err.print(f"network {network_ref} deleted", highlight=False)


# ---------------------------------------------------------------- floating IPs

@cli.group("floating-ip", cls=CloudGroup)
def floating_ip() -> None:
    """External addresses of the project, attachable to its instances (1:1 NAT)."""


def floating_ip_rows(ctx: click.Context, found: list[pb.FloatingIp]) -> list[dict[str, Any]]:
    """Each floating IP as a row, with the names of its instance and network (the API
    gives ids: a table is read by people, who know their instances by name)."""
    client = api(ctx)
    instances: dict[str, str] = {}
    networks: dict[str, str] = {}
    if any(f.instance_id for f in found):
        instances = {i.id: i.name for i in every_page(
            client.instances.ListInstances, cpb.ListInstancesRequest, "instances")}
        networks = {n.id: n.name for n in every_page(
            client.networks.ListNetworks, pb.ListNetworksRequest, "networks")}
    rows = []
    for f in found:
        row = as_dict(f)
        row["instance"] = instances.get(f.instance_id, f.instance_id)
        row["network"] = networks.get(f.network_id, f.network_id)
        rows.append(row)
    return rows


def print_floating_ips(ctx: click.Context, found: list[pb.FloatingIp], output: str) -> None:
    if output == "json":  # as the API gives them
        click.echo(json.dumps([as_dict(f) for f in found], indent=2))
    else:
        print_rows(floating_ip_rows(ctx, found), FLOATING_IP_COLUMNS, output)


def print_floating_ip(ctx: click.Context, found: pb.FloatingIp, output: str) -> None:
    if output == "json":
        click.echo(json.dumps(as_dict(found), indent=2))
    else:
        print_rows(floating_ip_rows(ctx, [found]), FLOATING_IP_COLUMNS, output)


@floating_ip.command("create")
@click.option("--request-id", default="", help="idempotency key; default: a new one")
@output_option
@click.pass_context
def floating_ip_create(ctx: click.Context, request_id: str, output: str) -> None:
    """Allocate an address from the external network (counted in the floating_ips quota)."""
    made = api(ctx).networks.CreateFloatingIp(pb.CreateFloatingIpRequest(
        request_id=request_id or str(uuid.uuid4())))
    print_floating_ip(ctx, made, output)


@floating_ip.command("list")
@output_option
@click.pass_context
def floating_ip_list(ctx: click.Context, output: str) -> None:
    """The project's floating IPs and what each is attached to."""
    found = every_page(api(ctx).networks.ListFloatingIps, pb.ListFloatingIpsRequest, "floating_ips")
    print_floating_ips(ctx, found, output)


@floating_ip.command("attach")
@click.argument("address")
@click.argument("instance_ref")
@click.option("--network", "network_ref", default="",
              help="the network (id or name) of the instance's NIC; default: its first NIC")
@output_option
@click.pass_context
def floating_ip_attach(ctx: click.Context, address: str, instance_ref: str, network_ref: str,
                       output: str) -> None:
    """Map a floating IP to an instance's fixed IP (moving it if it was attached elsewhere)."""
    attached = api(ctx).networks.AttachFloatingIp(pb.AttachFloatingIpRequest(
        address=address, instance=instance_ref, network=network_ref))
    print_floating_ip(ctx, attached, output)


@floating_ip.command("detach")
@click.argument("address")
@output_option
@click.pass_context
def floating_ip_detach(ctx: click.Context, address: str, output: str) -> None:
    """Detach a floating IP from its instance; the project keeps the address."""
    detached = api(ctx).networks.DetachFloatingIp(pb.FloatingIpRequest(address=address))
    print_floating_ip(ctx, detached, output)


@floating_ip.command("delete")
@click.argument("address")
@click.pass_context
def floating_ip_delete(ctx: click.Context, address: str) -> None:
    """Release a floating IP back to the external network (detached first if attached)."""
    api(ctx).networks.DeleteFloatingIp(pb.FloatingIpRequest(address=address))
    err.print(f"floating IP {address} released", highlight=False)
