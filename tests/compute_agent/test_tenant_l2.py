"""Tenant networks' layer 2 (compute_agent/tenant/l2.py, networking.py) on the real
kernel, in the lab of tenant_lab.py: two hosts as namespaces joined by a veth
underlay, guests as namespaces on the networks' bridges. Seconds."""

from dataclasses import replace

import pytest
from compute_agent.errors import NetworkError
from compute_agent.network import NicSpec
from compute_agent.tenant.model import HostNetworks

from tests.compute_agent.tenant_lab import (
    MTU,
    VTEP,
    Sniffer,
    converge_both,
    lab,
    network,
    ping,
    port,
    sh,
)


@pytest.fixture
def topo(tmp_path):
    with lab(tmp_path) as t:
        yield t



def test_guests_on_two_hosts_talk_over_vxlan_at_the_network_mtu(topo):
    a1, a2, a3 = port(11, "h1", 100), port(12, "h2", 100), port(13, "h1", 100)
    net = network(100, a1, a2, a3)
    converge_both(topo, net)
    g1 = topo.guest("a1", "h1", net, a1)
    topo.guest("a2", "h2", net, a2)
    topo.guest("a3", "h1", net, a3)
    assert ping(g1, a2.fixed_ip), "across hosts"
    assert ping(g1, a3.fixed_ip), "on the same host"
    # 1400 bytes of payload + 28 of headers, don't fragment: fits the 1450 MTU
    # after VXLAN's 50 bytes on a 1500-byte underlay.
    assert ping(g1, a2.fixed_ip, "-M", "do", "-s", "1400")
    assert ping(g1, a2.fixed_ip, "-M", "do", "-s", str(MTU - 28))
    # The forwarding entries are the desired ones, nothing learned: h1 floods to
    # h2 only and knows a2 is on h2.
    assert topo.hosts["h1"].fdb(100) == {("00:00:00:00:00:00", VTEP["h2"]), (a2.mac, VTEP["h2"])}


def test_two_projects_with_the_same_cidr_on_the_same_hosts_never_see_each_other(topo):
    """Same addresses, same hosts, different VNIs: each pair talks, and the
    other project's guests receive (and send) not one packet, ARP included."""
    a = network(201, port(11, "h1", 201), port(12, "h2", 201), project="p1")
    b = network(202, port(11, "h1", 202), port(12, "h2", 202), project="p2")
    converge_both(topo, a, b)
    ga1 = topo.guest("a1", "h1", a, a.ports[0])
    ga2 = topo.guest("a2", "h2", a, a.ports[1])
    gb1 = topo.guest("b1", "h1", b, b.ports[0])
    gb2 = topo.guest("b2", "h2", b, b.ports[1])
    sniffers = {g: Sniffer(g) for g in (ga1, ga2, gb1, gb2)}
    try:
        for g, other in ((ga1, "10.0.0.12"), (ga2, "10.0.0.11"), (gb1, "10.0.0.12"), (gb2, "10.0.0.11")):
            assert ping(g, other, count=2)
        # an unanswered ARP: broadcast to every host of the network
        assert ping(ga1, "10.0.0.99", wait_s=0.3) is False
        assert ping(gb1, "10.0.0.99", wait_s=0.3) is False
    finally:
        seen = {g: sniffer.stop() for g, sniffer in sniffers.items()}
    # Each guest heard its peer, and nothing else: no frame of the other project,
    # none of the hosts.
    for g, peer in ((ga1, a.ports[1]), (ga2, a.ports[0]), (gb1, b.ports[1]), (gb2, b.ports[0])):
        assert seen[g] == {peer.mac}, f"{g} received frames from {seen[g] - {peer.mac}}"


