"""The Flask app factory: `create_app(config)` builds the dashboard for one cloud
API endpoint (tests build it on their own cloud; gunicorn in dashboard.server)."""

from __future__ import annotations

import logging
from typing import Any

import grpc
from flask import Flask, flash, jsonify, redirect, render_template, request, session, url_for
from flask_wtf.csrf import CSRFError, CSRFProtect
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response

from dashboard import api
from dashboard.helpers import age, back, json_error, size, timestamp, wants_json
from dashboard.sessions import AUTH_KEY, ServerSideSessionInterface, SessionStore

log = logging.getLogger(__name__)
csrf = CSRFProtect()

# Pages anyone may see; everything else needs a login.
PUBLIC_ENDPOINTS = {"auth.login", "static", "healthz"}

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; "
       "object-src 'none'")


def create_app(config: dict[str, Any]) -> Flask:
    """config: API_ENDPOINT, SECRET_KEY, SESSION_DIR (and any Flask setting)."""
    app = Flask(__name__)
    app.config.update(
        API_TIMEOUT_S=15.0,
        SESSION_COOKIE_NAME="smallcloud_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        WTF_CSRF_TIME_LIMIT=None,  # valid as long as the session (the token's hour)
        MAX_CONTENT_LENGTH=21 * 2**30,
        POLL_INTERVAL_MS=2000,
    )
    app.config.update(config)
    for key in ("API_ENDPOINT", "SECRET_KEY", "SESSION_DIR"):
        if not app.config.get(key):
            raise ValueError(f"create_app: {key} is required")
    app.session_interface = ServerSideSessionInterface(SessionStore(app.config["SESSION_DIR"]))
    csrf.init_app(app)

    from dashboard.views import admin, auth, images, instances, keypairs, launch, quotas, usage
    for module in (auth, instances, launch, keypairs, images, quotas, usage, admin):
        app.register_blueprint(module.bp)

    app.before_request(_require_login)
    app.teardown_request(lambda _exc: api.use_token(""))
    app.after_request(_security_headers)
    _error_handlers(app)
    _template_helpers(app)

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify(ok=True)

    @app.get("/")
    def index() -> Response:
        return redirect(url_for("instances.index"))

    return app


def _require_login() -> Response | None:
    api.use_token(str(session.get(AUTH_KEY, "")))
    if request.endpoint in PUBLIC_ENDPOINTS or session.get(AUTH_KEY):
        return None
    if wants_json():
        return json_error("not logged in", "UNAUTHENTICATED", 401)
    return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))


def _security_headers(response: Response) -> Response:
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    if request.endpoint != "static":
        response.headers.setdefault("Cache-Control", "no-store")
    return response


def _error_handlers(app: Flask) -> None:
    @app.errorhandler(grpc.RpcError)
    def rpc_error(exc: grpc.RpcError) -> Any:
        code = exc.code()
        message = api.error_message(exc)
        status = api.HTTP_STATUS.get(code, 502)
        log.info("API refused %s %s: %s %s", request.method, request.path, code.name, exc.details())
        if code == grpc.StatusCode.UNAUTHENTICATED:
            session.clear()
            if wants_json():
                return json_error("your session has expired; log in again", code.name, 401)
            flash("Your session has expired. Log in again.", "error")
            return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
        if wants_json():
            return json_error(message, code.name, status)
        if request.method == "POST" and code != grpc.StatusCode.NOT_FOUND:
            flash(message, "error")
            return back()
        return render_template("error.html", title=code.name.replace("_", " ").title(),
                               message=message), status

    @app.errorhandler(CSRFError)
    def csrf_error(exc: CSRFError) -> Any:
        message = f"The form was refused: {exc.description} Reload the page and try again."
        if wants_json():
            return json_error(message, "CSRF", 400)
        return render_template("error.html", title="Form refused", message=message), 400

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Any:
        if wants_json():
            return json_error(exc.description or exc.name, exc.name, exc.code or 500)
        return render_template("error.html", title=exc.name, message=exc.description), exc.code

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Any:
        # Logged in full; the user gets a message, never a stack trace.
        log.exception("unexpected error on %s %s", request.method, request.path)
        message = "Something went wrong in the dashboard. The error has been logged."
        if wants_json():
            return json_error(message, "INTERNAL", 500)
        return render_template("error.html", title="Internal error", message=message), 500


def _template_helpers(app: Flask) -> None:
    app.add_template_filter(age)
    app.add_template_filter(timestamp)
    app.add_template_filter(size)

    @app.context_processor
    def user() -> dict[str, Any]:
        return {
            "user": {"name": session.get("username"), "project": session.get("project"),
                     "role": session.get("role")} if session.get(AUTH_KEY) else None,
            "is_admin": session.get("role") == "admin",
            "poll_ms": app.config["POLL_INTERVAL_MS"],
        }
