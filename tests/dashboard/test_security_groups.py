"""security_groups blueprint, an instance page's groups and the launch form's, on a
cloud of their own with tenant networks on (the session cloud has them off; groups
go with tenant networks). The fake driver: these pages are about the API's answers,
not the hosts' firewalls."""

from __future__ import annotations

import html
import uuid
from collections.abc import Iterator

import pytest
from cloudapi.v1 import compute_pb2 as cpb
from cloudapi.v1 import security_group_pb2 as pb

from tests.conftest import ApiClient, login, start_cloud, stop_cloud
from tests.dashboard.conftest import Web, make_tenant

GROUPS_PAGE = {"Referer": "http://localhost/security-groups"}  # where a browser posts the forms from


@pytest.fixture(scope="module")
def sg_cloud() -> Iterator:
    cloud, _store = start_cloud("dash-secgroups", control_settings={"tenant_networks": True},
                                agent_settings={"driver": "fake"})
    yield cloud
    stop_cloud(cloud, "dash-secgroups")


@pytest.fixture(scope="module")
def sg_app(sg_cloud, tmp_path_factory):
    from dashboard.app import create_app

    root = tmp_path_factory.mktemp("dash-secgroups")
    return create_app({"API_ENDPOINT": sg_cloud.endpoint, "SECRET_KEY": uuid.uuid4().hex * 2,
                       "SESSION_DIR": str(root / "sessions"), "TESTING": True})


@pytest.fixture
def web(sg_app, sg_cloud) -> Web:
    """The demo project's member, logged in."""
    return Web(sg_app).login("demo", sg_cloud.password("demo"))


@pytest.fixture(scope="module")
def demo_api(sg_cloud) -> ApiClient:
    return login(sg_cloud, "demo")


def groups(api: ApiClient) -> dict[str, pb.SecurityGroup]:
    found = api.security_groups.ListSecurityGroups(pb.ListSecurityGroupsRequest()).security_groups
    return {g.name: g for g in found}


def make_group(api: ApiClient, name: str) -> pb.SecurityGroup:
    return api.security_groups.CreateSecurityGroup(pb.CreateSecurityGroupRequest(
        name=name, request_id=str(uuid.uuid4())))


def section(page: str, group: str) -> str:
    """The page's card of one group."""
    start = page.index(f'data-group="{group}"')
    return page[start:page.index("</section>", start)]


def flashes(page: str) -> str:
    return html.unescape(page[page.index('class="flashes"'):page.index('id="live-error"')])


def boot(api: ApiClient, name: str, security_groups: list[str] | None = None) -> cpb.Instance:
    made = api.instances.CreateInstance(cpb.CreateInstanceRequest(
        name=name, flavor="tiny", security_groups=security_groups or [], request_id=str(uuid.uuid4())))
    return api.wait_status(made.id, {"ACTIVE"})  # the fake driver: under 1 s (conftest's ApiClient)


def remove(api: ApiClient, instance: cpb.Instance) -> None:
    api.instances.DeleteInstance(cpb.DeleteInstanceRequest(id_or_name=instance.id))
    api.wait_gone(instance.id)


def test_list_shows_default_and_its_two_rules(sg_cloud, sg_app):
    tenant = make_tenant(sg_cloud, login(sg_cloud, "admin"), "sgdash")
    web = Web(sg_app).login(tenant.username, tenant.password, tenant.project)
    page = web.get("/security-groups").get_data(as_text=True)
    assert 'href="/security-groups" aria-current="page"' in page
    assert "No security groups yet" in page and "Add a rule" not in page

    # The project's first group create makes "default" too.
    response = web.post("/security-groups/create", data={"create-name": "web",
                                                         "create-description": "the web tier"})
    assert response.status_code == 302 and response.headers["Location"] == "/security-groups"
    page = web.get("/security-groups").get_data(as_text=True)
    assert "Security group web created." in page
    default = section(page, "default")
    assert default.count('data-rule="') == 2
    rows = {r.direction: r for r in groups(tenant.api)["default"].rules}
    assert rows["egress"].remote_cidr == "" and rows["ingress"].remote_group_name == "default"
    assert ">egress</td>" in default and ">anyone</td>" in default
    assert ">ingress</td>" in default and ">group default</td>" in default
    web_card = section(page, "web")
    assert "the web tier" in web_card and web_card.count('data-rule="') == 1  # anything out
    # Both in the rule form's choices (its group and its remote group).
    assert page.count(f'value="{groups(tenant.api)["web"].id}"') == 2


