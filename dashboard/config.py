"""The dashboard's settings: a [dashboard] table in a TOML file (localcloud writes
one), turned into the Flask config `create_app` takes."""

from __future__ import annotations

import os
import secrets
import tomllib
from pathlib import Path
from typing import Any

DEFAULTS: dict[str, Any] = {
    # Where the dashboard answers: the front proxy (nginx, dashboard/proxy.py)
    # listens here, and gunicorn on app_listen behind it. With no app_listen,
    # gunicorn serves `listen` itself, with nothing to hold slow clients off its
    # threads: for trying it out, not for a network anyone else reaches.
    "listen": "127.0.0.1:8080",
    "app_listen": "",  # "unix:/path/to/gunicorn.sock" (or "127.0.0.1:port")
    # One API "host:port", or several replicas (a list, or comma-separated) to fail over between.
    "api_endpoint": "127.0.0.1:50051",
    "secret_key_file": "",
    "session_dir": "",
    "workers": 2,
    "threads": 8,
    "api_timeout_s": 15.0,
    "cookie_secure": False,  # true behind HTTPS
    # Request bodies: every endpoint takes at most body_max_bytes, except the
    # image upload (a logged-in member's only): upload_max_bytes. The app and
    # the proxy both refuse a larger Content-Length before reading the body.
    "body_max_bytes": 2**20,
    "upload_max_bytes": 21 * 2**30,
    # The proxy: its pid file and temporary files (request bodies it buffers)
    # go to proxy_dir; the user its workers run as when started as root
    # (empty: nginx's default, nobody); its access log.
    "proxy_dir": "",
    "proxy_user": "",
    "proxy_access_log": "",
}


def read_secret_key(path: str | Path) -> str:
    """The key that signs session cookies and CSRF tokens: 32 random bytes in an
    owner-only file, made on first use (O_EXCL, so racing processes agree)."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(32))
    key = path.read_text().strip()
    if len(key) < 32:
        raise ValueError(f"{path}: the dashboard's secret key is too short")
    return key


def load_settings(path: str | Path) -> dict[str, Any]:
    with open(path, "rb") as f:
        data = tomllib.load(f).get("dashboard", {})
    unknown = set(data) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"{path}: unknown dashboard settings {sorted(unknown)}")
    return {**DEFAULTS, **data}


def flask_config(settings: dict[str, Any]) -> dict[str, Any]:
    """Flask config from the settings (the keys create_app reads)."""
    settings = {**DEFAULTS, **settings}
    if not settings["secret_key_file"] or not settings["session_dir"]:
        raise ValueError("the dashboard needs secret_key_file and session_dir")
    return {
        "API_ENDPOINT": ",".join(settings["api_endpoint"])
        if isinstance(settings["api_endpoint"], list) else settings["api_endpoint"],
        "API_TIMEOUT_S": float(settings["api_timeout_s"]),
        "SECRET_KEY": read_secret_key(settings["secret_key_file"]),
        "SESSION_DIR": settings["session_dir"],
        "SESSION_COOKIE_SECURE": bool(settings["cookie_secure"]),
        "MAX_CONTENT_LENGTH": int(settings["body_max_bytes"]),
        "UPLOAD_MAX_BYTES": int(settings["upload_max_bytes"]),
    }
