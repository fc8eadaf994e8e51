"""networks and floating_ips blueprints, and an instance page's NICs, on a cloud of
their own with tenant networks on (the session cloud has them off). The fake
driver: these pages are about the API's answers, not guests' traffic."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from cloudapi.v1 import compute_pb2 as cpb
from cloudapi.v1 import network_pb2 as pb

from tests.conftest import ApiClient, login, start_cloud, stop_cloud
from tests.dashboard.conftest import Web, make_tenant

NETWORKS_PAGE = {"Referer": "http://localhost/networks"}  # where a browser posts the forms from


@pytest.fixture(scope="module")
def net_cloud() -> Iterator:
    cloud, _store = start_cloud("dash-networks", control_settings={"tenant_networks": True},
                                agent_settings={"driver": "fake"})
    yield cloud
    stop_cloud(cloud, "dash-networks")


@pytest.fixture(scope="module")
def net_app(net_cloud, tmp_path_factory):
    from dashboard.app import create_app

    root = tmp_path_factory.mktemp("dash-networks")
    return create_app({"API_ENDPOINT": net_cloud.endpoint, "SECRET_KEY": uuid.uuid4().hex * 2,
                       "SESSION_DIR": str(root / "sessions"), "TESTING": True})


@pytest.fixture
def web(net_app, net_cloud) -> Web:
    """The demo project's member, logged in."""
    return Web(net_app).login("demo", net_cloud.password("demo"))


@pytest.fixture(scope="module")
def demo_api(net_cloud) -> ApiClient:
    return login(net_cloud, "demo")


def network_names(api: ApiClient) -> list[str]:
    return [n.name for n in api.networks.ListNetworks(pb.ListNetworksRequest()).networks]


def floating_ips(api: ApiClient) -> dict[str, pb.FloatingIp]:
    return {f.address: f for f in api.networks.ListFloatingIps(pb.ListFloatingIpsRequest()).floating_ips}


def boot(api: ApiClient, name: str, network: str) -> cpb.Instance:
    made = api.instances.CreateInstance(cpb.CreateInstanceRequest(
        name=name, flavor="tiny", networks=[network], request_id=str(uuid.uuid4())))
    return api.wait_status(made.id, {"ACTIVE"})  # the fake driver: under 1 s (conftest's ApiClient)


def remove(api: ApiClient, instance: cpb.Instance) -> None:
    api.instances.DeleteInstance(cpb.DeleteInstanceRequest(id_or_name=instance.id))
    api.wait_gone(instance.id)


def test_create_list_delete(web, demo_api):
    name = f"dnet-{uuid.uuid4().hex[:6]}"
    response = web.post("/networks/create", data={"create-name": name, "create-cidr": "10.40.0.0/24"})
    assert response.status_code == 302 and response.headers["Location"] == "/networks"
    page = web.get("/networks").get_data(as_text=True)
    assert f"Network {name} created (10.40.0.0/24)." in page
    assert f'data-network="{name}"' in page and "10.40.0.1" in page  # its gateway
    assert 'href="/networks" aria-current="page"' in page

    made = demo_api.networks.GetNetwork(pb.GetNetworkRequest(id_or_name=name))
    assert web.post(f"/networks/{made.id}/delete").status_code == 302
    page = web.get("/networks").get_data(as_text=True)
    assert f"Network {made.id} deleted." in page and f'data-network="{name}"' not in page
    assert name not in network_names(demo_api)


def test_bad_input_is_a_message_and_creates_nothing(web, demo_api):
    before = network_names(demo_api)
    # Refused by the form (never sent): the name's characters.
    response = web.post("/networks/create", data={"create-name": "<b>x</b>", "create-cidr": ""})
    assert response.status_code == 400 and "<b>x</b>" not in response.get_data(as_text=True)
    # Refused by the API: its reason, shown on the page the form was on.
    response = web.post("/networks/create", data={"create-name": "badcidr", "create-cidr": "10.0.0.0/33"},
                        headers=NETWORKS_PAGE)
    assert response.status_code == 302 and response.headers["Location"] == "/networks"
    page = web.get("/networks").get_data(as_text=True)
    assert 'class="flash error"' in page and "10.0.0.0/33" in page and "Traceback" not in page
    # Without the CSRF token: refused before the API is asked.
    response = web.client.post("/networks/create", data={"create-name": "nocsrf"})
    assert response.status_code == 400
    assert network_names(demo_api) == before


def test_delete_of_a_network_in_use_shows_why(web, demo_api):
    net, vm = f"inuse-{uuid.uuid4().hex[:6]}", f"dvm-{uuid.uuid4().hex[:6]}"
    made = demo_api.networks.CreateNetwork(pb.CreateNetworkRequest(name=net, cidr="10.41.0.0/24"))
    instance = boot(demo_api, vm, net)
    try:
        response = web.post(f"/networks/{made.id}/delete", headers=NETWORKS_PAGE)
        assert response.status_code == 302 and response.headers["Location"] == "/networks"
        page = web.get("/networks").get_data(as_text=True)
        assert 'class="flash error"' in page and vm in page  # the API's message names it
        assert net in network_names(demo_api)
    finally:
        remove(demo_api, instance)
        demo_api.networks.DeleteNetwork(pb.DeleteNetworkRequest(id_or_name=made.id))


