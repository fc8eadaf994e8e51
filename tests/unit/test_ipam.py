"""Tenant networks' pure logic on the in-memory store (control/network/): which
subnets are allowed, which address and MAC a NIC gets, full subnets, networks'
create and delete with their VNI, SNAT address and quota, routers' hosts, and
what a host is told to make."""

from __future__ import annotations

import random
from ipaddress import IPv4Network

import pytest

from control.config import ControlConfig
from control.errors import AlreadyExists, InvalidArgument, InvalidTransition, NotFound, ResourceExhausted
from control.identity.quotas import Quotas, QuotaValues
from control.models import Host, Instance, Network, Nic, Resources
from control.network import ipam
from control.network.networks import Networks, router_host
from control.store import keys
from control.store.etcd import Txn
from control.store.memory import MemoryStore

# ---------------------------------------------------------------- subnets


@pytest.mark.parametrize("cidr", ["10.0.0.0/24", "172.16.0.0/16", "192.168.7.8/29", "10.255.0.0/16"])
def test_private_subnets_of_16_to_29_are_allowed(cidr):
    assert str(ipam.parse_cidr(cidr)) == cidr


@pytest.mark.parametrize("cidr, why", [
    ("", "not an IPv4 network"),
    ("banana", "not an IPv4 network"),
    ("10.0.0.0/33", "not an IPv4 network"),
    ("10.0.0.0", "not an IPv4 network"),     # no prefix: one address
    ("fd00::/64", "not an IPv4 network"),
    ("10.0.0.5/24", "host bits are set; the network is 10.0.0.0/24"),
    ("8.8.8.0/24", "not a private range"),
    ("100.64.0.0/24", "not a private range"),  # the external network's kind of range
    ("10.0.0.0/8", "the prefix must be /16 to /29"),
    ("10.0.0.0/30", "the prefix must be /16 to /29"),
])
def test_bad_subnets_are_refused_saying_why(cidr, why):
    with pytest.raises(InvalidArgument, match=why):
        ipam.parse_cidr(cidr)


def test_guests_get_every_host_address_but_the_gateway():
    subnet = IPv4Network("10.0.0.0/29")
    assert str(ipam.gateway_of(subnet)) == "10.0.0.1"
    assert [str(a) for a in ipam.guest_addresses(subnet)] == [f"10.0.0.{i}" for i in range(2, 7)]
    assert ipam.capacity(subnet) == 5
    assert ipam.capacity(IPv4Network("10.0.0.0/26")) == 61


def test_macs_are_openstack_style_unicast_lower_case_and_unique_per_network():
    subnet = IPv4Network("10.1.0.0/16")
    rng = random.Random(7)
    macs = {ipam.mac_for(subnet, str(a), rng) for a in list(ipam.guest_addresses(subnet))}
    assert len(macs) == ipam.capacity(subnet)  # every address its own MAC
    for mac in list(macs)[:100]:
        assert mac.startswith("fa:16:3e:") and mac == mac.lower()
        assert int(mac.split(":")[0], 16) & 1 == 0  # unicast
    assert ipam.mac_for(subnet, "10.1.2.3", rng).endswith(":02:03")


# ---------------------------------------------------------------- networks on the store


@pytest.fixture
def store():
    s = MemoryStore()
    for project in ("p1", "p2"):
        s.put(keys.project(project), {"name": project})
    return s


@pytest.fixture
def networks(store):
    config = ControlConfig(tenant_networks=True, external_cidr="100.64.0.0/29")
    return Networks(store, Quotas(store, QuotaValues(**config.quota_defaults())), config)


def snapshot(store) -> dict:
    return {r.key: r.value for r in store.list(keys.PREFIX + "/")}


