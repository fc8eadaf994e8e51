"""Issue 15 (part 5): the dashboard refuses before it reads. In the app itself
(the proxy in front of it does the same, see test_exhaustion.py): a request
that will be refused (no login, a CSRF token missing, a body over its limit)
is refused before one byte of its body is read, so nothing is parsed,
buffered or spooled to disk for it.

The bodies here are made as they are read and count what the app read: a
300 MiB upload costs nothing unless the app reads it."""

from __future__ import annotations

import io
import re

import pytest

from tests.dashboard.conftest import Web

MiB = 2**20
BOUNDARY = "b0undary"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


class Body:
    """A request body of `size` bytes (a multipart file part of zeros), made as
    it is read; `read_bytes` counts what the app read of it."""

    def __init__(self, size: int):
        self.size = size
        self.position = 0
        self.read_bytes = 0
        self.head = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="disk"; '
                     f'filename="disk.raw"\r\nContent-Type: application/octet-stream\r\n\r\n').encode()
        self.tail = f"\r\n--{BOUNDARY}--\r\n".encode()

    # (The test client finds the length by seeking to the end and back.)
    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = 0) -> int:
        self.position = offset if whence == 0 else self.size + offset
        return self.position

    def read(self, n: int | None = -1) -> bytes:
        left = self.size - self.position
        n = left if n is None or n < 0 else min(n, left)
        start, self.position = self.position, self.position + n
        self.read_bytes += n
        zeros_end = self.size - len(self.tail)
        out = self.head[start:start + n]
        out += bytes(max(0, min(self.position, zeros_end) - max(start, len(self.head))))
        return out + self.tail[max(0, start - zeros_end):max(0, self.position - zeros_end)]

    def readline(self, limit: int = -1) -> bytes:
        return self.read(limit if limit and limit > 0 else 65536)


def post(web: Web, path: str, size: int, json: bool = False, **kwargs):
    body = Body(size)
    headers = {"Accept": "application/json"} if json else {}
    response = web.client.post(path, input_stream=body, content_length=size,
                               content_type=MULTIPART, headers={**headers, **kwargs.pop("headers", {})},
                               **kwargs)
    return response, body


def post_paths(app, *, but: set[str]) -> list[str]:
    """A URL of every endpoint that takes POST (arguments filled with "x")."""
    return sorted(re.sub(r"<[^>]+>", "x", rule.rule) for rule in app.url_map.iter_rules()
                  if "POST" in (rule.methods or ()) and rule.endpoint not in but)


def test_every_post_endpoint_refuses_an_anonymous_body_unread(app, web):
    """Before issue 15, CSRFProtect (whose before_request ran first) parsed the
    body of a request the login check then refused: 255 MiB spooled to /tmp."""
    paths = post_paths(app, but={"auth.login"})
    assert "/images/upload" in paths and len(paths) > 15
    for path in paths:
        response, body = post(web, path, 300 * MiB)
        assert response.status_code == 302, path
        assert response.headers["Location"].startswith("/login"), path
        assert body.read_bytes == 0, f"{path} read {body.read_bytes} bytes of an anonymous body"
        response, body = post(web, path, 50 * MiB, json=True)
        assert (response.status_code, body.read_bytes) == (401, 0), path


def test_login_refuses_a_body_over_the_small_limit_unread(app, web):
    response, body = post(web, "/login", 2 * MiB)
    assert (response.status_code, body.read_bytes) == (413, 0)
    assert app.config["MAX_CONTENT_LENGTH"] <= MiB


def test_a_members_body_over_the_small_limit_is_refused_unread(app, demo):
    """Every endpoint but the image upload takes at most MAX_CONTENT_LENGTH
    (1 MiB), from members too; Content-Length says so before a byte is read."""
    for path in post_paths(app, but={"images.upload"}):
        response, body = post(demo, path, 2 * MiB, headers={"X-CSRFToken": demo.csrf})
        assert (response.status_code, body.read_bytes) == (413, 0), path
    body = Body(2 * MiB)  # a GET with a body too
    response = demo.client.get("/quotas", input_stream=body, content_length=body.size)
    assert (response.status_code, body.read_bytes) == (413, 0)


@pytest.mark.parametrize("token", ["", "forged", "query-of-another-session"])
def test_an_upload_without_a_valid_csrf_token_is_refused_unread(app, demo, cloud, token):
    """The upload's CSRF token comes in its URL (the form's action) or a header,
    never its body: a request without a valid one is refused before its body is read."""
    if token == "query-of-another-session":
        token = Web(app).login("demo", cloud.password("demo")).csrf
    path = f"/images/upload?csrf_token={token}" if token else "/images/upload"
    response, body = post(demo, path, 300 * MiB)
    assert (response.status_code, body.read_bytes) == (400, 0)
    assert "The form was refused" in response.get_data(as_text=True)
    # Not in the body either: a token there is not looked for (that would mean reading it).
    response = demo.post("/images/upload", data={"name": "x", "disk_format": "raw"},
                         content_type="multipart/form-data")
    assert response.status_code == 400
    assert "The form was refused" in response.get_data(as_text=True)


def test_an_upload_over_its_limit_is_refused_unread(app, demo):
    limit = app.config["UPLOAD_MAX_BYTES"]
    assert limit > 2 * MiB
    response, body = post(demo, f"/images/upload?csrf_token={demo.csrf}", limit + 1)
    assert (response.status_code, body.read_bytes) == (413, 0)


def test_an_uploads_text_fields_are_small(demo):
    """The upload may carry a large file, not a large text field (those are held in memory)."""
    data = {"name": "x" * (128 * 1024), "disk_format": "raw", "disk": (io.BytesIO(bytes(512)), "d.raw")}
    response = demo.client.post(f"/images/upload?csrf_token={demo.csrf}", data=data,
                                content_type="multipart/form-data")
    assert response.status_code == 413


def test_the_proxy_asks_before_it_reads_an_upload(app, web, demo):
    """GET /images/upload/allowed is what the proxy asks (nginx auth_request, with
    the upload's headers, not its body) before it takes an upload's body: 204 for a
    member with the upload's CSRF token, 401 for no login, 403 for a bad token."""
    assert web.get("/images/upload/allowed").status_code == 401
    assert web.get("/images/upload/allowed", headers={"Accept": "text/html"}).status_code == 401
    assert demo.get("/images/upload/allowed").status_code == 403
    original = {"X-Original-URI": f"/images/upload?csrf_token={demo.csrf}"}
    assert demo.get("/images/upload/allowed", headers=original).status_code == 204
    assert demo.get("/images/upload/allowed", headers={"X-CSRFToken": demo.csrf}).status_code == 204
    assert demo.get("/images/upload/allowed",
                    headers={"X-Original-URI": "/images/upload?csrf_token=forged"}).status_code == 403