def test_floating_ip_allocate_attach_detach_release(web, demo_api):
    net, vm = f"fnet-{uuid.uuid4().hex[:6]}", f"fvm-{uuid.uuid4().hex[:6]}"
    demo_api.networks.CreateNetwork(pb.CreateNetworkRequest(name=net, cidr="10.42.0.0/24"))
    instance = boot(demo_api, vm, net)
    [nic] = instance.nics
    try:
        before = set(floating_ips(demo_api))
        assert web.post("/floating-ips/create").status_code == 302
        [address] = set(floating_ips(demo_api)) - before
        page = web.get("/floating-ips").get_data(as_text=True)
        assert f"Floating IP {address} allocated." in page and f'data-address="{address}"' in page

        response = web.post("/floating-ips/attach", data={"address": address, "instance": instance.id,
                                                          "network": ""})
        assert response.status_code == 302
        attached = floating_ips(demo_api)[address]
        assert attached.instance_id == instance.id and attached.fixed_ip == nic.fixed_ip
        page = web.get("/floating-ips").get_data(as_text=True)
        assert f'<a href="/instances/{instance.id}">{vm}</a>' in page and net in page

        # The instance's page: its NIC, with the floating IP.
        page = web.get(f"/instances/{instance.id}").get_data(as_text=True)
        assert 'id="nics"' in page
        for shown in (net, nic.fixed_ip, nic.mac, address):
            assert shown in page
        assert web.get(f"/instances/{instance.id}.json").json["instance"]["nics"] == [
            {"network": net, "network_id": nic.network_id, "fixed_ip": nic.fixed_ip, "mac": nic.mac,
             "floating_ip": address}]

        assert web.post(f"/floating-ips/{address}/detach").status_code == 302
        assert floating_ips(demo_api)[address].instance_id == ""
        page = web.get(f"/instances/{instance.id}").get_data(as_text=True)
        nics = page[page.index('id="nics"'):page.index("</table>", page.index('id="nics"'))]
        assert nic.fixed_ip in nics and address not in nics and ">none<" in nics

        assert web.post(f"/floating-ips/{address}/delete").status_code == 302
        assert address not in floating_ips(demo_api)
        assert f"Floating IP {address} released." in web.get("/floating-ips").get_data(as_text=True)
    finally:
        remove(demo_api, instance)
        demo_api.networks.DeleteNetwork(pb.DeleteNetworkRequest(id_or_name=net))


def test_launch_on_a_network(web, demo_api):
    net, vm = f"lnet-{uuid.uuid4().hex[:6]}", f"lvm-{uuid.uuid4().hex[:6]}"
    demo_api.networks.CreateNetwork(pb.CreateNetworkRequest(name=net, cidr="10.44.0.0/24"))
    try:
        assert f'<option value="{net}">{net} (10.44.0.0/24)</option>' in web.get("/launch").get_data(
            as_text=True)
        # Several at once take no network (the API's CreateInstances has none): the form says so.
        response = web.post("/launch", data={"name": vm, "flavor": "tiny", "count": "2", "network": net,
                                             "request_id": str(uuid.uuid4())})
        assert response.status_code == 400 and "one instance at a time" in response.get_data(as_text=True)
        response = web.post("/launch", data={"name": vm, "flavor": "tiny", "count": "1", "network": net,
                                             "request_id": str(uuid.uuid4())})
        assert response.status_code == 302, response.get_data(as_text=True)
        instance = demo_api.instances.GetInstance(cpb.GetInstanceRequest(id_or_name=vm))
        assert [n.network_name for n in instance.nics] == [net]
        remove(demo_api, instance)
    finally:
        demo_api.networks.DeleteNetwork(pb.DeleteNetworkRequest(id_or_name=net))


def test_another_tenants_network_and_floating_ip_are_not_found(net_cloud, net_app, demo_api):
    other = make_tenant(net_cloud, login(net_cloud, "admin"), "netother")
    other_web = Web(net_app).login(other.username, other.password, other.project)
    net = f"priv-{uuid.uuid4().hex[:6]}"
    made = demo_api.networks.CreateNetwork(pb.CreateNetworkRequest(name=net, cidr="10.43.0.0/24"))
    address = demo_api.networks.CreateFloatingIp(pb.CreateFloatingIpRequest(
        request_id=str(uuid.uuid4()))).address
    try:
        assert net not in other_web.get("/networks").get_data(as_text=True)
        assert address not in other_web.get("/floating-ips").get_data(as_text=True)
        assert other_web.post(f"/networks/{made.id}/delete").status_code == 404
        assert other_web.post(f"/floating-ips/{address}/detach").status_code == 404
        assert other_web.post(f"/floating-ips/{address}/delete").status_code == 404
        assert net in network_names(demo_api) and address in floating_ips(demo_api)
    finally:
        demo_api.networks.DeleteFloatingIp(pb.FloatingIpRequest(address=address))
        demo_api.networks.DeleteNetwork(pb.DeleteNetworkRequest(id_or_name=made.id))
