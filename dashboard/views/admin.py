"""Admin pages (admin role only): hosts with capacity and usage, enable/disable;
projects, users and roles, quotas; flavors. The API checks the role on every
call too: these pages only spare other users a page of refusals."""

from __future__ import annotations

from typing import Any

from cloudapi.v1 import compute_pb2 as pb
from cloudapi.v1 import identity_pb2 as ipb
from flask import Blueprint, abort, flash, redirect, render_template, request, session, url_for

from dashboard import api
from dashboard.forms import (
    ActionForm,
    CapacityForm,
    FlavorForm,
    HostForm,
    ProjectForm,
    QuotaForm,
    RoleForm,
    UserForm,
    options,
)
from dashboard.views.quotas import usage_rows

bp = Blueprint("admin", __name__, url_prefix="/admin")


@bp.before_request
def admins_only() -> None:
    if session.get("role") != "admin":
        abort(403, description="The admin pages are for the cloud's admins.")


def _flavors() -> list[pb.Flavor]:
    return list(api.call(api.client().flavors.ListFlavors, pb.ListFlavorsRequest()).flavors)


# ---------------------------------------------------------------- hosts

def host_rows(hosts: list[pb.HostInfo]) -> list[dict[str, Any]]:
    rows = []
    for h in sorted(hosts, key=lambda h: h.name):
        inventory = []
        for item in h.inventory:
            percent = min(100, round(100 * item.used / item.capacity)) if item.capacity else 100
            inventory.append({"rc": item.resource_class, "used": item.used, "capacity": item.capacity,
                              "total": item.total, "reserved": item.reserved,
                              "ratio": item.allocation_ratio, "percent": percent,
                              "level": "high" if percent >= 90 else "mid" if percent >= 70 else "low"})
        rows.append({"h": h, "inventory": inventory})
    return rows


@bp.get("/")
def index() -> Any:
    return redirect(url_for("admin.hosts"))


@bp.get("/hosts")
def hosts() -> Any:
    found = api.call(api.client().hosts.ListHosts, pb.ListHostsRequest()).hosts
    capacity_form = CapacityForm(request.args)
    capacity_form.flavor.choices = options([(f.name, f.name) for f in _flavors()])
    capacity = None
    if request.args.get("flavor"):
        capacity = api.call(api.client().hosts.GetCapacity,
                            pb.GetCapacityRequest(flavor=request.args["flavor"]))
    store = api.call(api.client().hosts.GetStoreStatus, pb.GetStoreStatusRequest())
    return render_template("admin/hosts.html", hosts=host_rows(list(found)), form=HostForm(),
                           capacity_form=capacity_form, capacity=capacity,
                           store=store, store_members=store_rows(store))


def store_rows(store: pb.StoreStatus) -> list[dict[str, Any]]:
    """The state store's members with their size against the quota."""
    rows = []
    for m in store.members:
        percent = min(100, round(100 * m.db_size_bytes / store.quota_bytes)) if store.quota_bytes else 0
        rows.append({"m": m, "percent": percent, "size_mib": round(m.db_size_bytes / 2**20, 1),
                     "in_use_mib": round(m.db_size_in_use_bytes / 2**20, 1),
                     "level": "high" if percent >= 80 else "mid" if percent >= 50 else "low"})
    return rows


@bp.post("/hosts/<name>")
def update_host(name: str) -> Any:
    form = HostForm()
    enable = form.enabled.data == "1"
    update = pb.UpdateHostRequest(name=name, enabled=enable)
    if not enable:
        update.disabled_reason = form.reason.data or "disabled from the dashboard"
    api.call(api.client().hosts.UpdateHost, update)
    flash(f"Host {name} {'enabled' if enable else 'disabled'}.", "info")
    return redirect(url_for("admin.hosts"))


# ---------------------------------------------------------------- projects, quotas

@bp.get("/projects")
def projects() -> Any:
    identity = api.client().identity
    found = api.call(identity.ListProjects, ipb.ListProjectsRequest()).projects
    quotas = {p.name: api.call(api.client().quotas.GetQuota, ipb.GetQuotaRequest(project=p.name))
              for p in found}
    return render_template("admin/projects.html", projects=sorted(found, key=lambda p: p.name),
                           quotas={n: usage_rows(q) for n, q in quotas.items()},
                           create=ProjectForm(prefix="project"), quota_form=QuotaForm(prefix="quota"),
                           form=ActionForm())


