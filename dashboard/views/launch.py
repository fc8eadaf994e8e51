"""Launch instances: the form checks quota and placement before it is sent, and
shows the API's refusal (quota, no host) when it comes."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
from cloudapi.v1 import compute_pb2 as pb
from cloudapi.v1 import identity_pb2 as ipb
from cloudapi.v1 import network_pb2 as npb
from cloudapi.v1 import security_group_pb2 as spb
from flask import Blueprint, flash, jsonify, redirect, render_template, request, url_for

from dashboard import api
from dashboard.forms import LaunchForm, options

bp = Blueprint("launch", __name__)

RESOURCES = [("instances", "instances", ""), ("vcpus", "vCPUs", ""), ("memory_mb", "RAM", " MiB"),
             ("disk_gb", "disk", " GiB")]


def quota_problems(quota: ipb.Quota, flavor: pb.Flavor | None, count: int) -> list[str]:
    """Why `count` instances of `flavor` would exceed the project's quota (empty: they fit)."""
    if flavor is None or count < 1:
        return []
    need = {"instances": count, "vcpus": flavor.vcpus * count, "memory_mb": flavor.memory_mb * count,
            "disk_gb": flavor.disk_gb * count}
    problems = []
    for field, label, unit in RESOURCES:
        limit = getattr(quota.limits, field)
        used = getattr(quota.usage, field)
        if limit >= 0 and used + need[field] > limit:
            problems.append(f"{label}: {need[field]}{unit} needed, {max(limit - used, 0)}{unit} "
                            f"left of {limit}{unit}")
    return problems


def choices(form: LaunchForm) -> dict[str, pb.Flavor]:
    client = api.client()
    flavors = {f.name: f for f in api.call(client.flavors.ListFlavors, pb.ListFlavorsRequest()).flavors}
    form.flavor.choices = options([
        (f.name, f"{f.name}: {f.vcpus} vCPU, {f.memory_mb} MiB RAM, {f.disk_gb} GiB disk")
        for f in flavors.values()])
    images = api.call(client.images.ListImages, pb.ListImagesRequest()).images
    form.image.choices = options([("", "default image")] + [
        (i.id, f"{i.name}" + (f" ({i.os})" if i.os else "")) for i in images if i.status == "ACTIVE"])
    keypairs = api.call(client.keypairs.ListKeypairs, pb.ListKeypairsRequest()).keypairs
    form.key_name.choices = options([("", "none")] + [(k.name, k.name) for k in keypairs])
    networks = api.every_page(client.networks.ListNetworks, npb.ListNetworksRequest, "networks")
    form.network.choices = options([("", "the project's default network")] + [
        (n.name, f"{n.name} ({n.cidr})") for n in networks if n.name != "default"])
    groups = api.every_page(client.security_groups.ListSecurityGroups, spb.ListSecurityGroupsRequest,
                            "security_groups")
    form.security_groups.choices = options([(g.name, g.name) for g in groups])
    return flavors


def my_quota() -> ipb.Quota:
    return api.call(api.client().quotas.GetQuota, ipb.GetQuotaRequest())


@bp.route("/launch", methods=["GET", "POST"])
def launch() -> Any:
    form = LaunchForm()
    flavors = choices(form)
    if not form.is_submitted():
        form.request_id.data = str(uuid.uuid4())
        if "small" in flavors:
            form.flavor.data = "small"
    error = ""
    if form.validate_on_submit():
        try:
            return _create(form)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                raise
            error = api.error_message(exc)
            form.request_id.data = str(uuid.uuid4())  # the next try is a new request
    status = 200 if not form.is_submitted() else (409 if error else 400)
    return render_template("launch.html", form=form, error=error, quota=my_quota(),
                           flavors=list(flavors.values())), status


def _create(form: LaunchForm) -> Any:
    stub = api.client().instances
    user_data = (form.user_data.data or "").replace("\r\n", "\n").encode()
    request_id = form.request_id.data or str(uuid.uuid4())
    if form.count.data and form.count.data > 1:
        made = api.call(stub.CreateInstances, pb.CreateInstancesRequest(
            name=form.name.data, flavor=form.flavor.data, image=form.image.data or "",
            count=form.count.data, request_id=request_id, key_name=form.key_name.data or "",
            user_data=user_data, security_groups=form.security_groups.data or [])).instances
        flash(f"{len(made)} instances requested: {', '.join(i.name for i in made)}", "info")
        return redirect(url_for("instances.index"))
    created = api.call(stub.CreateInstance, pb.CreateInstanceRequest(
        name=form.name.data, flavor=form.flavor.data, image=form.image.data or "",
        request_id=request_id, key_name=form.key_name.data or "", user_data=user_data,
        networks=[form.network.data] if form.network.data else [],
        security_groups=form.security_groups.data or []))
    flash(f"{created.name}: launch requested", "info")
    return redirect(url_for("instances.detail", ref=created.id))


@bp.get("/launch/check.json")
def check() -> Any:
    """Before submitting: would it exceed the quota, and is there a host for it?"""
    flavor_name = request.args.get("flavor", "")
    try:
        count = max(1, int(request.args.get("count", "1") or 1))
    except ValueError:
        count = 1
    client = api.client()
    flavor = next((f for f in api.call(client.flavors.ListFlavors, pb.ListFlavorsRequest()).flavors
                   if f.name == flavor_name), None)
    problems = quota_problems(my_quota(), flavor, count)
    placement: dict[str, Any] = {"host": "", "summary": "", "error": ""}
    if flavor is not None:
        try:
            preview = api.call(client.instances.PreviewPlacement, pb.CreateInstanceRequest(
                name="preview", flavor=flavor.name, image=request.args.get("image", "")))
            placement.update(host=preview.host, summary=preview.summary)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                raise
            placement["error"] = api.error_message(exc)
    messages = [f"Over quota: {p}" for p in problems]
    if flavor is not None and not placement["host"]:
        messages.append(placement["error"] or f"No host can take a {flavor.name} instance now: "
                        f"{placement['summary']}")
    return jsonify(ok=not messages, quota=problems, placement=placement, messages=messages,
                   flavor=flavor_name, count=count)
