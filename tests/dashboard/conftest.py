"""Dashboard fixtures: the Flask app on the session cloud (for test-client tests),
users of two tenants, and a client that logs in and sends CSRF tokens like a browser."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import pytest
from cloudapi.v1 import identity_pb2 as ipb

from tests.conftest import ApiClient

CSRF_META = re.compile(r'<meta name="csrf-token" content="([^"]+)"')
CSRF_INPUT = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"|'
                        r'type="hidden" name="csrf_token" value="([^"]+)"')


def csrf_in(html: str) -> str:
    found = CSRF_META.search(html) or CSRF_INPUT.search(html)
    assert found, "no CSRF token on the page"
    return next(g for g in found.groups() if g)


class Web:
    """A Flask test client that logs in through the form and posts with the page's CSRF token."""

    def __init__(self, app):
        self.app = app
        self.client = app.test_client()
        self.csrf = ""

    def login(self, username: str, password: str, project: str = "") -> Web:
        token = csrf_in(self.client.get("/login").get_data(as_text=True))
        response = self.client.post("/login", data={"username": username, "password": password,
                                                    "project": project, "csrf_token": token})
        assert response.status_code == 302, response.get_data(as_text=True)
        self.csrf = csrf_in(self.client.get("/quotas").get_data(as_text=True))
        return self

    def get(self, url: str, **kwargs):
        return self.client.get(url, **kwargs)

    def post(self, url: str, data: dict | None = None, **kwargs):
        return self.client.post(url, data={"csrf_token": self.csrf, **(data or {})}, **kwargs)


@pytest.fixture(scope="session")
def dashboard_config(cloud, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("dashboard")
    return {"API_ENDPOINT": cloud.endpoint, "SECRET_KEY": uuid.uuid4().hex * 2,
            "SESSION_DIR": str(root / "sessions"), "TESTING": True}


@pytest.fixture(scope="session")
def app(dashboard_config):
    from dashboard.app import create_app

    return create_app(dashboard_config)


@pytest.fixture
def web(app) -> Web:
    """Not logged in."""
    return Web(app)


@pytest.fixture
def demo(app, cloud) -> Web:
    return Web(app).login("demo", cloud.password("demo"))


@pytest.fixture
def admin_web(app, cloud) -> Web:
    return Web(app).login("admin", cloud.password("admin"))


class Tenant:
    def __init__(self, project: str, username: str, password: str, api: ApiClient):
        self.project, self.username, self.password, self.api = project, username, password, api


def make_tenant(cloud, admin, prefix: str = "dash", quota: dict | None = None) -> Tenant:
    project = f"{prefix}-{uuid.uuid4().hex[:6]}"
    password = f"pw-{uuid.uuid4().hex}"
    admin.identity.CreateProject(ipb.CreateProjectRequest(name=project, description="dashboard tests"))
    admin.identity.CreateUser(ipb.CreateUserRequest(name=project, password=password, project=project,
                                                    role="member"))
    if quota:
        admin.quotas.SetQuota(ipb.SetQuotaRequest(project=project, **quota))
    client = ApiClient(cloud.endpoint)
    client.login(project, password, project)
    return Tenant(project, project, password, client)


@pytest.fixture(scope="session")
def other_tenant(cloud, admin) -> Iterator[Tenant]:
    yield make_tenant(cloud, admin, "other")
