"""cloudctl identity and quota commands: login, tokens, projects, users, roles, quotas."""


import json
import os
from typing import Any

import click
from cloudapi.v1 import identity_pb2 as ipb

from cloudclient.cli.base import (
    CloudGroup,
    api,
    as_dict,
    cli,
    err,
    out,
    output_option,
    print_rows,
    print_table,
)
from cloudclient.client import CloudClient, endpoint, read_config, write_config

# ---------------------------------------------------------------- identity

def print_token(token: ipb.Token, output: str) -> None:
    data = as_dict(token)
    if output == "json":
        click.echo(json.dumps(data, indent=2))
    else:
        print_table([data], ["username", "project", "role", "expires_at"])


@cli.command("login")
@click.option("--username", envvar="CLOUD_USERNAME", prompt=True)
@click.option("--password", envvar="CLOUD_PASSWORD", prompt=True, hide_input=True)
@click.option("--project", envvar="CLOUD_PROJECT", default="",
              help="the project to act in (default: the user's only or first one)")
@output_option
def login(username: str, password: str, project: str, output: str) -> None:
    """Log in and keep the token in the config file."""
    client = CloudClient(endpoint())
    token = client.login(username, password, project)
    path = write_config({**read_config(), "endpoint": endpoint(), "token": token.token})
    err.print(f"logged in as {token.username} in project {token.project} ({token.role}); "
              f"token saved in {path}", highlight=False)
    print_token(token, output)


@cli.command("logout")
@click.pass_context
def logout(ctx: click.Context) -> None:
    """Revoke the current token and forget it."""
    api(ctx).identity.Logout(ipb.LogoutRequest())
    config = read_config()
    config.pop("token", None)
    write_config(config)
    err.print("logged out")


@cli.group(cls=CloudGroup)
def token() -> None:
    """Tokens."""


@token.command("issue")
@output_option
@click.pass_context
def token_issue(ctx: click.Context, output: str) -> None:
    """A fresh token for the current credentials (e.g. for CLOUD_TOKEN)."""
    client = api(ctx)
    who = client.identity.WhoAmI(ipb.WhoAmIRequest())
    if os.environ.get("CLOUD_USERNAME"):
        fresh = client.identity.Login(ipb.LoginRequest(
            username=os.environ["CLOUD_USERNAME"], password=os.environ.get("CLOUD_PASSWORD", ""),
            project=who.project))
    else:
        # Only a password can mint a token: with a stored token, show that one.
        fresh = ipb.Token(token=client.token, username=who.username, project=who.project,
                          role=who.role, expires_at=who.expires_at)
    data = as_dict(fresh)
    if output == "json":
        click.echo(json.dumps(data, indent=2))
    else:
        click.echo(fresh.token)


@token.command("revoke")
@click.option("--user", "username", required=True, help="revoke every token of this user (admin)")
@click.pass_context
def token_revoke(ctx: click.Context, username: str) -> None:
    result = api(ctx).identity.RevokeUserTokens(ipb.RevokeUserTokensRequest(username=username))
    err.print(f"revoked {result.revoked} tokens of {username}", highlight=False)


@cli.group(cls=CloudGroup)
def project() -> None:
    """Projects (admin)."""


@project.command("create")
@click.argument("name")
@click.option("--description", default="")
@output_option
@click.pass_context
def project_create(ctx: click.Context, name: str, description: str, output: str) -> None:
    created = api(ctx).identity.CreateProject(ipb.CreateProjectRequest(name=name,
                                                                       description=description))
    print_rows([as_dict(created)], ["name", "description", "created_at"], output)


@project.command("list")
@output_option
@click.pass_context
def project_list(ctx: click.Context, output: str) -> None:
    projects = api(ctx).identity.ListProjects(ipb.ListProjectsRequest()).projects
    print_rows([as_dict(p) for p in projects], ["name", "description", "created_at"], output)


@project.command("delete")
@click.argument("name")
@click.pass_context
def project_delete(ctx: click.Context, name: str) -> None:
    api(ctx).identity.DeleteProject(ipb.DeleteProjectRequest(name=name))
    err.print(f"project {name} deleted", highlight=False)


def user_row(user: ipb.User) -> dict[str, Any]:
    return {**as_dict(user), "roles": [f"{r.role}@{r.project}" for r in user.roles]}


@cli.group(cls=CloudGroup)
def user() -> None:
    """Users (admin)."""


@user.command("create")
@click.argument("name")
@click.option("--project", "project_name", required=True)
@click.option("--role", type=click.Choice(["reader", "member", "admin"]), default="member",
              show_default=True)
