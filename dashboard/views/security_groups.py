"""Security groups: the project's groups and their rules: list, create and delete a
group, add and delete a rule. Which groups an instance is in: its page
(views/instances.py) and the launch form.

A refused call (a bad port or CIDR, a name taken, deleting "default" or a group
in use) comes back from the API with its reason, which the app's error handler
shows as a message on the page the form was on (dashboard/app.py)."""

from __future__ import annotations

import uuid
from typing import Any

from cloudapi.v1 import security_group_pb2 as pb
from flask import Blueprint, flash, redirect, render_template, url_for

from dashboard import api
from dashboard.forms import ActionForm, SecurityGroupForm, SecurityGroupRuleForm, options

bp = Blueprint("security_groups", __name__)


def list_groups() -> list[pb.SecurityGroup]:
    """The project's groups, by name (the API's order)."""
    return api.every_page(api.client().security_groups.ListSecurityGroups,
                          pb.ListSecurityGroupsRequest, "security_groups")


def rule_row(r: pb.SecurityGroupRule) -> dict[str, str]:
    """A rule as people read it (as cloudctl shows it): ports "80" or "8000-8080"
    (empty: every port), its remote a CIDR, a group's name, or anyone."""
    ports = "" if not r.port_min else (str(r.port_min) if r.port_min == r.port_max
                                       else f"{r.port_min}-{r.port_max}")
    remote = r.remote_cidr or (f"group {r.remote_group_name or r.remote_group_id}"
                               if r.remote_group_id else "anyone")
    return {"id": r.id, "direction": r.direction, "protocol": r.protocol, "ports": ports,
            "remote": remote}


def _page(create: SecurityGroupForm | None = None, status: int = 200) -> Any:
    groups = list_groups()
    rule = SecurityGroupRuleForm()
    rule.group.choices = options([(g.id, g.name) for g in groups])
    rule.remote_group.choices = options([("", "none")] + [(g.id, g.name) for g in groups])
    rows = [{"id": g.id, "name": g.name, "description": g.description, "created_at": g.created_at,
             "rules": [rule_row(r) for r in g.rules]} for g in groups]
    return render_template("security_groups.html", groups=rows, rule=rule, form=ActionForm(),
                           create=create or SecurityGroupForm(prefix="create")), status


@bp.get("/security-groups")
def index() -> Any:
    return _page()


@bp.post("/security-groups/create")
def create() -> Any:
    form = SecurityGroupForm(prefix="create")
    if not form.validate():
        return _page(create=form, status=400)
    made = api.call(api.client().security_groups.CreateSecurityGroup, pb.CreateSecurityGroupRequest(
        name=form.name.data, description=form.description.data or "", request_id=str(uuid.uuid4())))
    flash(f"Security group {made.name} created.", "info")
    return redirect(url_for("security_groups.index"))


@bp.post("/security-groups/<ref>/delete")
def delete(ref: str) -> Any:
    stub = api.client().security_groups
    group = api.call(stub.GetSecurityGroup, pb.GetSecurityGroupRequest(id_or_name=ref))
    api.call(stub.DeleteSecurityGroup, pb.DeleteSecurityGroupRequest(id_or_name=group.id))
    flash(f"Security group {group.name} deleted.", "info")
    return redirect(url_for("security_groups.index"))


@bp.post("/security-groups/rules/create")
def create_rule() -> Any:
    form = SecurityGroupRuleForm()
    if not form.validate():
        flash("Add a rule: " + "; ".join(f"{getattr(form, k).label.text}: {', '.join(v)}"
                                         for k, v in form.errors.items()), "error")
        return redirect(url_for("security_groups.index"))
    port_min, port_max = form.ports()
    made = api.call(api.client().security_groups.CreateSecurityGroupRule,
                    pb.CreateSecurityGroupRuleRequest(
                        security_group=form.group.data, direction=form.direction.data or "",
                        protocol=form.protocol.data or "", port_min=port_min, port_max=port_max,
                        remote_cidr=(form.remote_cidr.data or "").strip(),
                        remote_group=form.remote_group.data or "", request_id=str(uuid.uuid4())))
    shown = rule_row(made)
    ports = f" port {shown['ports']}" if shown["ports"] else ""
    peer = "from" if made.direction == "ingress" else "to"
    flash(f"Rule added: {made.direction} {made.protocol}{ports} {peer} {shown['remote']}.", "info")
    return redirect(url_for("security_groups.index"))


@bp.post("/security-groups/rules/<rule_id>/delete")
def delete_rule(rule_id: str) -> Any:
    api.call(api.client().security_groups.DeleteSecurityGroupRule,
             pb.DeleteSecurityGroupRuleRequest(id=rule_id))
    flash("Rule deleted.", "info")
    return redirect(url_for("security_groups.index"))
