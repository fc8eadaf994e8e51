"""Networks: the project's private networks: list, create (name and CIDR), delete.

A refused create or delete (a bad CIDR, a name taken, a network that still has
instances on it) comes back from the API with its reason, which the app's error
handler shows as a message on the page the form was on (dashboard/app.py)."""

from __future__ import annotations

from typing import Any

from cloudapi.v1 import network_pb2 as pb
from flask import Blueprint, flash, redirect, render_template, url_for

from dashboard import api
from dashboard.forms import ActionForm, NetworkForm

bp = Blueprint("networks", __name__)


def list_networks() -> list[pb.Network]:
    return api.every_page(api.client().networks.ListNetworks, pb.ListNetworksRequest, "networks")


def _page(create: NetworkForm | None = None, status: int = 200) -> Any:
    return render_template("networks.html", networks=sorted(list_networks(), key=lambda n: n.name),
                           create=create or NetworkForm(prefix="create"), form=ActionForm()), status


@bp.get("/networks")
def index() -> Any:
    return _page()


@bp.post("/networks/create")
def create() -> Any:
    form = NetworkForm(prefix="create")
    if not form.validate():
        return _page(create=form, status=400)
    made = api.call(api.client().networks.CreateNetwork, pb.CreateNetworkRequest(
        name=form.name.data, cidr=(form.cidr.data or "").strip()))
    flash(f"Network {made.name} created ({made.cidr}).", "info")
    return redirect(url_for("networks.index"))


@bp.post("/networks/<ref>/delete")
def delete(ref: str) -> Any:
    api.call(api.client().networks.DeleteNetwork, pb.DeleteNetworkRequest(id_or_name=ref))
    flash(f"Network {ref} deleted.", "info")
    return redirect(url_for("networks.index"))
