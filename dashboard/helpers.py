"""Small helpers the views share: formatting, redirects back, JSON errors."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from flask import current_app, jsonify, redirect, request, url_for
from flask_wtf.csrf import CSRFError, same_origin, validate_csrf
from werkzeug.wrappers import Response
from wtforms import ValidationError


def wants_json() -> bool:
    return request.path.endswith(".json") or request.accept_mimetypes.best == "application/json"


def json_error(message: str, code: str, status: int) -> Response:
    response = jsonify(error=message, code=code)
    response.status_code = status
    return response


def check_csrf_before_the_body(token: str | None) -> None:
    """CSRFProtect's check, with the token from the URL (the upload form's
    action) or the X-CSRFToken header instead of the form, which is not read.
    Raises CSRFError."""
    token = token or request.headers.get("X-CSRFToken") or request.headers.get("X-CSRF-Token")
    try:
        validate_csrf(token)
    except ValidationError as exc:
        raise CSRFError(exc.args[0]) from None
    if request.is_secure and current_app.config["WTF_CSRF_SSL_STRICT"] and \
            not same_origin(request.referrer or "", f"https://{request.host}/"):
        raise CSRFError("The referrer does not match the host.")


def back(default: str = "instances.index") -> Response:
    """Redirect to the page the form was on (same site only)."""
    target = request.referrer or ""
    parts = urlsplit(target)
    if target and parts.netloc == request.host and parts.scheme in ("http", "https"):
        return redirect(parts.path + (f"?{parts.query}" if parts.query else ""))
    return redirect(url_for(default))


def age(ts: Any) -> str:
    """'12s', '5m', '3h', '2d' since a protobuf Timestamp."""
    if ts is None or not ts.seconds:
        return ""
    seconds = max(0, int(time.time() - ts.seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def timestamp(ts: Any) -> str:
    if ts is None or not (ts.seconds or ts.nanos):
        return ""
    return datetime.fromtimestamp(ts.seconds, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def size(value: float, unit: str = "B") -> str:
    """Human sizes: size(1536, 'MiB') -> '1.5 GiB'."""
    units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
    i = units.index(unit)
    v = float(value)
    while abs(v) >= 1024 and i < len(units) - 1:
        v /= 1024
        i += 1
    return f"{v:.0f} {units[i]}" if v == int(v) else f"{v:.1f} {units[i]}"
