"""Keypairs: list, create (the private key is shown once), import, delete."""

from __future__ import annotations

from typing import Any

from cloudapi.v1 import compute_pb2 as pb
from flask import Blueprint, flash, redirect, render_template, url_for

from dashboard import api
from dashboard.forms import ActionForm, ImportKeypairForm, KeypairForm

bp = Blueprint("keypairs", __name__)


def _page(create: KeypairForm | None = None, imported: ImportKeypairForm | None = None,
          status: int = 200) -> Any:
    keypairs = api.call(api.client().keypairs.ListKeypairs, pb.ListKeypairsRequest()).keypairs
    return render_template("keypairs.html", keypairs=sorted(keypairs, key=lambda k: k.name),
                           create=create or KeypairForm(prefix="create"),
                           imported=imported or ImportKeypairForm(prefix="import"),
                           form=ActionForm()), status


@bp.get("/keypairs")
def index() -> Any:
    return _page()


@bp.post("/keypairs/create")
def create() -> Any:
    form = KeypairForm(prefix="create")
    if not form.validate():
        return _page(create=form, status=400)
    made = api.call(api.client().keypairs.CreateKeypair, pb.CreateKeypairRequest(name=form.name.data))
    # Shown once, in this response only (never stored in the session or a flash).
    return render_template("keypair_created.html", keypair=made.keypair, private_key=made.private_key)


@bp.post("/keypairs/import")
def import_() -> Any:
    form = ImportKeypairForm(prefix="import")
    if not form.validate():
        return _page(imported=form, status=400)
    made = api.call(api.client().keypairs.ImportKeypair, pb.ImportKeypairRequest(
        name=form.name.data, public_key=form.public_key.data.strip()))
    flash(f"Keypair {made.name} imported ({made.fingerprint}).", "info")
    return redirect(url_for("keypairs.index"))


@bp.post("/keypairs/<name>/delete")
def delete(name: str) -> Any:
    api.call(api.client().keypairs.DeleteKeypair, pb.DeleteKeypairRequest(name=name))
    flash(f"Keypair {name} deleted.", "info")
    return redirect(url_for("keypairs.index"))
