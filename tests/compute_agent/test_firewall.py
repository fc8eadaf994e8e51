"""Security groups and anti-spoofing (compute_agent/tenant/firewall.py) on the
real kernel, in the lab of tenant_lab.py: a host namespace with a network's
bridge, guests as namespaces whose veth peer is the tap the firewall names.
Replies on one bridge take well under a millisecond here, so every probe that
expects nothing waits at most WAIT_S for it. Seconds."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import pytest
from compute_agent.domain_xml import DomainSpec, build_domain_xml
from compute_agent.errors import NetworkError
from compute_agent.network import NicSpec
from compute_agent.tenant.firewall import Firewall, blocks, tap_name
from compute_agent.tenant.model import HostNetworks, Rule, SecurityGroup
from compute_agent.tenant.networking import TenantNetworking

from tests.compute_agent.tenant_lab import Sniffer, lab, network, ping, port, sh

WAIT_S = 1.0   # for a packet that must not come (one that does arrives in < 1 ms)
VNI = 100


class Agent(TenantNetworking):
    """A host's TenantNetworking with a firewall, as the agent has it with
    security_groups on; and what the tests ask of the firewall itself."""

    def __init__(self, vtep, name, state_dir):
        super().__init__(vtep, name, state_dir, firewall=Firewall(vtep))

    def listing(self) -> str:
        return self.firewall.listing()

    def remove_firewall(self) -> list[str]:
        return self.firewall.remove()

    def restart_firewall(self) -> None:
        """A new Firewall, as a restarted agent has: it knows nothing yet."""
        self.firewall = Firewall(self.firewall.local_vtep)


@pytest.fixture
def topo(tmp_path):
    with lab(tmp_path, Agent) as t:
        yield t


def nic(n: int, *groups: str, host: str = "h1", vni: int = VNI):
    return replace(port(n, host, vni), security_group_ids=groups)


def desired(ports, *groups: SecurityGroup) -> HostNetworks:
    return HostNetworks(networks=(network(VNI, *ports),), security_groups=groups)


def guests(topo, ports, vni: int = VNI) -> list[str]:
    """A guest per port, on the host its vtep says."""
    net = network(vni, *ports)
    host = {h.vtep: name for name, h in topo.hosts.items()}
    return [topo.guest(f"g{vni}-{p.fixed_ip.rsplit('.', 1)[1]}", host[p.vtep], net, p, tap=tap_name(p.mac))
            for p in ports]


OPEN = SecurityGroup("open", (Rule("o-in", "ingress"), Rule("o-out", "egress")))
CLIENT = SecurityGroup("client", (Rule("c-out", "egress"),))


def in_ns(ns: str, code: str, *args: str, **popen) -> subprocess.Popen:
    return subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", code, *args],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, **popen)


# Prints "address port text" for each datagram on a UDP port, until stdin closes.
UDP_LISTEN = """
import select, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
print("ready", flush=True)
while sys.stdin not in select.select([s, sys.stdin], [], [])[0]:
    data, (address, sport) = s.recvfrom(2048)
    print(address, sport, data.decode(), flush=True)
"""

# Sends one datagram: destination, port, text, source address, source port.
UDP_SEND = """
import socket, sys
dst, dport, text, src, sport = sys.argv[1:]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((src, int(sport)))
s.sendto(text.encode(), (dst, int(dport)))
"""


class Listener:
    def __init__(self, ns: str, udp_port: int):
        self.process = in_ns(ns, UDP_LISTEN, str(udp_port))
        assert self.process.stdout is not None and self.process.stdout.readline() == "ready\n"

    def stop(self) -> list[str]:
        """What arrived (the process is stopped after WAIT_S: time for late ones)."""
        try:
            out, _ = self.process.communicate(timeout=WAIT_S)  # never ends by itself
        except subprocess.TimeoutExpired:
            out, _ = self.process.communicate("", timeout=5)  # stdin closed: it stops at once
        return out.split("\n")[:-1] if out else []


def send(ns: str, dst: str, dport: int, text: str, src: str = "0.0.0.0", sport: int = 0) -> None:
    sh("ip", "netns", "exec", ns, sys.executable, "-c", UDP_SEND, dst, str(dport), text, src, str(sport))


def heard(lines: list[str]) -> set[str]:
    return {line.split()[2] for line in lines}


# A TCP echo server (one connection at a time, line by line), and a client that
# keeps one connection open, sending each line of its stdin and printing the echo.
ECHO_SERVER = """
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 5000)); s.listen(); print("ready", flush=True)
while True:
    c, _ = s.accept()
    with c, c.makefile("rw") as f:
        for line in f:
            f.write(line); f.flush()