def test_a_network_takes_its_name_vni_snat_address_and_quota_in_one_go(networks, store):
    net = networks.create("p1", "backend", "10.0.0.0/24")
    assert (net.gateway_ip, net.mtu, net.snat_ip) == ("10.0.0.1", 1450, "100.64.0.2")
    assert store.get(keys.network_vni(net.vni)).value["network_id"] == net.id
    assert store.get(keys.external_ip("100.64.0.2")).value["kind"] == "snat"
    assert networks.quotas.usage("p1").get("networks") == 1
    assert networks.get("p1", "backend") == net == networks.get("p1", net.id)
    with pytest.raises(NotFound):
        networks.get("p2", net.id)  # another project's
    # The same subnet in another project: normal.
    other = networks.create("p2", "backend", "10.0.0.0/24")
    assert other.vni != net.vni and other.snat_ip == "100.64.0.3"


def test_refusals_write_nothing(networks, store):
    networks.create("p1", "taken", "10.0.0.0/24")
    before = snapshot(store)
    with pytest.raises(AlreadyExists):
        networks.create("p1", "taken", "10.1.0.0/24")
    with pytest.raises(InvalidArgument):
        networks.create("p1", "bad name!", "10.1.0.0/24")
    with pytest.raises(InvalidArgument):
        networks.create("p1", "n2", "10.1.0.1/24")
    networks.quotas.set_limits("p1", {"networks": 1})
    before = snapshot(store)
    with pytest.raises(ResourceExhausted, match="quota exceeded for networks"):
        networks.create("p1", "n3", "10.2.0.0/24")
    assert snapshot(store) == before


def test_the_external_network_running_out_refuses_the_network(networks, store):
    # 100.64.0.0/29: the gateway .1, then .2 to .6 for routers and floating IPs.
    for i in range(5):
        networks.create("p1", f"n{i}", "10.0.0.0/24")
    before = snapshot(store)
    with pytest.raises(ResourceExhausted, match="external network 100.64.0.0/29 has no free address"):
        networks.create("p1", "n5", "10.0.0.0/24")
    assert snapshot(store) == before


def nic_for(networks, store, network: Network, instance_id: str):
    txn = Txn()
    nics = networks.nics_into(txn, [networks.record(network.project, network.id)], instance_id)
    assert store.commit(txn)
    return nics[0]


def test_nics_get_the_lowest_free_address_until_the_subnet_is_full(networks, store):
    net = networks.create("p1", "small", "10.0.0.0/29")
    got = [nic_for(networks, store, net, f"i{i}").fixed_ip for i in range(5)]
    assert got == [f"10.0.0.{i}" for i in range(2, 7)]
    before = snapshot(store)
    with pytest.raises(ResourceExhausted, match="network small has no free address"):
        nic_for(networks, store, net, "i5")
    assert snapshot(store) == before
    assert (networks.usage(net).ports, networks.usage(net).free) == (5, 0)
    # One address back: it is the next one given.
    ipam.release_nics_into(txn := Txn(), Instance(
        id="i2", project="p1", name="x", flavor="f", resources=Resources(), image="img",
        nics=[Nic(network_id=net.id, network_name="small", mac="fa:16:3e:00:00:04",
                  fixed_ip="10.0.0.4")]))
    assert store.commit(txn)
    assert nic_for(networks, store, net, "i6").fixed_ip == "10.0.0.4"


def test_several_nics_on_one_network_in_one_transaction_get_distinct_addresses(networks, store):
    net = networks.create("p1", "n", "10.0.0.0/24")
    record = networks.record("p1", net.id)
    txn = Txn()
    nics = [networks.nics_into(txn, [record], f"i{i}")[0] for i in range(3)]
    assert [n.fixed_ip for n in nics] == ["10.0.0.2", "10.0.0.3", "10.0.0.4"]
    assert store.commit(txn)


def test_a_racing_create_that_took_the_address_fails_the_other_transaction(networks, store):
    net = networks.create("p1", "n", "10.0.0.0/24")
    record = networks.record("p1", net.id)
    first, second = Txn(), Txn()
    a = networks.nics_into(first, [record], "a")[0]
    b = networks.nics_into(second, [record], "b")[0]
    assert a.fixed_ip == b.fixed_ip
    assert store.commit(first) and not store.commit(second)


def test_a_network_with_nics_is_not_deleted_and_names_them(networks, store):
    net = networks.create("p1", "busy", "10.0.0.0/24")
    store.put(keys.instance("p1", "i1"), {"name": "web1"})
    nic_for(networks, store, net, "i1")
    with pytest.raises(InvalidTransition, match="busy has NICs of instances web1"):
        networks.delete("p1", "busy")
    assert networks.get("p1", "busy")