def test_converge_is_level_triggered(topo):
    """A second converge changes nothing; what is removed by hand comes back,
    exactly that; a network no longer desired leaves nothing behind."""
    h1 = topo.hosts["h1"]
    a, b = network(301, port(11, "h1", 301), port(12, "h2", 301)), network(302, port(11, "h2", 302))
    first = h1.converge(HostNetworks(networks=(a, b)))
    assert "add bridge brq-301" in first and "add vxlan vxlan-302 local 192.0.2.1" in first
    assert h1.converge(HostNetworks(networks=(a, b))) == []
    assert h1.links() == {"brq-301", "vxlan-301", "brq-302", "vxlan-302"}

    sh("bridge", "-n", h1.netns, "fdb", "del", a.ports[1].mac, "dev", "vxlan-301", "dst", VTEP["h2"])
    assert h1.converge(HostNetworks(networks=(a, b))) == [
        f"add fdb {a.ports[1].mac} dst {VTEP['h2']} on vxlan-301"]

    sh("ip", "-n", h1.netns, "link", "del", "brq-302")
    assert h1.converge(HostNetworks(networks=(a, b))) == [
        "add bridge brq-302", f"set brq-302 mtu {MTU}", "set brq-302 alias 'network net-302'",
        "set brq-302 up", "set vxlan-302 master brq-302"]

    sh("ip", "-n", h1.netns, "addr", "add", "10.0.0.250/24", "dev", "brq-301")
    assert h1.converge(HostNetworks(networks=(a, b))) == ["remove address 10.0.0.250/24 from brq-301"]

    # a port moved to h1: its entry goes; h2 left the network: its flood entry goes
    moved = replace(a, ports=(a.ports[0], replace(a.ports[1], vtep=VTEP["h1"])), vteps=(VTEP["h1"],))
    assert sorted(h1.converge(HostNetworks(networks=(moved, b)))) == [
        f"delete fdb 00:00:00:00:00:00 dst {VTEP['h2']} on vxlan-301",
        f"delete fdb {a.ports[1].mac} dst {VTEP['h2']} on vxlan-301"]
    assert h1.fdb(301) == set()

    assert h1.converge(HostNetworks(networks=(moved,))) == ["delete vxlan-302", "delete brq-302"]
    assert h1.links() == {"brq-301", "vxlan-301"}
    assert h1.converge(HostNetworks()) == ["delete vxlan-301", "delete brq-301"]
    assert h1.links() == set()


def test_a_plugged_nics_bridge_stays_until_it_is_unplugged(topo):
    """The plug makes the network before any sync; a sync that does not list it
    yet (read just before the spawn) leaves it; once unplugged it goes."""
    h1 = topo.hosts["h1"]
    net = network(401, port(11, "h1", 401), port(12, "h2", 401))
    device = h1.plug("i-1", 0, NicSpec(network_id=net.id, mac=net.ports[0].mac,
                                        fixed_ip="10.0.0.11", network=net))
    assert (device.type, device.source, device.mac) == ("bridge", "brq-401", net.ports[0].mac)
    assert h1.links() == {"brq-401", "vxlan-401"} and len(h1.fdb(401)) == 2
    assert h1.converge(HostNetworks()) == []
    assert h1.links() == {"brq-401", "vxlan-401"}
    assert h1.unplug("i-1", 0) is True
    assert h1.converge(HostNetworks()) == ["delete vxlan-401", "delete brq-401"]


def test_a_plug_keeps_the_forwarding_entries_the_last_sync_made(topo):
    """A spawn's NIC brings its network without ports (agent.proto's NetworkSegment):
    plugging a second guest of a network the host has must not take the entries
    to the other hosts away until the next sync (seen in tests/multihost)."""
    h1 = topo.hosts["h1"]
    net = network(402, port(11, "h1", 402), port(12, "h2", 402), port(13, "h1", 402))
    h1.converge(HostNetworks(networks=(net,)))
    before = h1.fdb(402)
    assert len(before) == 2  # the flood entry to h2 and h2's port
    segment = replace(net, ports=(), vteps=())
    h1.plug("i-13", 0, NicSpec(network_id=net.id, mac=net.ports[2].mac, fixed_ip="10.0.0.13",
                               network=segment))
    assert h1.fdb(402) == before


def test_a_bad_desired_state_changes_nothing(topo):
    h1 = topo.hosts["h1"]
    good = network(501)
    h1.converge(HostNetworks(networks=(good,)))
    for bad, reason in ((replace(good, vni=0), "VNI"), (replace(good, mtu=100_000), "MTU"),
                        (replace(good, vteps=("not-an-address",)), "IPv4"),
                        (network(502, replace(port(1, "h2"), mac="01:00:5e:00:00:01")), "MAC")):
        with pytest.raises(NetworkError, match=reason):
            h1.converge(HostNetworks(networks=(good, bad)))
    with pytest.raises(NetworkError, match="same VNI"):
        h1.converge(HostNetworks(networks=(good, replace(good, id="other"))))
    assert h1.links() == {"brq-501", "vxlan-501"}
    assert h1.converge(HostNetworks(networks=(good,))) == []


def test_many_networks_converge_and_go(topo):
    """20 here; 50 take 1.6 s to make (median, unloaded) and 13 ms to find all right."""
    h1 = topo.hosts["h1"]
    many = tuple(network(1000 + i, port(1, "h2", i)) for i in range(20))
    changes = h1.converge(HostNetworks(networks=many))
    assert sum(c.startswith("add bridge") for c in changes) == 20
    assert len(h1.links()) == 40
    assert h1.converge(HostNetworks(networks=many)) == []
    assert len(h1.converge(HostNetworks())) == 40
    assert h1.links() == set()