"""
ECHO_CLIENT = """
import socket, sys
c = socket.create_connection((sys.argv[1], 5000), timeout=2)
f = c.makefile("rw"); print("connected", flush=True)
for line in sys.stdin:
    f.write(line); f.flush(); print(f.readline().strip(), flush=True)
"""


def tcp_opens(ns: str, address: str, dport: int) -> bool:
    code = ("import socket, sys\ntry:\n    socket.create_connection((sys.argv[1], int(sys.argv[2])), "
            "timeout=float(sys.argv[3]))\nexcept OSError:\n    sys.exit(1)")
    return subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code, address, str(dport),
                           str(WAIT_S)], capture_output=True).returncode == 0


# --- security groups ---------------------------------------------------------------

def test_ingress_is_denied_until_a_rule_allows_it_and_again_once_it_goes(topo):
    """web has no egress rule at all: the echo replies pass because they are replies."""
    h1 = topo.hosts["h1"]
    web, client = nic(11, "web"), nic(12, "client")
    closed = SecurityGroup("web")
    h1.converge(desired((web, client), closed, CLIENT))
    g_web, g_client = guests(topo, (web, client))
    assert not ping(g_client, web.fixed_ip, wait_s=WAIT_S), "no rule: closed"
    assert not ping(g_web, client.fixed_ip, wait_s=WAIT_S), "no egress rule on web, none in on client"

    icmp = SecurityGroup("web", (Rule("r1", "ingress", "icmp", remote_cidr=f"{client.fixed_ip}/32"),))
    changes = h1.converge(desired((web, client), icmp, CLIENT))
    assert changes == ["firewall: change bridge cloudfw / chain sg-web-ingress"]
    assert ping(g_client, web.fixed_ip, count=2), "open, and the replies pass (stateful)"
    assert not tcp_opens(g_client, web.fixed_ip, 22), "icmp only"

    h1.converge(desired((web, client), closed, CLIENT))
    assert not ping(g_client, web.fixed_ip, wait_s=WAIT_S), "closed again"


def test_an_open_connection_survives_an_unrelated_rule_change_and_is_cut_by_its_rules_removal(topo):
    """Neutron's semantics: the rules' change that still allows a connection
    leaves it alone; the one that no longer allows it cuts it (the opener's
    packets go through the rules every time, not only the first)."""
    h1 = topo.hosts["h1"]
    web, client = nic(11, "web"), nic(12, "client")
    tcp = Rule("r1", "ingress", "tcp", 5000, 5000, remote_group_id="client")
    client_members = replace(CLIENT, member_ips=(client.fixed_ip,))
    h1.converge(desired((web, client), SecurityGroup("web", (tcp,)), client_members))
    g_web, g_client = guests(topo, (web, client))
    server = in_ns(g_web, ECHO_SERVER)
    try:
        assert server.stdout is not None and server.stdout.readline() == "ready\n"
        conn = in_ns(g_client, ECHO_CLIENT, web.fixed_ip)
        try:
            assert conn.stdin is not None and conn.stdout is not None
            assert conn.stdout.readline() == "connected\n"
            conn.stdin.write("one\n")
            conn.stdin.flush()
            assert conn.stdout.readline() == "one\n"

            dns = Rule("r2", "ingress", "udp", 53, 53)
            changes = h1.converge(desired((web, client), SecurityGroup("web", (tcp, dns)), client_members))
            assert changes == ["firewall: change bridge cloudfw / chain sg-web-ingress"]
            conn.stdin.write("two\n")
            conn.stdin.flush()
            assert conn.stdout.readline() == "two\n", "the open connection carried on"  # read timeout: 2 s
            # Tracked in the network's own conntrack zone (the VNI + 1).
            tracked = sh("ip", "netns", "exec", h1.netns, "conntrack", "-L", "-p", "tcp", "--dport", "5000")
            assert f"zone={VNI + 1}" in tracked and web.fixed_ip in tracked

            changes = h1.converge(desired((web, client), SecurityGroup("web", (dns,)), client_members))
            assert changes == ["firewall: change bridge cloudfw / chain sg-web-ingress",
                               "firewall: remove bridge cloudfw / set rg-client"]  # no rule names it
            conn.stdin.write("three\n")
            conn.stdin.flush()
            # No echo: the client's read times out (2 s) and it ends.
            assert conn.stdout.readline() == "", "the rule that allowed it is gone: cut"
        finally:
            conn.kill()
            conn.wait()
        assert not tcp_opens(g_client, web.fixed_ip, 5000)
        h1.converge(desired((web, client), SecurityGroup("web", (tcp, dns)), client_members))
        assert tcp_opens(g_client, web.fixed_ip, 5000)
        assert not tcp_opens(g_client, web.fixed_ip, 5001), "only the rule's port"
    finally:
        server.kill()
        server.wait()


def test_a_member_joining_the_remote_group_changes_a_set_not_rules(topo):
    h1 = topo.hosts["h1"]
    web, client = nic(11, "web"), nic(12, "client")
    web_group = SecurityGroup("web", (Rule("r1", "ingress", remote_group_id="friends"),))
    friends = SecurityGroup("friends")
    h1.converge(desired((web, client), web_group, CLIENT, friends))
    g_web, g_client = guests(topo, (web, client))
    assert not ping(g_client, web.fixed_ip, wait_s=WAIT_S)

    joined = replace(friends, member_ips=(client.fixed_ip,))
    changes = h1.converge(desired((web, client), web_group, CLIENT, joined))
    assert changes == ["firewall: change bridge cloudfw / set rg-friends"]
    assert ping(g_client, web.fixed_ip)

    h1.converge(desired((web, client), web_group, CLIENT, friends))
    assert not ping(g_client, web.fixed_ip, wait_s=WAIT_S), "left the group: closed again"


def test_a_tap_the_firewall_has_no_port_for_passes_nothing(topo):
    h1 = topo.hosts["h1"]
    known, stranger = nic(11, "open"), nic(12, "open")
    h1.converge(desired((known,), OPEN))  # the stranger's port not (yet) in the desired state
    g_known, g_stranger = guests(topo, (known, stranger))
    assert not ping(g_stranger, known.fixed_ip, wait_s=WAIT_S)
    h1.converge(desired((known, stranger), OPEN))
    assert ping(g_stranger, known.fixed_ip)


def test_a_remote_group_member_on_another_host_gets_in_over_vxlan(topo):
    """The client's egress is filtered on h2, the web's ingress on h1."""
    web, client = nic(11, "web", host="h1"), nic(12, "client", host="h2")
    web_group = SecurityGroup("web", (Rule("r1", "ingress", "icmp", remote_group_id="client"),))
    for members in ((), (client.fixed_ip,)):
        state = desired((web, client), web_group, replace(CLIENT, member_ips=members))
        changes = {name: host.converge(state) for name, host in topo.hosts.items()}
        if members:  # h2 has no NIC whose rules name the group: nothing to change there
            assert changes == {"h1": ["firewall: change bridge cloudfw / set rg-client"], "h2": []}
        if not members:
            g_web, g_client = guests(topo, (web, client))
            assert not ping(g_client, web.fixed_ip, wait_s=WAIT_S), "not a member yet"
    assert ping(g_client, web.fixed_ip)


def test_two_networks_with_the_same_addresses_keep_their_connections_apart(topo):
    """Same CIDR, same addresses, one host: each network's flows are tracked in
    its own conntrack zone, so both pairs talk at once and neither sees the
    other's state."""
    h1 = topo.hosts["h1"]
    a = (nic(11, "open", vni=201), nic(12, "open", vni=201))
    b = (nic(11, "open", vni=202), nic(12, "open", vni=202))
    h1.converge(HostNetworks(networks=(network(201, *a), network(202, *b)), security_groups=(OPEN,)))
    ga, gb = guests(topo, a, 201), guests(topo, b, 202)
    pings = [subprocess.Popen(["ip", "netns", "exec", g[0], "ping", "-n", "-q", "-c", "3", "-i", "0.2",
                               "-W", "1", "10.0.0.12"], stdout=subprocess.DEVNULL) for g in (ga, gb)]
    assert [p.wait(timeout=5) for p in pings] == [0, 0]  # 3 pings 0.2 s apart: 0.4 s
    tracked = sh("ip", "netns", "exec", h1.netns, "conntrack", "-L", "-p", "icmp")
    assert "zone=202" in tracked and "zone=203" in tracked


