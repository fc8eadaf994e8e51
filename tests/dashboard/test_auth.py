"""auth blueprint: login/logout with the API's users and tokens, server-side sessions, CSRF."""

import base64
import json

import grpc
import pytest
from cloudapi.v1 import compute_pb2 as pb
from cloudapi.v1 import identity_pb2 as ipb
from cloudclient.client import CloudClient

from dashboard.sessions import SessionStore
from tests.dashboard.conftest import Web, csrf_in


def cookie_payload(web: Web) -> dict:
    cookie = web.client.get_cookie("smallcloud_session")
    assert cookie is not None
    body = cookie.value.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))


def session_count(app) -> int:
    return SessionStore(app.config["SESSION_DIR"]).count()


def test_pages_need_a_login(web):
    for path in ["/instances", "/launch", "/quotas", "/keypairs", "/images", "/admin/hosts",
                 "/instances/whatever"]:
        response = web.get(path)
        assert response.status_code == 302
        assert response.headers["Location"].startswith("/login?next=")
    assert web.get("/instances.json").status_code == 401
    assert web.get("/instances.json").json["code"] == "UNAUTHENTICATED"


def test_no_session_before_login_and_the_token_stays_on_the_server(app, web, cloud):
    before = session_count(app)
    page = web.get("/login")
    assert page.status_code == 200
    assert session_count(app) == before  # nothing server-side for an anonymous visitor
    assert "sid" not in cookie_payload(web)  # the cookie holds only the login form's CSRF token
    web.login("demo", cloud.password("demo"))
    assert session_count(app) == before + 1
    payload = cookie_payload(web)
    assert set(payload) == {"sid"}
    raw_cookie = web.client.get_cookie("smallcloud_session").value
    page = web.get("/quotas").get_data(as_text=True)
    assert "demo" in page
    # The API token is nowhere in what the browser holds.
    stored = SessionStore(app.config["SESSION_DIR"]).load(payload["sid"])
    assert stored is not None
    token = stored[0]["token"]
    assert token and token not in raw_cookie and token not in page


def test_a_session_id_that_was_not_issued_is_not_accepted(app, web, cloud):
    """A forged or fixed cookie cannot name a session: ids are signed, and a login makes a new one."""
    web.get("/login")
    web.client.set_cookie("smallcloud_session", "eyJzaWQiOiJ4In0.forged.sig")
    assert web.get("/instances").status_code == 302
    web.login("demo", cloud.password("demo"))
    first = cookie_payload(web)["sid"]
    again = Web(app).login("demo", cloud.password("demo"))
    assert cookie_payload(again)["sid"] != first


def test_wrong_password_is_refused_with_a_message(web):
    token = csrf_in(web.get("/login").get_data(as_text=True))
    response = web.client.post("/login", data={"username": "demo", "password": "wrong",
                                               "csrf_token": token})
    assert response.status_code == 401
    assert "Log in" in response.get_data(as_text=True)
    assert web.get("/instances").status_code == 302


def test_login_without_csrf_token_is_refused(web, cloud):
    web.get("/login")
    response = web.client.post("/login", data={"username": "demo", "password": cloud.password("demo")})
    assert response.status_code == 400
    assert "CSRF" in response.get_data(as_text=True)
    assert "Traceback" not in response.get_data(as_text=True)


def test_posts_without_csrf_token_are_refused(demo):
    for path in ["/logout", "/launch", "/keypairs/create", "/instances/x/stop"]:
        response = demo.client.post(path, data={"name": "x"})
        assert response.status_code == 400, path
        assert "The form was refused" in response.get_data(as_text=True)
    assert demo.get("/quotas").status_code == 200  # still logged in


def test_login_goes_to_next_but_never_off_site(web, cloud):
    token = csrf_in(web.get("/login?next=/quotas").get_data(as_text=True))
    data = {"username": "demo", "password": cloud.password("demo"), "csrf_token": token}
    assert web.client.post("/login", data={**data, "next": "/quotas"}).headers["Location"] == "/quotas"
    other = Web(web.app)
    token = csrf_in(other.get("/login").get_data(as_text=True))
    response = other.client.post("/login", data={**data, "csrf_token": token, "next": "//evil.example/"})
    assert response.headers["Location"] == "/instances"


def test_logout_ends_the_session_and_revokes_the_token(app, demo):
    sid = cookie_payload(demo)["sid"]
    token = SessionStore(app.config["SESSION_DIR"]).load(sid)[0]["token"]
    response = demo.post("/logout")
    assert response.status_code == 302 and response.headers["Location"] == "/login"
    assert SessionStore(app.config["SESSION_DIR"]).load(sid) is None
    assert demo.get("/instances").status_code == 302
    revoked = CloudClient(app.config["API_ENDPOINT"], token)
    with pytest.raises(grpc.RpcError) as caught:
        revoked.instances.ListInstances(pb.ListInstancesRequest(), timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_revoked_token_sends_the_user_to_login_with_a_message(app, admin, cloud):
    from tests.dashboard.conftest import make_tenant

    tenant = make_tenant(cloud, admin, "revoked")
    web = Web(app).login(tenant.username, tenant.password)
    admin.identity.RevokeUserTokens(ipb.RevokeUserTokensRequest(username=tenant.username))
    response = web.get("/instances")
    assert response.status_code == 302 and response.headers["Location"].startswith("/login")
    assert "session has expired" in web.get("/login").get_data(as_text=True)
    assert web.get("/instances.json").status_code == 401


def test_security_headers(demo):
    response = demo.get("/instances")
    assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Cache-Control"] == "no-store"
    cookie = demo.client.get_cookie("smallcloud_session")
    assert cookie.http_only and cookie.same_site == "Lax"


def test_the_first_request_of_a_process_keeps_its_token(dashboard_config, cloud):
    """The API client is made lazily by the first request of a (gunicorn worker)
    process; making it must not wipe that request's token."""
    from dashboard import api
    from dashboard.app import create_app

    api._clients.clear()
    web = Web(create_app(dashboard_config)).login("demo", cloud.password("demo"))
    api._clients.clear()
    assert web.get("/instances.json").status_code == 200


def test_an_unreachable_api_is_a_message(dashboard_config, tmp_path):
    from dashboard.app import create_app
    from localcloud.processes import free_port

    app = create_app({**dashboard_config, "API_ENDPOINT": f"127.0.0.1:{free_port()}",
                      "API_TIMEOUT_S": 2, "SESSION_DIR": str(tmp_path / "s")})
    web = Web(app)
    token = csrf_in(web.get("/login").get_data(as_text=True))
    response = web.client.post("/login", data={"username": "demo", "password": "x", "csrf_token": token})
    page = response.get_data(as_text=True)
    assert response.status_code == 401
    assert "The cloud API is unavailable right now" in page or "did not answer in time" in page
    assert "Traceback" not in page