def test_create_add_rules_delete_rule_delete_group(web, demo_api):
    name = f"sg-{uuid.uuid4().hex[:6]}"
    assert web.post("/security-groups/create", data={"create-name": name}).status_code == 302
    made = groups(demo_api)[name]

    response = web.post("/security-groups/rules/create", data={
        "group": made.id, "direction": "ingress", "protocol": "tcp", "port": "80"})
    assert response.status_code == 302 and response.headers["Location"] == "/security-groups"
    assert "Rule added: ingress tcp port 80 from anyone." in web.get("/security-groups").get_data(
        as_text=True)
    web.post("/security-groups/rules/create", data={
        "group": made.id, "direction": "ingress", "protocol": "udp", "port": "8000-8080",
        "remote_cidr": "100.64.0.0/24"})
    web.post("/security-groups/rules/create", data={
        "group": made.id, "direction": "ingress", "protocol": "any", "remote_group": made.id})
    rules = [(r.direction, r.protocol, r.port_min, r.port_max, r.remote_cidr, r.remote_group_name)
             for r in groups(demo_api)[name].rules]
    assert rules[1:] == [("ingress", "tcp", 80, 80, "", ""),
                         ("ingress", "udp", 8000, 8080, "100.64.0.0/24", ""),
                         ("ingress", "any", 0, 0, "", name)]
    card = section(web.get("/security-groups").get_data(as_text=True), name)
    for shown in (">80</td>", ">8000-8080</td>", ">100.64.0.0/24</td>", f">group {name}</td>",
                  "every port"):
        assert shown in card

    udp = groups(demo_api)[name].rules[2]
    assert web.post(f"/security-groups/rules/{udp.id}/delete").status_code == 302
    assert udp.id not in [r.id for r in groups(demo_api)[name].rules]
    page = web.get("/security-groups").get_data(as_text=True)
    assert "Rule deleted." in page and f'data-rule="{udp.id}"' not in page

    assert web.post(f"/security-groups/{made.id}/delete").status_code == 302
    page = web.get("/security-groups").get_data(as_text=True)
    assert f"Security group {name} deleted." in page and f'data-group="{name}"' not in page
    assert name not in groups(demo_api)


def test_bad_input_is_a_message_and_changes_nothing(web, demo_api):
    name = f"bad-{uuid.uuid4().hex[:6]}"
    made = make_group(demo_api, name)
    try:
        # Refused by the form (never sent): a name's characters, a port that is not a number.
        response = web.post("/security-groups/create", data={"create-name": "<b>x</b>"})
        assert response.status_code == 400 and "<b>x</b>" not in response.get_data(as_text=True)
        response = web.post("/security-groups/rules/create", data={
            "group": made.id, "direction": "ingress", "protocol": "tcp", "port": "http"},
            headers=GROUPS_PAGE)
        assert response.status_code == 302
        assert "a port (22) or a range (8000-8080)" in flashes(web.get("/security-groups").get_data(
            as_text=True))
        # Refused by the API: its reason, shown on the page the form was on.
        for data, reason in (({"protocol": "tcp", "port": "70000"}, "ports are 1 to 65535"),
                             ({"protocol": "icmp", "port": "22"}, "Ports are for tcp and udp only"),
                             ({"protocol": "tcp", "remote_cidr": "10.0.0.1/24"}, "10.0.0.1/24"),
                             ({"protocol": "tcp", "remote_cidr": "10.0.0.0/24",
                               "remote_group": made.id}, "Give remote_cidr or remote_group, not both")):
            response = web.post("/security-groups/rules/create",
                                data={"group": made.id, "direction": "ingress", **data},
                                headers=GROUPS_PAGE)
            assert response.status_code == 302 and response.headers["Location"] == "/security-groups"
            page = web.get("/security-groups").get_data(as_text=True)
            assert 'class="flash error"' in page and reason in flashes(page), (data, flashes(page))
        response = web.post("/security-groups/create", data={"create-name": name}, headers=GROUPS_PAGE)
        assert response.status_code == 302
        assert "already exists" in flashes(web.get("/security-groups").get_data(as_text=True))
        # Without the CSRF token: refused before the API is asked.
        response = web.client.post("/security-groups/rules/create", data={
            "group": made.id, "direction": "ingress", "protocol": "tcp", "port": "22"})
        assert response.status_code == 400
        assert len(groups(demo_api)[name].rules) == 1  # its egress rule only
    finally:
        demo_api.security_groups.DeleteSecurityGroup(pb.DeleteSecurityGroupRequest(id_or_name=made.id))


def test_delete_of_default_is_refused_with_the_apis_message(web, demo_api):
    make_group(demo_api, f"first-{uuid.uuid4().hex[:6]}")  # (makes default if it is not there yet)
    default = groups(demo_api)["default"]
    response = web.post(f"/security-groups/{default.id}/delete", headers=GROUPS_PAGE)
    assert response.status_code == 302 and response.headers["Location"] == "/security-groups"
    page = web.get("/security-groups").get_data(as_text=True)
    assert 'class="flash error"' in page
    assert "The default security group cannot be deleted" in flashes(page)
    assert 'data-group="default"' in page and "default" in groups(demo_api)