def test_bad_input_is_refused_before_anything_changes(topo):
    h1 = topo.hosts["h1"]
    web = nic(11, "web")
    h1.converge(desired((web,), SecurityGroup("web")))
    before = h1.listing()
    for rule in (Rule("r", "sideways"), Rule("r", "ingress", "sctp"), Rule("r", "ingress", "icmp", 22, 22),
                 Rule("r", "ingress", "tcp", 0, 70000), Rule("r", "ingress", "tcp", 90, 80),
                 Rule("r", "ingress", remote_cidr="10.0.0.0/33"),
                 Rule("r", "ingress", remote_cidr="10.0.0.0/8", remote_group_id="web")):
        with pytest.raises(NetworkError):
            h1.converge(desired((web,), SecurityGroup("web", (rule,))))
    with pytest.raises(NetworkError):
        h1.converge(desired((web,), SecurityGroup("web; flush ruleset")))
    assert h1.listing() == before
    assert all(len(tap_name(web.mac, tag)) <= 15 for tag in ("", "a", "abc"))


# --- anti-spoofing -------------------------------------------------------------------

def test_a_guest_sends_only_from_its_own_address_and_mac(topo):
    h1 = topo.hosts["h1"]
    victim, attacker, observer = nic(11, "open"), nic(12, "open"), nic(13, "open")
    h1.converge(desired((victim, attacker, observer), OPEN))
    g_victim, g_attacker, g_observer = guests(topo, (victim, attacker, observer))
    # A static entry: the attacker's frames are sent whatever its ARP would do.
    sh("ip", "-n", g_attacker, "neigh", "replace", observer.fixed_ip, "lladdr", observer.mac, "dev", "eth0")
    sh("ip", "-n", g_attacker, "addr", "add", "10.0.0.99/32", "dev", "eth0")
    sh("ip", "-n", g_attacker, "addr", "add", f"{victim.fixed_ip}/32", "dev", "eth0")
    listener = Listener(g_observer, 7000)
    send(g_attacker, observer.fixed_ip, 7000, "own", attacker.fixed_ip)
    send(g_attacker, observer.fixed_ip, 7000, "unassigned", "10.0.0.99")
    send(g_attacker, observer.fixed_ip, 7000, "victims", victim.fixed_ip)
    sh("ip", "-n", g_attacker, "link", "set", "eth0", "address", "52:54:00:66:66:66")
    send(g_attacker, observer.fixed_ip, 7000, "other-mac", attacker.fixed_ip)
    assert heard(listener.stop()) == {"own"}
    assert ping(g_observer, victim.fixed_ip) and ping(g_victim, observer.fixed_ip)


