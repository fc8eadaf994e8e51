"""Login and logout, with the same users and tokens as cloudctl."""

from __future__ import annotations

from typing import Any

import grpc
from cloudapi.v1 import identity_pb2 as ipb
from flask import Blueprint, flash, redirect, render_template, request, session, url_for

from dashboard import api
from dashboard.forms import LoginForm

bp = Blueprint("auth", __name__)


def _safe_next(target: str | None) -> str:
    # Only a path of this site: never an open redirect.
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return url_for("instances.index")


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    if session.get("token"):
        return redirect(url_for("instances.index"))
    form = LoginForm()
    if form.validate_on_submit():
        client = api.client()
        try:
            token = client.identity.Login(ipb.LoginRequest(
                username=form.username.data, password=form.password.data,
                project=form.project.data or ""), timeout=api.timeout())
        except grpc.RpcError as exc:
            if exc.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED,
                              grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                form.password.errors = [exc.details() or "login refused"]
            else:
                flash(api.error_message(exc), "error")
            return render_template("login.html", form=form), 401
        # A new server-side session (new id) holds the token from here on.
        session.clear()
        session.update(token=token.token, username=token.username, project=token.project,
                       role=token.role, expires_at=token.expires_at.seconds)
        return redirect(_safe_next(form.next.data))
    if not form.is_submitted():
        form.next.data = request.args.get("next", "")
    return render_template("login.html", form=form)


@bp.post("/logout")
def logout() -> Any:
    # (CSRFProtect has checked the form's token before this runs.)
    try:  # revoke the token at the API too; the session goes either way
        api.client().identity.Logout(ipb.LogoutRequest(), timeout=api.timeout())
    except grpc.RpcError:
        pass
    session.clear()
    flash("You are logged out.", "info")
    return redirect(url_for("auth.login"))
