"""Floating IPs: the project's external addresses: allocate, attach to an
instance (its first NIC, or the one on a chosen network), detach, release."""

from __future__ import annotations

import uuid
from typing import Any

from cloudapi.v1 import compute_pb2 as cpb
from cloudapi.v1 import network_pb2 as pb
from flask import Blueprint, flash, redirect, render_template, url_for

from dashboard import api
from dashboard.forms import ActionForm, AttachFloatingIpForm, options
from dashboard.views.networks import list_networks

bp = Blueprint("floating_ips", __name__)


@bp.get("/floating-ips")
def index() -> Any:
    client = api.client()
    found = api.every_page(client.networks.ListFloatingIps, pb.ListFloatingIpsRequest, "floating_ips")
    instances = {i.id: i.name for i in api.every_page(
        client.instances.ListInstances, cpb.ListInstancesRequest, "instances")}
    networks = {n.id: n.name for n in list_networks()}
    rows = [{"address": f.address, "fixed_ip": f.fixed_ip, "instance_id": f.instance_id,
             "instance": instances.get(f.instance_id, f.instance_id),
             "network": networks.get(f.network_id, f.network_id), "created_at": f.created_at}
            for f in sorted(found, key=lambda f: f.address)]
    attach = AttachFloatingIpForm()
    attach.address.choices = options([(f["address"], f["address"] + (f" (on {f['instance']})"
                                                                      if f["instance_id"] else ""))
                                      for f in rows])
    attach.instance.choices = options(sorted(((i, n) for i, n in instances.items()), key=lambda p: p[1]))
    attach.network.choices = options([("", "its first NIC"),
                                      *sorted(networks.items(), key=lambda p: p[1])])
    return render_template("floating_ips.html", floating_ips=rows, attach=attach, form=ActionForm())


@bp.post("/floating-ips/create")
def create() -> Any:
    made = api.call(api.client().networks.CreateFloatingIp,
                    pb.CreateFloatingIpRequest(request_id=str(uuid.uuid4())))
    flash(f"Floating IP {made.address} allocated.", "info")
    return redirect(url_for("floating_ips.index"))


@bp.post("/floating-ips/attach")
def attach() -> Any:
    form = AttachFloatingIpForm()
    # Not checked against the choices: the API decides which address, instance and
    # network this project may use, and its refusal is the message shown.
    for field in (form.address, form.instance, form.network):
        field.validate_choice = False
    if not form.validate():
        flash("Choose a floating IP and an instance to attach it to.", "error")
        return redirect(url_for("floating_ips.index"))
    done = api.call(api.client().networks.AttachFloatingIp, pb.AttachFloatingIpRequest(
        address=form.address.data, instance=form.instance.data, network=form.network.data or ""))
    flash(f"Floating IP {done.address} attached to {done.fixed_ip}.", "info")
    return redirect(url_for("floating_ips.index"))


@bp.post("/floating-ips/<address>/detach")
def detach(address: str) -> Any:
    done = api.call(api.client().networks.DetachFloatingIp, pb.FloatingIpRequest(address=address))
    flash(f"Floating IP {done.address} detached.", "info")
    return redirect(url_for("floating_ips.index"))


@bp.post("/floating-ips/<address>/delete")
def delete(address: str) -> Any:
    api.call(api.client().networks.DeleteFloatingIp, pb.FloatingIpRequest(address=address))
    flash(f"Floating IP {address} released.", "info")
    return redirect(url_for("floating_ips.index"))
