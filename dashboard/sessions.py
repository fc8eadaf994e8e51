"""Server-side sessions: the API token never leaves the server.

Before login there is no server-side session: the signed cookie carries only
what an anonymous visitor needs (the login form's CSRF token, a flashed
message). Logging in creates a session record (a new random id, so a session
cannot be fixed by an attacker) that holds the API token; from then on the
cookie carries only that id, signed. Logging out deletes the record.

Records are files, one per session, named by the SHA-256 of the id, so every
gunicorn worker sees them and a directory listing reveals no cookie. A record
expires with its API token. This store is the dashboard's own: it never reads
the cloud's etcd or Redis.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

from flask import Flask, Request, Response
from flask.sessions import SessionInterface, SessionMixin
from itsdangerous import BadSignature, URLSafeTimedSerializer
from werkzeug.datastructures import CallbackDict

# Who is logged in: its presence makes a session server-side.
AUTH_KEY = "token"
DEFAULT_TTL_S = 3600.0


class SessionStore:
    """Session records as JSON files in one owner-only directory."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)

    def _path(self, sid: str) -> Path:
        return self.directory / hashlib.sha256(sid.encode()).hexdigest()

    def create(self, data: dict[str, Any], expires_at: float) -> str:
        self.purge_expired()
        sid = secrets.token_urlsafe(32)
        self.save(sid, data, expires_at)
        return sid

    def save(self, sid: str, data: dict[str, Any], expires_at: float) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-")
        with os.fdopen(fd, "w") as f:
            json.dump({"expires_at": expires_at, "data": data}, f)
        os.replace(tmp, self._path(sid))

    def load(self, sid: str) -> tuple[dict[str, Any], float] | None:
        path = self._path(sid)
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if record["expires_at"] < time.time():
            path.unlink(missing_ok=True)
            return None
        return record["data"], record["expires_at"]

    def delete(self, sid: str) -> None:
        self._path(sid).unlink(missing_ok=True)

    def count(self) -> int:
        return sum(1 for p in self.directory.iterdir() if not p.name.startswith("."))

    def purge_expired(self) -> None:
        now = time.time()
        for path in self.directory.iterdir():
            try:
                if path.name.startswith(".tmp-"):
                    if path.stat().st_mtime < now - 60:
                        path.unlink(missing_ok=True)
                elif json.loads(path.read_text())["expires_at"] < now:
                    path.unlink(missing_ok=True)
            except (OSError, ValueError, KeyError):
                continue


class DashboardSession(CallbackDict, SessionMixin):
    def __init__(self, initial: dict[str, Any] | None = None, sid: str | None = None,
                 expires_at: float = 0.0):
        def on_update(_: Any) -> None:
            self.modified = True
            self.accessed = True

        super().__init__(initial or {}, on_update)
        self.sid = sid
        self.expires_at = expires_at
        self.modified = False
        self.accessed = False


class ServerSideSessionInterface(SessionInterface):
    def __init__(self, store: SessionStore):
        self.store = store

    def _serializer(self, app: Flask) -> URLSafeTimedSerializer:
        return URLSafeTimedSerializer(app.secret_key or "", salt="smallcloud-dashboard-session")

    def open_session(self, app: Flask, request: Request) -> DashboardSession:
        raw = request.cookies.get(self.get_cookie_name(app))
        if not raw:
            return DashboardSession()
        try:
            payload = self._serializer(app).loads(raw, max_age=int(DEFAULT_TTL_S * 24))
        except BadSignature:
            return DashboardSession()
        if isinstance(payload, dict) and "sid" in payload:
            found = self.store.load(str(payload["sid"]))
            if found is None:  # expired or logged out elsewhere
                return DashboardSession()
            data, expires_at = found
            return DashboardSession(data, sid=str(payload["sid"]), expires_at=expires_at)
        if isinstance(payload, dict):
            return DashboardSession(payload.get("anonymous", {}))
        return DashboardSession()

    def save_session(self, app: Flask, session: Any, response: Response) -> None:
        assert isinstance(session, DashboardSession)
        name = self.get_cookie_name(app)
        response.vary.add("Cookie")
        if session.get(AUTH_KEY):
            if session.sid is None:  # just logged in: the server-side session begins
                expires_at = float(session.get("expires_at") or time.time() + DEFAULT_TTL_S)
                session.sid = self.store.create(dict(session), expires_at)
                self._set_cookie(app, response, {"sid": session.sid})
            elif session.modified:
                self.store.save(session.sid, dict(session), session.expires_at)
            return
        if session.sid is not None:  # logged out
            self.store.delete(session.sid)
        if not session:
            if session.sid is not None or (session.modified and name):
                response.delete_cookie(name, domain=self.get_cookie_domain(app),
                                       path=self.get_cookie_path(app))
            return
        if session.modified or session.sid is not None:
            self._set_cookie(app, response, {"anonymous": dict(session)})

    def _set_cookie(self, app: Flask, response: Response, payload: dict[str, Any]) -> None:
        response.set_cookie(
            self.get_cookie_name(app), self._serializer(app).dumps(payload),
            httponly=True, secure=self.get_cookie_secure(app),
            samesite=self.get_cookie_samesite(app), domain=self.get_cookie_domain(app),
            path=self.get_cookie_path(app))
