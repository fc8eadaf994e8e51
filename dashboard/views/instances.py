"""Instances: the list (live status), one instance's detail (properties, actions,
console, stats) and the operations on it."""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

import grpc
from cloudapi.v1 import compute_pb2 as pb
from cloudapi.v1 import security_group_pb2 as spb
from flask import Blueprint, abort, flash, jsonify, redirect, render_template, request, url_for

from dashboard import api
from dashboard.forms import (
    ActionForm,
    InstanceSecurityGroupsForm,
    RebootForm,
    ResizeForm,
    ScaleForm,
    options,
)
from dashboard.helpers import age, back, timestamp

bp = Blueprint("instances", __name__)

SHOWN = ["name", "status", "task_state", "power_state", "flavor", "image", "host", "addresses",
         "allowed_actions"]
# Console and stats are side panels: their errors are a note in the panel (an instance
# still building has neither), except these, which are about the page itself.
PAGE_ERRORS = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED)
OPERATIONS = {"start": "StartInstance", "stop": "StopInstance", "reboot": "RebootInstance"}


def instance_dict(i: pb.Instance, images: dict[str, str]) -> dict[str, Any]:
    data = {
        "id": i.id, "name": i.name, "status": i.status, "task_state": i.task_state,
        "vm_state": i.vm_state, "power_state": i.power_state, "flavor": i.flavor,
        "vcpus": i.vcpus, "memory_mb": i.memory_mb, "disk_gb": i.disk_gb,
        "max_vcpus": i.max_vcpus, "max_memory_mb": i.max_memory_mb,
        "image": images.get(i.image, i.image), "image_id": i.image, "host": i.host,
        "addresses": list(i.addresses), "key_name": i.key_name, "group": i.group,
        "nics": [{"network": n.network_name, "network_id": n.network_id, "fixed_ip": n.fixed_ip,
                  "mac": n.mac, "floating_ip": n.floating_ip} for n in i.nics],
        "security_groups": [{"id": g.id, "name": g.name} for g in i.security_groups],
        "age": age(i.created_at), "created_at": timestamp(i.created_at),
        "launched_at": timestamp(i.launched_at),
        "fault": f"{i.fault.phase}: {i.fault.message}" if i.HasField("fault") else "",
        "url": url_for("instances.detail", ref=i.id),
        # What the API accepts now (the state machine's answer): the buttons shown.
        "allowed_actions": list(i.allowed_actions),
    }
    # What a list row shows (age aside): the page's script redraws a row when it changes.
    data["sig"] = hashlib.sha256(json.dumps([data[k] for k in SHOWN]).encode()).hexdigest()[:16]
    return data


def list_instances() -> list[dict[str, Any]]:
    found = api.call(api.client().instances.ListInstances, pb.ListInstancesRequest()).instances
    images = api.image_names()
    return [instance_dict(i, images) for i in sorted(found, key=lambda i: (i.name, i.id))]


@bp.get("/instances")
def index() -> Any:
    return render_template("instances.html", instances=list_instances(), form=ActionForm())


@bp.get("/instances.json")
def index_json() -> Any:
    return jsonify(instances=list_instances())


def flavors() -> list[pb.Flavor]:
    return list(api.call(api.client().flavors.ListFlavors, pb.ListFlavorsRequest()).flavors)


@bp.get("/instances/<ref>")
def detail(ref: str) -> Any:
    instance = api.instance_or_404(ref)
    resize = ResizeForm()
    resize.flavor.choices = options([
        (f.name, f"{f.name} ({f.vcpus} vCPU, {f.memory_mb} MiB, {f.disk_gb} GiB)")
        for f in flavors() if f.name != instance.flavor])
    scale = ScaleForm(data={"vcpus": instance.vcpus, "memory_mb": instance.memory_mb,
                            "disk_gb": instance.disk_gb})
    groups = None
    if instance.nics or instance.security_groups:  # tenant networks: it can be in groups
        groups = InstanceSecurityGroupsForm(data={
            "security_groups": [g.name for g in instance.security_groups]})
        groups.security_groups.choices = options([
            (g.name, g.name) for g in api.every_page(api.client().security_groups.ListSecurityGroups,
                                                     spb.ListSecurityGroupsRequest, "security_groups")])
    return render_template("instance.html", i=instance_dict(instance, api.image_names()),
                           actions=actions_of(instance.id), form=ActionForm(), reboot=RebootForm(),
                           resize=resize, scale=scale, groups=groups)


