"""The Flask app factory: `create_app(config)` builds the dashboard for one cloud
API endpoint (tests build it on their own cloud; gunicorn in dashboard.server)."""

from __future__ import annotations

import logging
from typing import Any

import grpc
from flask import (
    Flask,
    current_app,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_wtf.csrf import CSRFError, CSRFProtect
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.wrappers import Response

from dashboard import api
from dashboard.helpers import (
    age,
    back,
    check_csrf_before_the_body,
    json_error,
    size,
    timestamp,
    wants_json,
)
from dashboard.sessions import AUTH_KEY, ServerSideSessionInterface, SessionStore

log = logging.getLogger(__name__)
csrf = CSRFProtect()

# Pages anyone may see; everything else needs a login.
PUBLIC_ENDPOINTS = {"auth.login", "static", "healthz"}
# The one endpoint that takes a large body (UPLOAD_MAX_BYTES, not
# MAX_CONTENT_LENGTH). Its CSRF token comes in its URL (the form's action) or an
# X-CSRFToken header, so it is checked before the body is read.
LARGE_BODY_ENDPOINTS = {"images.upload"}
# Asked by the front proxy, not a browser: refused with a status, never a redirect.
PROXY_CHECKS = {"images.upload_allowed"}

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
        # CSRFProtect's own before_request parses the form: _guard calls it, after
        # the login and size checks, so nothing is read for a request refused anyway.
        WTF_CSRF_CHECK_DEFAULT=False,
        # Request bodies (dashboard/config.py: body_max_bytes, upload_max_bytes).
        MAX_CONTENT_LENGTH=2**20,
        UPLOAD_MAX_BYTES=21 * 2**30,
        # The upload's text fields (name, os, cmdline) are short; its files go to disk.
        UPLOAD_MAX_FORM_MEMORY_SIZE=64 * 1024,
        POLL_INTERVAL_MS=2000,
    )
    app.config.update(config)
    for key in ("API_ENDPOINT", "SECRET_KEY", "SESSION_DIR"):
        if not app.config.get(key):
            raise ValueError(f"create_app: {key} is required")
    app.session_interface = ServerSideSessionInterface(SessionStore(app.config["SESSION_DIR"]))
    csrf.init_app(app)

    from dashboard.views import (
        admin,
        auth,
        floating_ips,
        images,
        instances,
        keypairs,
        launch,
        networks,
        quotas,
        security_groups,
        usage,
    )
    for module in (auth, instances, launch, networks, floating_ips, security_groups, keypairs, images,
                   quotas, usage, admin):
        app.register_blueprint(module.bp)

    app.before_request(_guard)
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


def _guard() -> Response | None:
    """Before anything reads the request's body: who is asking, then how much
    they send, then the CSRF token (issue 15: a form parsed before the login
    check spooled an anonymous 255 MiB upload to disk). A request refused here
    has had none of its body read."""
    api.use_token(str(session.get(AUTH_KEY, "")))  # (the session is the cookie: no body)
    if request.endpoint not in PUBLIC_ENDPOINTS and not session.get(AUTH_KEY):
        if wants_json() or request.endpoint in PROXY_CHECKS:
            return json_error("not logged in", "UNAUTHENTICATED", 401)
        return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
    large = request.endpoint in LARGE_BODY_ENDPOINTS
    if large:
        request.max_content_length = current_app.config["UPLOAD_MAX_BYTES"]
        request.max_form_memory_size = current_app.config["UPLOAD_MAX_FORM_MEMORY_SIZE"]
    limit = request.max_content_length
    if limit is not None and (request.content_length or 0) > limit:
        raise RequestEntityTooLarge(f"The request is larger than this page takes ({limit} bytes).")
    if current_app.config["WTF_CSRF_ENABLED"] and \
            request.method in current_app.config["WTF_CSRF_METHODS"]:
        if large:
            check_csrf_before_the_body(request.args.get("csrf_token"))
        else:
            csrf.protect()  # reads the form: at most MAX_CONTENT_LENGTH
    return None


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