# A gratuitous ARP (a reply to everyone) saying sys.argv[2] is at this eth0's MAC.
GARP = """
import socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
mac = s.getsockname()[4]
ip = socket.inet_aton(sys.argv[1])
arp = bytes.fromhex("0001 0800 06 04 0002") + mac + ip + b"\\xff" * 6 + ip
for _ in range(3):
    s.send(b"\\xff" * 6 + mac + b"\\x08\\x06" + arp)
"""


def test_gratuitous_arp_for_a_neighbours_address_is_dropped(topo):
    h1 = topo.hosts["h1"]
    victim, attacker, observer = nic(11, "open"), nic(12, "open"), nic(13, "open")
    h1.converge(desired((victim, attacker, observer), OPEN))
    g_victim, g_attacker, g_observer = guests(topo, (victim, attacker, observer))
    # Without locktime, the kernel takes any ARP's word over what it knew (by
    # default it ignores one within a second of the last update): unfiltered,
    # the announcement below would take the victim's address over.
    sh("ip", "netns", "exec", g_observer, "sysctl", "-q", "-w", "net.ipv4.neigh.eth0.locktime=0")
    assert ping(g_observer, victim.fixed_ip)  # the observer knows the victim's MAC now
    sniffer = Sniffer(g_observer)
    try:
        sh("ip", "netns", "exec", g_attacker, sys.executable, "-c", GARP, victim.fixed_ip)
    finally:
        seen = sniffer.stop()
    assert attacker.mac not in seen
    sniffer = Sniffer(g_observer)
    try:
        sh("ip", "netns", "exec", g_attacker, sys.executable, "-c", GARP, attacker.fixed_ip)
    finally:
        seen = sniffer.stop()
    assert seen == {attacker.mac}, "the announcement of its own address arrived"
    neighbour = json.loads(sh("ip", "-n", g_observer, "-j", "neigh", "show", victim.fixed_ip))
    assert [n["lladdr"] for n in neighbour] == [victim.mac]
    assert ping(g_observer, victim.fixed_ip)