def test_delete_gives_back_name_vni_snat_address_and_quota(networks, store):
    before = snapshot(store)
    net = networks.create("p1", "gone", "10.0.0.0/24")
    networks.delete("p1", "gone")
    after = snapshot(store)
    assert after.pop(keys.quota_usage("p1"))["resources"]["networks"] == 0
    assert after == before
    with pytest.raises(NotFound):
        networks.delete("p1", net.id)


def test_the_default_network_is_made_once_and_not_counted(networks, store):
    first = networks.default("p1")
    assert (first.name, first.cidr, first.counted) == ("default", "10.0.0.0/24", False)
    assert networks.default("p1") == first
    assert networks.quotas.usage("p1").get("networks") == 0
    assert [r.value["id"] for r in networks.for_instance("p1", [])] == [first.id]


def test_a_network_listed_twice_is_refused(networks):
    networks.create("p1", "n", "10.0.0.0/24")
    with pytest.raises(InvalidArgument, match="listed twice"):
        networks.for_instance("p1", ["n", "n"])
    with pytest.raises(NotFound):
        networks.for_instance("p1", ["nope"])


# ---------------------------------------------------------------- routers and hosts


def test_router_hosts_are_stable_and_move_only_off_a_host_that_went():
    hosts = [f"h{i}" for i in range(5)]
    nets = [f"net-{i}" for i in range(200)]
    placed = {n: router_host(n, hosts) for n in nets}
    assert placed == {n: router_host(n, list(reversed(hosts))) for n in nets}  # order-free
    assert len(set(placed.values())) == 5  # spread over every host
    without = {n: router_host(n, hosts[1:]) for n in nets}
    moved = {n for n in nets if placed[n] != without[n]}
    assert moved == {n for n in nets if placed[n] == "h0"}
    assert router_host("net-0", []) == ""


def test_a_host_is_told_the_networks_it_has_nics_of_or_routes(networks, store):
    for name, ip in (("a", "192.0.2.1"), ("b", "192.0.2.2"), ("c", "192.0.2.3")):
        store.put(keys.host(name), Host(name=name, address=f"{ip}:50061",
                                        inventory=Resources()).model_dump(mode="json"))
    net = networks.create("p1", "n", "10.0.0.0/24")
    txn = Txn()
    record = networks.record("p1", net.id)
    for instance_id, host in (("i1", "a"), ("i2", "b")):
        nic = networks.nics_into(txn, [record], instance_id)[0]
        store.put(keys.instance("p1", instance_id), Instance(
            id=instance_id, project="p1", name=instance_id, flavor="f", resources=Resources(),
            image="img", host=host, nics=[nic]).model_dump(mode="json"))
    assert store.commit(txn)
    router = router_host(net.id, ["a", "b", "c"])
    for host in ("a", "b", "c"):
        view = networks.host_view(host)
        assert view.external_cidr == "100.64.0.0/29" and view.external_gateway == "100.64.0.1"
        if host == "c" and router != "c":
            assert view.networks == []
            continue
        (seen,) = view.networks
        assert seen.router_host == router and seen.network.snat_ip == net.snat_ip
        assert sorted((p.instance_id, p.vtep, p.fixed_ip) for p in seen.ports) == [
            ("i1", "192.0.2.1", "10.0.0.2"), ("i2", "192.0.2.2", "10.0.0.3")]
        wanted = {"192.0.2.1", "192.0.2.2", {"a": "192.0.2.1", "b": "192.0.2.2", "c": "192.0.2.3"}[router]}
        assert set(seen.vteps) == wanted


def test_network_settings():
    off = ControlConfig()
    assert not off.tenant_networks and "networks" not in off.quota_defaults()  # nothing changes
    on = ControlConfig(tenant_networks=True)
    assert on.quota_defaults()["networks"] == 10 and on.quota_defaults()["floating_ips"] == 10
    assert on.network_mtu() == 1450 and ControlConfig(underlay_mtu=9000).network_mtu() == 8950
