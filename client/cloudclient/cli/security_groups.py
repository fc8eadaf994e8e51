"""cloudctl security-group commands: a project's security groups and their rules
(SecurityGroupService in proto/cloudapi/v1/security_group.proto).

An instance's groups are chosen with `cloudctl instance create --security-group G`,
changed live with `cloudctl instance set-security-groups`, and shown by
`cloudctl instance show` (cli/instances.py)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import click
from cloudapi.v1 import security_group_pb2 as pb

from cloudclient.cli.base import CloudGroup, api, as_dict, cli, err, out, output_option, print_rows
from cloudclient.cli.networks import every_page

GROUP_COLUMNS = ["name", "description", "rules", "id"]
RULE_COLUMNS = ["id", "direction", "protocol", "ports", "remote"]


def rule_row(r: pb.SecurityGroupRule) -> dict[str, Any]:
    """A rule as people read it: "80" or "8000-8080" (empty: every port), and its
    remote as a CIDR, a group's name, or "anyone"."""
    ports = "" if not r.port_min else (str(r.port_min) if r.port_min == r.port_max
                                       else f"{r.port_min}-{r.port_max}")
    remote = r.remote_cidr or (f"group {r.remote_group_name or r.remote_group_id}"
                               if r.remote_group_id else "anyone")
    return {"id": r.id, "direction": r.direction, "protocol": r.protocol, "ports": ports,
            "remote": remote}


def parse_ports(text: str) -> tuple[int, int]:
    """--port N or N-M."""
    low, _, high = text.partition("-")
    try:
        return int(low), int(high or low)
    except ValueError:
        raise click.BadParameter(f"{text!r}: a port (22) or a range (8000-8080)",
                                 param_hint="--port") from None


def print_group(group: pb.SecurityGroup, output: str) -> None:
    if output == "json":
        click.echo(json.dumps(as_dict(group), indent=2))
        return
    out.print(f"{group.name} ({group.id}){': ' + group.description if group.description else ''}",
              highlight=False)
    print_rows([rule_row(r) for r in group.rules], RULE_COLUMNS, output)


@cli.group("security-group", cls=CloudGroup)
def security_group() -> None:
    """Security groups: which traffic may reach or leave the project's instances."""


@security_group.command("create")
@click.argument("name")
@click.option("--description", default="", help="what it is for")
@click.option("--request-id", default="", help="idempotency key; default: a new one")
@output_option
@click.pass_context
def security_group_create(ctx: click.Context, name: str, description: str, request_id: str,
                          output: str) -> None:
    """Make a group: anything out, nothing in until rules allow it."""
    made = api(ctx).security_groups.CreateSecurityGroup(pb.CreateSecurityGroupRequest(
        name=name, description=description, request_id=request_id or str(uuid.uuid4())))
    print_group(made, output)


@security_group.command("list")
@output_option
@click.pass_context
def security_group_list(ctx: click.Context, output: str) -> None:
    """The project's groups."""
    found = every_page(api(ctx).security_groups.ListSecurityGroups, pb.ListSecurityGroupsRequest,
                       "security_groups")
    if output == "json":
        click.echo(json.dumps([as_dict(g) for g in found], indent=2))
    else:
        print_rows([{"name": g.name, "description": g.description, "rules": len(g.rules), "id": g.id}
                    for g in found], GROUP_COLUMNS, output)


@security_group.command("show")
@click.argument("group_ref")
@output_option
@click.pass_context
def security_group_show(ctx: click.Context, group_ref: str, output: str) -> None:
    """One group and its rules, by id or name."""
    print_group(api(ctx).security_groups.GetSecurityGroup(pb.GetSecurityGroupRequest(
        id_or_name=group_ref)), output)


@security_group.command("delete")
@click.argument("group_ref")
@click.pass_context
def security_group_delete(ctx: click.Context, group_ref: str) -> None:
    """Delete a group (refused for "default", and while instances are in it or other
    groups' rules name it)."""
    api(ctx).security_groups.DeleteSecurityGroup(pb.DeleteSecurityGroupRequest(id_or_name=group_ref))
    err.print(f"security group {group_ref} deleted", highlight=False)


@security_group.group("rule", cls=CloudGroup)
def rule() -> None:
    """Rules of a security group."""


@rule.command("create")
@click.argument("group_ref")
@click.option("--direction", required=True, type=click.Choice(["ingress", "egress"]))
@click.option("--protocol", required=True, type=click.Choice(["tcp", "udp", "icmp", "any"]))
@click.option("--port", default="", help="tcp and udp: a port (22) or a range (8000-8080); "
                                         "default: every port")
@click.option("--remote-cidr", default="", help="the peers it allows, e.g. 100.64.0.0/24")
@click.option("--remote-group", default="", help="the peers it allows: this group's members")
@click.option("--request-id", default="", help="idempotency key; default: a new one")
@output_option
@click.pass_context
def rule_create(ctx: click.Context, group_ref: str, direction: str, protocol: str, port: str,
                remote_cidr: str, remote_group: str, request_id: str, output: str) -> None:
    """Allow traffic in (ingress) or out (egress) of the group's members; without
    --remote-cidr or --remote-group, from or to anyone."""
    if remote_cidr and remote_group:
        raise click.UsageError("give --remote-cidr or --remote-group, not both")
    port_min, port_max = parse_ports(port) if port else (0, 0)
    made = api(ctx).security_groups.CreateSecurityGroupRule(pb.CreateSecurityGroupRuleRequest(
        security_group=group_ref, direction=direction, protocol=protocol, port_min=port_min,
        port_max=port_max, remote_cidr=remote_cidr, remote_group=remote_group,
        request_id=request_id or str(uuid.uuid4())))
    if output == "json":
        click.echo(json.dumps(as_dict(made), indent=2))
    else:
        print_rows([rule_row(made)], RULE_COLUMNS, output)


@rule.command("delete")
@click.argument("rule_id")
@click.pass_context
def rule_delete(ctx: click.Context, rule_id: str) -> None:
    """Remove a rule (its id: `security-group show GROUP`)."""
    api(ctx).security_groups.DeleteSecurityGroupRule(pb.DeleteSecurityGroupRuleRequest(id=rule_id))
    err.print(f"rule {rule_id} deleted", highlight=False)