def test_a_guest_cannot_serve_dhcp_and_the_routers_dhcp_passes(topo):
    """Guests' DHCP server replies (udp sport 67) are dropped; the router's (from
    the gateway address, by a port that is not a guest's) reach a guest whose
    groups allow no ingress, and its renewals reach the router with no egress rule."""
    h1 = topo.hosts["h1"]
    rogue, guest = nic(12, "open"), nic(13, "closed")
    h1.converge(desired((rogue, guest), OPEN, SecurityGroup("closed")))
    g_rogue, g_guest = guests(topo, (rogue, guest))
    router = replace(port(1, "h1", VNI), mac="52:54:00:aa:00:01")  # the gateway, 10.0.0.1
    g_router = topo.guest("router", "h1", network(VNI, rogue, guest), router)  # veth gvrouter: not a tap
    listener = Listener(g_guest, 68)
    send(g_rogue, "10.0.0.255", 68, "rogue-offer", rogue.fixed_ip, 67)
    send(g_rogue, "10.0.0.255", 68, "not-dhcp", rogue.fixed_ip, 1067)
    send(g_router, guest.fixed_ip, 68, "router-offer", router.fixed_ip, 67)
    assert heard(listener.stop()) == {"router-offer"}

    at_router = Listener(g_router, 67)
    send(g_guest, router.fixed_ip, 67, "renew", guest.fixed_ip, 68)
    send(g_guest, router.fixed_ip, 67, "not-dhcp", guest.fixed_ip, 1068)
    assert heard(at_router.stop()) == {"renew"}


# --- convergence ----------------------------------------------------------------------

def test_converge_is_level_triggered_and_remove_leaves_nothing(topo):
    h1 = topo.hosts["h1"]
    web, client = nic(11, "web"), nic(12, "client")
    state = desired((web, client), SecurityGroup("web", (Rule("r1", "ingress", "icmp"),)), CLIENT)
    first = h1.converge(state)
    assert [c for c in first if c.startswith("firewall")] == [
        "firewall: add table bridge cloudfw (12 sets, maps and chains)",
        "firewall: add table inet cloudfw (3 sets, maps and chains)"]
    assert h1.converge(state) == []
    g_web, g_client = guests(topo, (web, client))
    assert ping(g_client, web.fixed_ip)

    listed = json.loads(sh("ip", "netns", "exec", h1.netns, "nft", "-j", "-a", "list", "chain", "bridge",
                           "cloudfw", "sg-web-ingress"))
    handle = next(item["rule"]["handle"] for item in listed["nftables"] if "rule" in item)
    sh("ip", "netns", "exec", h1.netns, "nft", "delete", "rule", "bridge", "cloudfw", "sg-web-ingress",
       "handle", str(handle))
    assert not ping(g_client, web.fixed_ip, wait_s=WAIT_S), "deleted by hand"
    assert h1.converge(state) == ["firewall: change bridge cloudfw / chain sg-web-ingress"]
    assert ping(g_client, web.fixed_ip), "repaired"
    assert h1.converge(state) == []

    h1.restart_firewall()
    assert h1.converge(state) == [], "a restarted agent finds all as it should be: no change"

    # A new desired state is applied against what the firewall last applied; the
    # table gone under it, that fails, and the tables are read and made again.
    sh("ip", "netns", "exec", h1.netns, "nft", "delete", "table", "bridge", "cloudfw")
    tcp = SecurityGroup("web", (Rule("r1", "ingress", "icmp"), Rule("r2", "ingress", "tcp", 22, 22)))
    state = desired((web, client), tcp, CLIENT)
    assert h1.converge(state) == ["firewall: add table bridge cloudfw (12 sets, maps and chains)"]
    assert ping(g_client, web.fixed_ip), "repaired"
    assert h1.converge(state) == []

    assert h1.remove_firewall() == ["firewall: delete tables cloudfw"]
    assert h1.listing() == ""
    assert blocks(h1.listing()) == {}


def test_a_plugged_nic_gets_the_tap_name_the_firewall_knows(topo):
    """With a firewall, plug names the tap (the domain's <target dev>), so the
    guest's traffic meets its chains from its first frame."""
    web = nic(11, "web")
    net = network(VNI, web)
    device = topo.hosts["h1"].plug(web.instance_id, 0, NicSpec(network_id=net.id, mac=web.mac,
                                                               fixed_ip=web.fixed_ip, network=net))
    assert device.target == tap_name(web.mac)
    xml = build_domain_xml(DomainSpec(
        uuid="00000000-0000-0000-0000-000000000001", display_name="web", owner_host="h1", virt_type="qemu",
        vcpus=1, max_vcpus=1, memory_mb=64, max_memory_mb=64, kernel="", initrd="", cmdline="",
        disk_path="/dev/null", console_log="/dev/null", interfaces=(device,)))
    assert f"<target dev=\"{tap_name(web.mac)}\"/>" in xml
