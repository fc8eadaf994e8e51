"""instances blueprint: list (and its JSON for the live status), detail, console,
stats, operations; another tenant's instance is a 404."""

import re
import time
import uuid

from cloudapi.v1 import compute_pb2 as pb

# Bounds, measured here (a tiny real guest, a loaded machine): ACTIVE 1.9 s after the
# launch, its CLOUD-RESOURCES line 3.2 s after ACTIVE, SHUTOFF 15 s after the stop
# (a clean ACPI shutdown of the guest).
BOOT_S = 20
CONSOLE_S = 20
STOP_S = 45


def wait_json(web, url: str, check, timeout_s: float):
    """The JSON at url once check(it) holds; fails after timeout_s with what it last was."""
    deadline = time.monotonic() + timeout_s
    while True:
        data = web.get(url).json
        if check(data):
            return data
        assert time.monotonic() < deadline, f"{url} after {timeout_s} s: {str(data)[:1000]}"
        time.sleep(0.3)


def shown_operations(html: str) -> set[str]:
    """The operations an instance page shows (its others are there, hidden)."""
    return {name for name, hidden in re.findall(r'data-action="([a-z]+)"( hidden)?', html)
            if not hidden}


def test_list_page_and_json(demo, api):
    name = f"dash-list-{uuid.uuid4().hex[:6]}"
    made = api.instances.CreateInstance(pb.CreateInstanceRequest(name=name, flavor="tiny",
                                                                 request_id=str(uuid.uuid4())))
    try:
        page = demo.get("/instances").get_data(as_text=True)
        assert name in page and f'href="/instances/{made.id}"' in page
        rows = {i["id"]: i for i in demo.get("/instances.json").json["instances"]}
        row = rows[made.id]
        assert row["name"] == name and row["flavor"] == "tiny" and row["status"] in ("BUILD", "ACTIVE")
        assert row["url"] == f"/instances/{made.id}" and row["age"].endswith("s")
        assert row["image"] and row["sig"]
    finally:
        api.instances.DeleteInstance(pb.DeleteInstanceRequest(id_or_name=made.id))
        api.wait_gone(made.id)


def test_lifecycle_through_the_dashboard(demo, api):
    name = f"dash-life-{uuid.uuid4().hex[:6]}"
    response = demo.post("/launch", data={"name": name, "flavor": "tiny", "count": "1",
                                          "request_id": str(uuid.uuid4())})
    assert response.status_code == 302, response.get_data(as_text=True)
    url = response.headers["Location"]
    instance_id = url.rsplit("/", 1)[1]
    try:
        data = wait_json(demo, url + ".json", lambda d: d["instance"]["status"] in ("ACTIVE", "ERROR"),
                         BOOT_S)
        assert data["instance"]["status"] == "ACTIVE", data
        assert data["actions"][0]["action"] == "create"
        page = demo.get(url).get_data(as_text=True)
        assert name in page and "Console" in page and "Actions history" in page
        # The buttons are the API's allowed_actions, not rules of the dashboard's own.
        assert shown_operations(page) == set(data["instance"]["allowed_actions"]) == {
            "stop", "reboot", "scale", "resize", "delete"}
        # CLOUD-RESOURCES comes after the guest's acpid started: from then on a stop is clean
        # (an ACPI power button pressed earlier is lost, and the stop waits stop_timeout_s).
        console = wait_json(demo, url + "/console.json", lambda d: "CLOUD-RESOURCES" in d["output"],
                            CONSOLE_S)
        assert f"CLOUD-BOOT-OK instance_id={instance_id}" in console["output"]
        stats = demo.get(url + "/stats.json").json
        assert stats["stats"]["vcpus"] == 1 and stats["stats"]["power_state"] == "running"

        response = demo.post(url + "/stop", headers={"Referer": "http://localhost" + url})
        assert response.status_code == 302 and response.headers["Location"] == url
        assert "stop requested" in demo.get(url).get_data(as_text=True)
        data = wait_json(demo, url + ".json", lambda d: d["instance"]["status"] == "SHUTOFF", STOP_S)
        assert data["instance"]["status"] == "SHUTOFF" and data["instance"]["power_state"] == "shutoff"
        assert [a["action"] for a in data["actions"]][:2] == ["stop", "create"]
        assert shown_operations(demo.get(url).get_data(as_text=True)) == set(
            data["instance"]["allowed_actions"]) == {"start", "scale", "resize", "delete"}

        response = demo.post(url + "/delete")
        assert response.status_code == 302 and response.headers["Location"] == "/instances"
        assert api.wait_gone(instance_id)
        assert demo.get(url).status_code == 404
        assert demo.get(url + ".json").status_code == 404
    finally:
        try:
            api.instances.DeleteInstance(pb.DeleteInstanceRequest(id_or_name=instance_id))
        except Exception:
            pass


def test_another_tenants_instance_is_not_found(demo, other_tenant):
    name = f"dash-theirs-{uuid.uuid4().hex[:6]}"
    theirs = other_tenant.api.instances.CreateInstance(pb.CreateInstanceRequest(
        name=name, flavor="tiny", request_id=str(uuid.uuid4())))
    try:
        assert name not in demo.get("/instances").get_data(as_text=True)
        assert theirs.id not in [i["id"] for i in demo.get("/instances.json").json["instances"]]
        for path in [f"/instances/{theirs.id}", f"/instances/{name}", f"/instances/{theirs.id}.json",
                     f"/instances/{theirs.id}/console.json", f"/instances/{theirs.id}/stats.json"]:
            assert demo.get(path).status_code == 404, path
        for op in ["stop", "start", "reboot", "delete", "scale", "resize"]:
            assert demo.post(f"/instances/{theirs.id}/{op}").status_code == 404, op
        assert other_tenant.api.instances.GetInstance(
            pb.GetInstanceRequest(id_or_name=theirs.id)).status != "DELETING"
    finally:
        other_tenant.api.instances.DeleteInstance(pb.DeleteInstanceRequest(id_or_name=theirs.id))
        other_tenant.api.wait_gone(theirs.id)


def test_a_refused_operation_is_a_message_not_a_stack_trace(demo, api):
    name = f"dash-refuse-{uuid.uuid4().hex[:6]}"
    made = api.instances.CreateInstance(pb.CreateInstanceRequest(name=name, flavor="tiny",
                                                                 request_id=str(uuid.uuid4())))
    try:
        api.wait_status(made.id, {"ACTIVE", "ERROR"})
        # Starting a running instance is the wrong state: FAILED_PRECONDITION from the API.
        response = demo.post(f"/instances/{made.id}/start")
        assert response.status_code == 302
        page = demo.get("/instances").get_data(as_text=True)
        assert re.search(r'class="flash error"[^>]*>[^<]+', page)
        assert "Traceback" not in page
        # Scaling past the instance's maximum: refused with the API's reason.
        response = demo.post(f"/instances/{made.id}/scale", data={"vcpus": "64"})
        assert response.status_code == 302
        page = demo.get(f"/instances/{made.id}").get_data(as_text=True)
        assert 'class="flash error"' in page and "Traceback" not in page
    finally:
        api.instances.DeleteInstance(pb.DeleteInstanceRequest(id_or_name=made.id))
        api.wait_gone(made.id)


def test_unknown_operation_and_instance_are_404(demo):
    assert demo.post("/instances/nope/stop").status_code == 404
    assert demo.get("/instances/nope").status_code == 404
    assert "No instance" in demo.get("/instances/nope").get_data(as_text=True)