@bp.post("/projects")
def create_project() -> Any:
    form = ProjectForm(prefix="project")
    if not form.validate():
        flash("Project: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in form.errors.items()), "error")
        return redirect(url_for("admin.projects"))
    api.call(api.client().identity.CreateProject, ipb.CreateProjectRequest(
        name=form.name.data, description=form.description.data or ""))
    flash(f"Project {form.name.data} created.", "info")
    return redirect(url_for("admin.projects"))


@bp.post("/projects/<name>/delete")
def delete_project(name: str) -> Any:
    api.call(api.client().identity.DeleteProject, ipb.DeleteProjectRequest(name=name))
    flash(f"Project {name} deleted.", "info")
    return redirect(url_for("admin.projects"))


@bp.post("/projects/<name>/quota")
def set_quota(name: str) -> Any:
    form = QuotaForm(prefix="quota")
    if not form.validate():
        flash("Quota: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in form.errors.items()), "error")
        return redirect(url_for("admin.projects"))
    change = ipb.SetQuotaRequest(project=name)
    for field in ("instances", "vcpus", "memory_mb", "disk_gb"):
        value = getattr(form, field).data
        if value is not None:
            setattr(change, field, value)
    api.call(api.client().quotas.SetQuota, change)
    flash(f"Quota of {name} updated.", "info")
    return redirect(url_for("admin.projects"))


# ---------------------------------------------------------------- users, roles

def _project_choices() -> list[tuple[str, str]]:
    found = api.call(api.client().identity.ListProjects, ipb.ListProjectsRequest()).projects
    return [(p.name, p.name) for p in sorted(found, key=lambda p: p.name)]


@bp.get("/users")
def users() -> Any:
    found = api.call(api.client().identity.ListUsers, ipb.ListUsersRequest()).users
    create, role = UserForm(prefix="user"), RoleForm(prefix="role")
    create.project.choices = role.project.choices = options(_project_choices())
    return render_template("admin/users.html", users=sorted(found, key=lambda u: u.name),
                           create=create, role_form=role, form=ActionForm())


@bp.post("/users")
def create_user() -> Any:
    form = UserForm(prefix="user")
    form.project.choices = options(_project_choices())
    if not form.validate():
        flash("User: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in form.errors.items()), "error")
        return redirect(url_for("admin.users"))
    made = api.call(api.client().identity.CreateUser, ipb.CreateUserRequest(
        name=form.name.data, password=form.password.data or "", project=form.project.data,
        role=form.role.data))
    # A generated password is shown once, in this response only.
    return render_template("admin/user_created.html", user=made.user,
                           password=made.generated_password)


@bp.post("/users/<name>/delete")
def delete_user(name: str) -> Any:
    api.call(api.client().identity.DeleteUser, ipb.DeleteUserRequest(name=name))
    flash(f"User {name} deleted.", "info")
    return redirect(url_for("admin.users"))


@bp.post("/users/<name>/roles/<change>")
def change_role(name: str, change: str) -> Any:
    form = RoleForm(prefix="role")
    form.project.choices = options(_project_choices())
    if change not in ("add", "remove") or not form.validate():
        abort(400, description="Choose a project and a role.")
    method = api.client().identity.AddRole if change == "add" else api.client().identity.RemoveRole
    api.call(method, ipb.RoleRequest(username=name, project=form.project.data, role=form.role.data))
    flash(f"{name}: role {form.role.data} in {form.project.data} "
          f"{'added' if change == 'add' else 'removed'}.", "info")
    return redirect(url_for("admin.users"))


@bp.post("/users/<name>/revoke-tokens")
def revoke_tokens(name: str) -> Any:
    revoked = api.call(api.client().identity.RevokeUserTokens, ipb.RevokeUserTokensRequest(username=name))
    flash(f"{name}: {revoked.revoked} tokens revoked.", "info")
    return redirect(url_for("admin.users"))


# ---------------------------------------------------------------- flavors

@bp.get("/flavors")
def flavors() -> Any:
    return render_template("admin/flavors.html", flavors=_flavors(), create=FlavorForm(prefix="flavor"),
                           form=ActionForm())


@bp.post("/flavors")
def create_flavor() -> Any:
    form = FlavorForm(prefix="flavor")
    if not form.validate():
        flash("Flavor: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in form.errors.items()), "error")
        return redirect(url_for("admin.flavors"))
    projects = [p.strip() for p in (form.projects.data or "").split(",") if p.strip()]
    api.call(api.client().flavors.CreateFlavor, pb.CreateFlavorRequest(flavor=pb.Flavor(
        name=form.name.data, vcpus=form.vcpus.data, memory_mb=form.memory_mb.data,
        disk_gb=form.disk_gb.data, public=bool(form.public.data) and not projects, projects=projects)))
    flash(f"Flavor {form.name.data} created.", "info")
    return redirect(url_for("admin.flavors"))


@bp.post("/flavors/<name>/delete")
def delete_flavor(name: str) -> Any:
    api.call(api.client().flavors.DeleteFlavor, pb.DeleteFlavorRequest(name=name))
    flash(f"Flavor {name} deleted.", "info")
    return redirect(url_for("admin.flavors"))
