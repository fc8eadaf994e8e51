"""launch blueprint: the form, the pre-submit quota and placement check, and the
API's refusals shown on the form."""

import re
import uuid

import pytest
from cloudapi.v1 import compute_pb2 as pb

from tests.dashboard.conftest import Web, make_tenant


@pytest.fixture(scope="module")
def small_quota(cloud, admin):
    """A tenant with room for one tiny instance (1 vCPU, 256 MiB)."""
    return make_tenant(cloud, admin, "quota", quota={"instances": 2, "vcpus": 1, "memory_mb": 512,
                                                     "disk_gb": 10})


@pytest.fixture(scope="module")
def huge_flavor(admin):
    """A flavor no host here can take (demo's quota allows two of it)."""
    name = f"huge-{uuid.uuid4().hex[:6]}"
    admin.flavors.CreateFlavor(pb.CreateFlavorRequest(flavor=pb.Flavor(
        name=name, vcpus=9, memory_mb=512, disk_gb=1, public=True)))  # the host has 2 cores x 4
    yield name
    admin.flavors.DeleteFlavor(pb.DeleteFlavorRequest(name=name))


def test_form_shows_flavors_with_their_sizes_images_and_keypairs(demo):
    page = demo.get("/launch").get_data(as_text=True)
    assert "tiny: 1 vCPU, 256 MiB RAM, 1 GiB disk" in page
    assert "default image" in page and 'name="request_id"' in page and 'name="user_data"' in page
    assert 'name="key_name"' in page and 'name="count"' in page


def test_check_says_it_fits(demo):
    data = demo.get("/launch/check.json?flavor=tiny&count=1").json
    assert data["ok"] and data["placement"]["host"] and data["messages"] == []


def test_check_says_over_quota_before_submitting(app, small_quota):
    web = Web(app).login(small_quota.username, small_quota.password)
    assert web.get("/launch/check.json?flavor=tiny&count=1").json["ok"]
    data = web.get("/launch/check.json?flavor=tiny&count=2").json
    assert not data["ok"]
    assert any("vCPUs: 2 needed, 1 left of 1" in m for m in data["messages"]), data
    data = web.get("/launch/check.json?flavor=medium&count=1").json
    assert not data["ok"] and data["quota"] == ["vCPUs: 2 needed, 1 left of 1",
                                                "RAM: 1024 MiB needed, 512 MiB left of 512 MiB"]


def test_submit_over_quota_shows_the_apis_refusal(app, small_quota):
    web = Web(app).login(small_quota.username, small_quota.password)
    response = web.post("/launch", data={"name": "too-many", "flavor": "tiny", "count": "3",
                                         "request_id": str(uuid.uuid4())})
    assert response.status_code == 409
    page = response.get_data(as_text=True)
    assert 'data-testid="launch-error"' in page and "Refused:" in page and "quota" in page.lower()
    assert 'value="too-many"' in page  # the form keeps what was typed
    assert small_quota.api.instances.ListInstances(pb.ListInstancesRequest()).instances == []


def test_check_says_no_host_with_the_reason(demo, huge_flavor):
    data = demo.get(f"/launch/check.json?flavor={huge_flavor}&count=1").json
    assert not data["ok"] and data["quota"] == []
    assert data["messages"][0].startswith(f"No host can take a {huge_flavor} instance now:")
    assert "lacked" in data["messages"][0] or "VCPU" in data["messages"][0]


def test_no_host_refusal_is_shown(demo, api, huge_flavor):
    # Several at once are claimed up front: the API refuses the request itself.
    response = demo.post("/launch", data={"name": "nohost", "flavor": huge_flavor, "count": "2",
                                          "request_id": str(uuid.uuid4())})
    assert response.status_code == 409
    page = response.get_data(as_text=True)
    shown = re.findall(r'launch-error">([^<]*)', page)
    assert "no room for 2 of flavor" in page and "lacked VCPU" in page, shown
    # One alone is scheduled after it is recorded: it goes to ERROR, its fault shown on its page.
    response = demo.post("/launch", data={"name": f"nohost-{uuid.uuid4().hex[:4]}", "flavor": huge_flavor,
                                          "count": "1", "request_id": str(uuid.uuid4())})
    assert response.status_code == 302
    instance_id = response.headers["Location"].rsplit("/", 1)[1]
    try:
        assert api.wait_status(instance_id, {"ERROR", "ACTIVE"}).status == "ERROR"
        data = demo.get(f"/instances/{instance_id}.json").json
        assert "no host" in data["instance"]["fault"]
        assert "no host" in demo.get(f"/instances/{instance_id}").get_data(as_text=True)
    finally:
        api.instances.DeleteInstance(pb.DeleteInstanceRequest(id_or_name=instance_id))
        api.wait_gone(instance_id)


def test_a_script_tag_renders_as_text(demo):
    response = demo.post("/launch", data={"name": "<script>alert(1)</script>", "flavor": "tiny",
                                          "count": "1", "request_id": str(uuid.uuid4())})
    page = response.get_data(as_text=True)
    assert response.status_code == 400  # the form's own check
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_count_launches_several(demo, api):
    name = f"many-{uuid.uuid4().hex[:4]}"
    response = demo.post("/launch", data={"name": name, "flavor": "tiny", "count": "2",
                                          "request_id": str(uuid.uuid4())})
    assert response.status_code == 302 and response.headers["Location"] == "/instances"
    made = [i for i in api.instances.ListInstances(pb.ListInstancesRequest()).instances
            if i.name.startswith(name)]
    try:
        assert sorted(i.name for i in made) == [f"{name}-1", f"{name}-2"]
        assert "2 instances requested" in demo.get("/instances").get_data(as_text=True)
    finally:
        for i in made:
            api.instances.DeleteInstance(pb.DeleteInstanceRequest(id_or_name=i.id))
        for i in made:
            api.wait_gone(i.id)