@click.option("--password", default="", help="default: a generated one, printed once")
@output_option
@click.pass_context
def user_create(ctx: click.Context, name: str, project_name: str, role: str, password: str,
                output: str) -> None:
    created = api(ctx).identity.CreateUser(ipb.CreateUserRequest(
        name=name, password=password, project=project_name, role=role))
    row = {**user_row(created.user), "password": created.generated_password}
    print_rows([row], ["name", "roles", "password"] if created.generated_password
               else ["name", "roles"], output)


@user.command("list")
@output_option
@click.pass_context
def user_list(ctx: click.Context, output: str) -> None:
    users = api(ctx).identity.ListUsers(ipb.ListUsersRequest()).users
    print_rows([user_row(u) for u in users], ["name", "roles", "created_at"], output)


@user.command("delete")
@click.argument("name")
@click.pass_context
def user_delete(ctx: click.Context, name: str) -> None:
    api(ctx).identity.DeleteUser(ipb.DeleteUserRequest(name=name))
    err.print(f"user {name} deleted", highlight=False)


@cli.group(cls=CloudGroup)
def role() -> None:
    """Role assignments (admin)."""


@role.command("add")
@click.argument("username")
@click.option("--project", "project_name", required=True)
@click.option("--role", "role_name", type=click.Choice(["reader", "member", "admin"]), required=True)
@click.pass_context
def role_add(ctx: click.Context, username: str, project_name: str, role_name: str) -> None:
    updated = api(ctx).identity.AddRole(ipb.RoleRequest(username=username, project=project_name,
                                                        role=role_name))
    print_table([user_row(updated)], ["name", "roles"])


@role.command("remove")
@click.argument("username")
@click.option("--project", "project_name", required=True)
@click.pass_context
def role_remove(ctx: click.Context, username: str, project_name: str) -> None:
    updated = api(ctx).identity.RemoveRole(ipb.RoleRequest(username=username,
                                                           project=project_name))
    print_table([user_row(updated)], ["name", "roles"])



# ---------------------------------------------------------------- quotas

QUOTA_FIELDS = ["instances", "vcpus", "memory_mb", "disk_gb"]


def quota_rows(quota: ipb.Quota) -> list[dict]:
    """The instance quotas, then every other named one with a limit or usage."""
    limits = {**{f: getattr(quota.limits, f) for f in QUOTA_FIELDS}, **quota.limits.resources}
    usage = {**{f: getattr(quota.usage, f) for f in QUOTA_FIELDS}, **quota.usage.resources}
    names = QUOTA_FIELDS + sorted({*quota.limits.resources, *quota.usage.resources} - {*QUOTA_FIELDS})
    # A name without a limit has none.
    return [{"resource": n, "limit": "unlimited" if (limit := limits.get(n, -1)) == -1 else limit,
             "in use": usage.get(n, 0)} for n in names]


def print_quota(quota: ipb.Quota, output: str) -> None:
    if output == "json":
        click.echo(json.dumps(as_dict(quota), indent=2))
        return
    out.print(f"quota of project {quota.project}")
    print_table(quota_rows(quota), ["resource", "limit", "in use"])


def parse_resource_limits(values: tuple[str, ...]) -> dict[str, int]:
    """NAME=LIMIT options as a map (-1 is unlimited)."""
    parsed = {}
    for value in values:
        name, sep, limit = value.partition("=")
        if not sep or not name.strip() or not limit.strip().removeprefix("-").isdigit():
            raise click.BadParameter(f"{value!r}: expected NAME=LIMIT, e.g. networks=10",
                                     param_hint="--resource")
        parsed[name.strip()] = int(limit)
    return parsed


@cli.group(cls=CloudGroup)
def quota() -> None:
    """Project quotas: limits and usage."""


@quota.command("show")
@click.argument("project_name", required=False, default="")
@output_option
@click.pass_context
def quota_show(ctx: click.Context, project_name: str, output: str) -> None:
    print_quota(api(ctx).quotas.GetQuota(ipb.GetQuotaRequest(project=project_name)), output)


@quota.command("set")
@click.argument("project_name")
@click.option("--instances", type=int)
@click.option("--vcpus", type=int)
@click.option("--ram", "memory_mb", type=int, help="MiB")
@click.option("--disk", "disk_gb", type=int, help="GiB")
@click.option("--resource", "resources", multiple=True, metavar="NAME=LIMIT",
              help="the limit of any named resource, e.g. networks=10 (repeatable)")
@output_option
@click.pass_context
def quota_set(ctx: click.Context, project_name: str, output: str, resources: tuple[str, ...],
              **limits: int | None) -> None:
    """Set limits (admin); -1 is unlimited."""
    request = ipb.SetQuotaRequest(project=project_name, resources=parse_resource_limits(resources),
                                  **{k: v for k, v in limits.items() if v is not None})
    print_quota(api(ctx).quotas.SetQuota(request), output)