def actions_of(instance_id: str) -> list[dict[str, Any]]:
    found = api.call(api.client().instances.ListInstanceActions,
                     pb.ListInstanceActionsRequest(id_or_name=instance_id)).actions
    rows = [{"action": a.action, "user": a.user, "start": timestamp(a.start), "end": timestamp(a.end),
             "result": a.result, "error": a.error, "request_id": a.request_id} for a in found]
    return sorted(rows, key=lambda a: a["start"], reverse=True)


@bp.get("/instances/<ref>.json")
def detail_json(ref: str) -> Any:
    instance = api.instance_or_404(ref)
    return jsonify(instance=instance_dict(instance, api.image_names()), actions=actions_of(instance.id))


@bp.get("/instances/<ref>/console.json")
def console_json(ref: str) -> Any:
    instance = api.instance_or_404(ref)
    try:
        output = api.call(api.client().instances.GetConsoleOutput, pb.GetConsoleOutputRequest(
            id_or_name=instance.id, max_bytes=int(request.args.get("bytes", 32768)))).output
    except grpc.RpcError as exc:
        if exc.code() in PAGE_ERRORS:
            raise
        return jsonify(output="", note=api.error_message(exc))  # e.g. not on a host (yet)
    return jsonify(output=output, note="")


@bp.get("/instances/<ref>/stats.json")
def stats_json(ref: str) -> Any:
    instance = api.instance_or_404(ref)
    try:
        stats = api.call(api.client().instances.GetInstanceStats,
                         pb.GetInstanceRequest(id_or_name=instance.id))
    except grpc.RpcError as exc:
        if exc.code() in PAGE_ERRORS:
            raise
        return jsonify(stats=None, note=api.error_message(exc))
    return jsonify(stats={f.name: getattr(stats, f.name) for f in stats.DESCRIPTOR.fields}, note="")


def _done(instance: pb.Instance, verb: str) -> Any:
    flash(f"{instance.name}: {verb}" + (f" ({instance.task_state})" if instance.task_state else ""),
          "info")
    return back()


@bp.post("/instances/<ref>/<operation>")
def operate(ref: str, operation: str) -> Any:
    instance = api.instance_or_404(ref)
    stub = api.client().instances
    if operation in OPERATIONS:
        hard = operation == "reboot" and RebootForm().hard.data
        changed = api.call(getattr(stub, OPERATIONS[operation]), pb.InstanceOperationRequest(
            id_or_name=instance.id, request_id=str(uuid.uuid4()), hard=bool(hard)))
        return _done(changed, f"{operation} requested")
    if operation == "delete":
        deleted = api.call(stub.DeleteInstance, pb.DeleteInstanceRequest(
            id_or_name=instance.id, request_id=str(uuid.uuid4())))
        flash(f"{deleted.name}: delete requested", "info")
        return redirect(url_for("instances.index"))
    if operation == "resize":
        form = ResizeForm()
        form.flavor.choices = options([(f.name, f.name) for f in flavors()])
        if not form.validate():
            flash("Choose a flavor to resize to.", "error")
            return back()
        changed = api.call(stub.ResizeInstance, pb.ResizeInstanceRequest(
            id_or_name=instance.id, flavor=form.flavor.data, request_id=str(uuid.uuid4())))
        return _done(changed, f"resize to {form.flavor.data} requested")
    if operation == "scale":
        scale = ScaleForm()
        if not scale.validate():
            flash("Scale: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in scale.errors.items()), "error")
            return back()
        changed = api.call(stub.ScaleInstance, pb.ScaleInstanceRequest(
            id_or_name=instance.id, vcpus=scale.vcpus.data or 0, memory_mb=scale.memory_mb.data or 0,
            disk_gb=scale.disk_gb.data or 0, request_id=str(uuid.uuid4())))
        return _done(changed, "scale requested")
    if operation == "security-groups":
        chosen = InstanceSecurityGroupsForm().security_groups.data or []
        changed = api.call(stub.SetInstanceSecurityGroups, pb.SetInstanceSecurityGroupsRequest(
            id_or_name=instance.id, security_groups=chosen))
        flash(f"{changed.name}: security groups set to "
              f"{', '.join(g.name for g in changed.security_groups)}", "info")
        return back()
    abort(404)
