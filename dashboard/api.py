"""The dashboard's way to the cloud: the public gRPC API, as cloudctl uses it.

One CloudClient (one channel, one set of stubs) per process; the token it sends
is the current request's, from the server-side session (a ContextVar, so
concurrent requests in gunicorn's threads never see each other's)."""

from __future__ import annotations

import contextvars
import os
import threading
import time
from contextvars import ContextVar
from typing import Any

import grpc
from cloudapi.v1 import compute_pb2 as pb
from cloudclient.client import CloudClient
from flask import abort, current_app, session

_request_token: ContextVar[str] = ContextVar("dashboard_api_token", default="")


class RequestTokenClient(CloudClient):
    """CloudClient whose token is the current request's."""

    def __init__(self, target: str):
        # CloudClient.__init__ assigns a token: keep that away from the request that
        # happens to build the client (its own token would be lost).
        contextvars.copy_context().run(super().__init__, target)

    @property
    def token(self) -> str:
        return _request_token.get()

    @token.setter
    def token(self, value: str) -> None:
        _request_token.set(value)


_lock = threading.Lock()
_clients: dict[tuple[int, str], RequestTokenClient] = {}


def client() -> RequestTokenClient:
    """This process's client (made after gunicorn forks: a gRPC channel must not
    cross a fork)."""
    key = (os.getpid(), current_app.config["API_ENDPOINT"])
    with _lock:
        if key not in _clients:
            _clients[key] = RequestTokenClient(key[1])
        return _clients[key]


def use_token(token: str) -> None:
    _request_token.set(token)


def timeout() -> float:
    return float(current_app.config.get("API_TIMEOUT_S", 15.0))


def call(method: Any, request: Any) -> Any:
    """One unary RPC with the dashboard's deadline."""
    return method(request, timeout=timeout())


def instance_or_404(ref: str) -> pb.Instance:
    """The instance `ref` of this tenant, or 404 (another project's is NOT_FOUND too)."""
    try:
        return call(client().instances.GetInstance, pb.GetInstanceRequest(id_or_name=ref))
    except grpc.RpcError as exc:
        if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
            abort(404, description=f"No instance {ref!r} in project {session.get('project', '')}.")
        raise


def every_page(method: Any, request_type: type, items: str) -> list[Any]:
    """All the items of a paged List RPC, following next_page_token to the end."""
    found: list[Any] = []
    token = ""
    while True:
        page = call(method, request_type(page_token=token))
        found.extend(getattr(page, items))
        token = page.next_page_token
        if not token:
            return found


_image_names: dict[str, tuple[float, dict[str, str]]] = {}


def image_names() -> dict[str, str]:
    """Image id -> name, as this project sees them (kept for a few seconds: the
    instance list asks every 2 s)."""
    project = str(session.get("project", ""))
    cached = _image_names.get(project)
    if cached and cached[0] > time.monotonic():
        return cached[1]
    names = {i.id: i.name for i in call(client().images.ListImages, pb.ListImagesRequest()).images}
    _image_names[project] = (time.monotonic() + 10, names)
    return names


def forget_images() -> None:
    _image_names.pop(str(session.get("project", "")), None)


HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 409,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


def error_message(exc: grpc.RpcError) -> str:
    """What to tell the user about a refused or failed call."""
    code = exc.code()
    detail = exc.details() or code.name.replace("_", " ").lower()
    if code == grpc.StatusCode.UNAVAILABLE:
        return f"The cloud API is unavailable right now ({detail}). Try again in a moment."
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return "The cloud API did not answer in time. Try again in a moment."
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return f"Not allowed: {detail}"
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return f"Refused: {detail}"
    return detail[:1].upper() + detail[1:]
