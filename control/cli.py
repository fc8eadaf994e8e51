"""cloudctl: the command-line client of the cloud's public gRPC API.

Where the API is and who the caller is come from the environment or the config
file: see control/client.py.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from typing import Any

import click
import grpc
from cloudapi.v1 import compute_pb2 as pb
from cloudapi.v1 import identity_pb2 as ipb
from google.protobuf.json_format import MessageToDict
from rich.console import Console
from rich.table import Table

from control.client import CloudClient, endpoint, read_config, write_config

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
    for key in ["id", "name", "status", "task_state", "power_state", "flavor", "vcpus",
                "memory_mb", "disk_gb", "max_vcpus", "max_memory_mb", "image", "host", "addresses",
                "group", "created_at", "launched_at"]:
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
            elif code == grpc.StatusCode.UNAUTHENTICATED:
                detail = f"{detail} (cloudctl login, or set CLOUD_TOKEN or CLOUD_USERNAME/CLOUD_PASSWORD)"
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
    print_rows([as_dict(f) for f in flavors], FLAVOR_COLUMNS, output)


@flavor.command("create")
@click.argument("name")
@click.option("--vcpus", type=int, required=True)
@click.option("--ram", "memory_mb", type=int, required=True, help="MiB")
@click.option("--disk", "disk_gb", type=int, required=True, help="GiB")
@click.option("--private", is_flag=True, help="visible only to the projects given with --project")
@click.option("--project", "projects", multiple=True, help="a project given access (repeatable)")
@click.option("--require-trait", "required", multiple=True, help="hosts must have it (repeatable)")
@click.option("--forbid-trait", "forbidden", multiple=True, help="hosts must not have it (repeatable)")
@click.option("--zone", default="", help="pin to an availability zone")
@output_option
@click.pass_context
def flavor_create(ctx: click.Context, name: str, vcpus: int, memory_mb: int, disk_gb: int,
                  private: bool, projects: tuple[str, ...], required: tuple[str, ...],
                  forbidden: tuple[str, ...], zone: str, output: str) -> None:
    """Create a flavor (admin)."""
    created = api(ctx).flavors.CreateFlavor(pb.CreateFlavorRequest(flavor=pb.Flavor(
        name=name, vcpus=vcpus, memory_mb=memory_mb, disk_gb=disk_gb, public=not private,
        projects=list(projects), required_traits=list(required), forbidden_traits=list(forbidden),
        zone=zone)))
    print_rows([as_dict(created)], FLAVOR_COLUMNS, output)


@flavor.command("delete")
@click.argument("name")
@click.pass_context
def flavor_delete(ctx: click.Context, name: str) -> None:
    """Delete a flavor no instance uses (admin)."""
    api(ctx).flavors.DeleteFlavor(pb.DeleteFlavorRequest(name=name))
    err.print(f"flavor {name} deleted", highlight=False)


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
@click.option("--group", default="", help="server group to join (see cloudctl server-group)")
@click.option("--count", type=int, default=0,
              help="scale out: NAME-1..NAME-COUNT, quota and hosts claimed for all or none")
@click.option("--min-count", type=int, default=0, help="with --count: accept as few as this")
@click.option("--dry-run", is_flag=True,
              help="show the host it would go to and why others can't take it; create nothing")
@output_option
@click.pass_context
def instance_create(ctx: click.Context, name: str, flavor_name: str, image_ref: str,
                    request_id: str, wait: bool, timeout: float, group: str, count: int,
                    min_count: int, dry_run: bool, output: str) -> None:
    if count:
        create_many(ctx, name, flavor_name, image_ref, count, min_count, request_id, wait, timeout,
                    output)
        return
    request = pb.CreateInstanceRequest(name=name, flavor=flavor_name, image=image_ref,
                                       request_id=request_id or str(uuid.uuid4()), group=group)
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
    if created.status == "ERROR":
        sys.exit(1)


def create_many(ctx: click.Context, name: str, flavor_name: str, image_ref: str, count: int,
                min_count: int, request_id: str, wait: bool, timeout: float, output: str) -> None:
    made = api(ctx).instances.CreateInstances(pb.CreateInstancesRequest(
        name=name, flavor=flavor_name, image=image_ref, count=count, min_count=min_count,
        request_id=request_id or str(uuid.uuid4()))).instances
    err.print(f"{len(made)} instances requested", highlight=False)
    if wait:
        made = [wait_for(ctx, i.id, until_gone=False, timeout_s=timeout) for i in made]
    print_rows([instance_dict(i) for i in made], INSTANCE_COLUMNS, output)
    if any(i.status == "ERROR" for i in made):
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


def print_quota(quota: ipb.Quota, output: str) -> None:
    if output == "json":
        click.echo(json.dumps(as_dict(quota), indent=2))
        return
    rows = [{"resource": f, "limit": "unlimited" if (limit := getattr(quota.limits, f)) == -1
             else limit, "in use": getattr(quota.usage, f)} for f in QUOTA_FIELDS]
    out.print(f"quota of project {quota.project}")
    print_table(rows, ["resource", "limit", "in use"])


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
@output_option
@click.pass_context
def quota_set(ctx: click.Context, project_name: str, output: str, **limits: int | None) -> None:
    """Set limits (admin); -1 is unlimited."""
    request = ipb.SetQuotaRequest(project=project_name,
                                  **{k: v for k, v in limits.items() if v is not None})
    print_quota(api(ctx).quotas.SetQuota(request), output)


def operate(ctx: click.Context, call: Any, request: Any, wait: bool, timeout: float,
            output: str) -> None:
    """Send an operation; with --wait, follow it until done, non-zero if it failed."""
    started = time.time()
    changed = call(request)
    err.print(f"{changed.name}: {changed.status}"
              + (f" ({changed.task_state})" if changed.task_state else ""), highlight=False)
    if not wait:
        return
    stub = api(ctx).instances
    deadline = time.monotonic() + timeout
    with err.status(f"{changed.name}: {changed.task_state}"):
        while True:
            current = stub.GetInstance(pb.GetInstanceRequest(id_or_name=changed.id))
            if not current.task_state:
                break
            if time.monotonic() > deadline:
                err.print(f"[red]timed out[/red] after {timeout:.0f}s ({current.task_state})")
                sys.exit(2)
            time.sleep(0.2)
    print_instance(current, output)
    if current.HasField("fault") and current.fault.time.ToNanoseconds() / 1e9 >= started - 1:
        err.print(f"[red]failed[/red]: {current.fault.message}", highlight=False)
        sys.exit(1)


wait_option = click.option("--wait", is_flag=True, help="wait until done; exit non-zero if it failed")
timeout_option = click.option("--timeout", default=300.0, show_default=True)


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
    for key in ["power_state", "vcpus", "cpu_percent", "memory_actual_kb", "memory_available_kb",
                "memory_unused_kb", "memory_usable_kb", "memory_rss_kb", "disk_read_bytes",
                "disk_write_bytes", "disk_read_requests", "disk_write_requests"]:
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


def main() -> None:
    cli(obj={})


if __name__ == "__main__":
    main()