def test_set_an_instances_groups_from_its_page(web, demo_api):
    name, vm = f"app-{uuid.uuid4().hex[:6]}", f"sgvm-{uuid.uuid4().hex[:6]}"
    made = make_group(demo_api, name)
    instance = boot(demo_api, vm)
    try:
        page = web.get(f"/instances/{instance.id}").get_data(as_text=True)
        shown = page[page.index('id="security-groups"'):page.index("</section>", page.index(
            'id="security-groups"'))]
        assert '<span class="tag">default</span>' in shown
        assert '<option selected value="default">default</option>' in shown
        assert f'<option value="{name}">{name}</option>' in shown
        assert web.get(f"/instances/{instance.id}.json").json["instance"]["security_groups"] == [
            {"id": groups(demo_api)["default"].id, "name": "default"}]

        here = {"Referer": f"http://localhost/instances/{instance.id}"}
        response = web.post(f"/instances/{instance.id}/security-groups",
                            data={"security_groups": [name, "default"]}, headers=here)
        assert response.status_code == 302 and response.headers["Location"] == f"/instances/{instance.id}"
        after = demo_api.instances.GetInstance(cpb.GetInstanceRequest(id_or_name=instance.id))
        assert sorted(g.name for g in after.security_groups) == sorted([name, "default"])
        page = web.get(f"/instances/{instance.id}").get_data(as_text=True)
        assert f"{vm}: security groups set to" in page and f'<span class="tag">{name}</span>' in page

        # None chosen: the API's refusal (an instance is always in a group), nothing changed.
        web.post(f"/instances/{instance.id}/security-groups", data={}, headers=here)
        page = web.get(f"/instances/{instance.id}").get_data(as_text=True)
        assert "at least one security group" in flashes(page)
        after = demo_api.instances.GetInstance(cpb.GetInstanceRequest(id_or_name=instance.id))
        assert len(after.security_groups) == 2

        # A group an instance is in cannot be deleted: the API's message names it.
        web.post(f"/security-groups/{made.id}/delete", headers=GROUPS_PAGE)
        page = web.get("/security-groups").get_data(as_text=True)
        assert "in use by instances" in flashes(page) and vm in flashes(page)
        assert name in groups(demo_api)
    finally:
        remove(demo_api, instance)
        demo_api.security_groups.DeleteSecurityGroup(pb.DeleteSecurityGroupRequest(id_or_name=made.id))


def test_launch_with_a_group(web, demo_api):
    name, vm = f"lsg-{uuid.uuid4().hex[:6]}", f"lsgvm-{uuid.uuid4().hex[:6]}"
    made = make_group(demo_api, name)
    try:
        page = web.get("/launch").get_data(as_text=True)
        assert 'name="security_groups"' in page and f'<option value="{name}">{name}</option>' in page
        # Several at once join the groups chosen too.
        response = web.post("/launch", data={"name": vm, "flavor": "tiny", "count": "2",
                                             "security_groups": [name], "request_id": str(uuid.uuid4())})
        assert response.status_code == 302, response.get_data(as_text=True)
        for n in (1, 2):
            instance = demo_api.instances.GetInstance(cpb.GetInstanceRequest(id_or_name=f"{vm}-{n}"))
            assert [g.name for g in instance.security_groups] == [name]
            remove(demo_api, instance)
        response = web.post("/launch", data={"name": vm, "flavor": "tiny", "count": "1",
                                             "security_groups": [name], "request_id": str(uuid.uuid4())})
        assert response.status_code == 302, response.get_data(as_text=True)
        instance = demo_api.instances.GetInstance(cpb.GetInstanceRequest(id_or_name=vm))
        assert [g.name for g in instance.security_groups] == [name]
        remove(demo_api, instance)
        # None chosen: the project's default group.
        response = web.post("/launch", data={"name": vm, "flavor": "tiny", "count": "1",
                                             "request_id": str(uuid.uuid4())})
        assert response.status_code == 302, response.get_data(as_text=True)
        instance = demo_api.instances.GetInstance(cpb.GetInstanceRequest(id_or_name=vm))
        assert [g.name for g in instance.security_groups] == ["default"]
        remove(demo_api, instance)
    finally:
        demo_api.security_groups.DeleteSecurityGroup(pb.DeleteSecurityGroupRequest(id_or_name=made.id))


def test_another_tenants_groups_are_not_found(sg_cloud, sg_app, demo_api):
    other = make_tenant(sg_cloud, login(sg_cloud, "admin"), "sgother")
    other_web = Web(sg_app).login(other.username, other.password, other.project)
    name = f"priv-{uuid.uuid4().hex[:6]}"
    made = make_group(demo_api, name)
    try:
        [rule] = made.rules
        assert name not in other_web.get("/security-groups").get_data(as_text=True)
        assert other_web.post(f"/security-groups/{made.id}/delete").status_code == 404
        assert other_web.post(f"/security-groups/rules/{rule.id}/delete").status_code == 404
        assert name in groups(demo_api) and len(groups(demo_api)[name].rules) == 1
    finally:
        demo_api.security_groups.DeleteSecurityGroup(pb.DeleteSecurityGroupRequest(id_or_name=made.id))
