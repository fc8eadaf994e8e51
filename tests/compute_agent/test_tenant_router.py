"""The router of a tenant network (compute_agent/tenant/router.py) on the real
kernel: real namespaces, veths, bridges, nftables, dnsmasq; no QEMU.

A "guest" is a namespace with a veth (the port's MAC) into a test bridge that
stands for the network's bridge (l2.py's); it takes its address by DHCP with
busybox's udhcpc. The "internet" is a namespace with a veth into the external
bridge holding External.gateway_ip, running a TCP server that answers with the
address it saw the connection come from. Everything is made with this test's
tag in its name and removed afterwards, even when a test fails.

Figures (printed with `pytest -s`): converge time of one router, first and
unchanged; DHCP lease time; floating IP attach -> first reply from outside.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path

import pytest
from compute_agent.errors import NetworkError
from compute_agent.tenant.model import External, Network, Port
from compute_agent.tenant.router import NFT_TABLE, Router, RouterNames, check, dhcp_hosts, nft_table

from tests.conftest import until

EXTERNAL_PORT = 7777  # the "internet"'s server
GUEST_PORT = 7778     # a guest's server, reached through its floating IP

# Answers each connection with "<name> <the address the connection came from>".
SERVER = r"""
import socket, sys
name, port = sys.argv[1], int(sys.argv[2])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", port))
s.listen(16)
print("ready", flush=True)
while True:
    c, peer = s.accept()
    c.sendall(f"{name} {peer[0]}\n".encode())
    c.close()
"""

CONNECT = r"""
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])) as c:
        print(c.recv(200).decode().strip())
except OSError as exc:
    print(f"error {exc}")
    sys.exit(1)
"""

# Connects again and again until answered; prints the monotonic time of the
# answer (CLOCK_MONOTONIC is the same in every namespace).
PROBE = r"""
import socket, sys, time
host, port, deadline = sys.argv[1], int(sys.argv[2]), time.monotonic() + float(sys.argv[3])
print("ready", flush=True)
while time.monotonic() < deadline:
    try:
        with socket.create_connection((host, port), timeout=0.05) as c:
            if c.recv(200):
                print(time.monotonic(), flush=True)
                sys.exit(0)
    except OSError:
        time.sleep(0.002)
sys.exit(1)
"""

# Echoes what it receives, connection after connection.
ECHO = r"""
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(4)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    while data := c.recv(100):
        c.sendall(data)
    c.close()
"""

# Opens a session and keeps it: "open" once echoed; then, at each line on
# stdin, sends again and says whether the echo came back within a second.
SESSION = r"""
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)
c.sendall(b"x")
c.recv(10)
print("open", flush=True)
c.settimeout(1)
for _ in sys.stdin:
    c.sendall(b"y")
    try:
        print("answered" if c.recv(10) else "closed", flush=True)
    except OSError:
        print("silent", flush=True)
"""

# udhcpc's event script: apply the lease as a guest's init would, and keep it.
UDHCPC_SCRIPT = """#!/bin/sh
[ "$1" = bound ] || [ "$1" = renew ] || exit 0
ip addr flush dev "$interface"
ip addr add "$ip/$mask" dev "$interface"
[ -n "$mtu" ] && ip link set "$interface" mtu "$mtu"
[ -n "$router" ] && ip route replace default via "$router" dev "$interface"
env > "$0.$interface.lease"
"""


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def ip_json(*args: str) -> list[dict]:
    result = ip("-j", *args, check=False)
    return json.loads(result.stdout) if result.returncode == 0 and result.stdout.strip() else []


def _free_external_subnet() -> ipaddress.IPv4Network:
    """A 100.64.<n>.0/24 (shared address space: routed nowhere) no interface here is on."""
    used = [ipaddress.ip_interface(f"{a['local']}/{a['prefixlen']}").network
            for link in ip_json("addr", "show") for a in link.get("addr_info", [])
            if a.get("family") == "inet"]
    for _ in range(100):
        net = ipaddress.IPv4Network(f"100.64.{secrets.randbelow(256)}.0/24")
        if not any(net.overlaps(u) for u in used):
            return net
    raise RuntimeError("no free 100.64.x.0/24")


class Lab:
    """The test's namespaces, bridges, processes and routers; close() removes them all."""

    def __init__(self):
        self.tag = secrets.token_hex(2)
        self.root = Path(tempfile.mkdtemp(prefix=f"router-test-{self.tag}-"))
        self.root.chmod(0o711)  # dnsmasq (as nobody) re-reads its hosts file under it
        self.namespaces: list[str] = []
        self.links: list[str] = []
        self.processes: list[subprocess.Popen] = []
        self.routers: list[Router] = []
        self.bridges: dict[str, str] = {}  # network id -> the bridge standing for l2.py's
        self.count = 0
        subnet = _free_external_subnet()
        self.external = External(cidr=str(subnet), gateway_ip=str(subnet[1]), bridge=f"tx{self.tag}")
        self.external_addresses = (str(a) for a in list(subnet.hosts())[9:])
        self.internet = self.namespace("inet")
        self.bridge(self.external.bridge)
        self.plug(self.internet, self.external.bridge, address=f"{subnet[1]}/{subnet.prefixlen}")
        self.serve(self.internet, "external", EXTERNAL_PORT)

    def close(self) -> None:
        for router in self.routers:
            try:
                router.remove_absent(set())
            except Exception as exc:  # keep removing the rest
                print(f"removing routers: {exc}", file=sys.stderr)
        for process in self.processes:
            process.kill()
            process.wait()
        for namespace in self.namespaces:
            ip("netns", "delete", namespace, check=False)
        for link in self.links:
            ip("link", "delete", link, check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def _name(self, kind: str) -> str:
        self.count += 1
        return f"{kind}{self.tag}{self.count}"

    def namespace(self, name: str) -> str:
        namespace = f"trt-{self.tag}-{name}"
        self.namespaces.append(namespace)
        ip("netns", "add", namespace)
        ip("-n", namespace, "link", "set", "lo", "up")
        return namespace

    def bridge(self, name: str = "") -> str:
        name = name or self._name("tb")
        self.links.append(name)
        ip("link", "add", name, "type", "bridge")
        ip("link", "set", name, "up")
        return name

    def plug(self, namespace: str, bridge: str, mac: str = "", address: str = "") -> None:
        """A veth from `bridge` into the namespace, named eth0 there."""
        veth = self._name("tv")
        self.links.append(veth)
        ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", namespace)
        if mac:
            ip("-n", namespace, "link", "set", "eth0", "address", mac)
        if address:
            ip("-n", namespace, "addr", "add", address, "dev", "eth0")
        ip("-n", namespace, "link", "set", "eth0", "up")
        ip("link", "set", veth, "master", bridge, "up")

    def python(self, namespace: str, code: str, *args: str) -> list[str]:
        return ["ip", "netns", "exec", namespace, sys.executable, "-c", code, *args]

    def serve(self, namespace: str, name: str, port: int) -> None:
        process = subprocess.Popen(self.python(namespace, SERVER, name, str(port)), stdout=subprocess.PIPE,
                                   text=True)
        self.processes.append(process)
        assert process.stdout.readline().strip() == "ready"

    def connect(self, namespace: str, host: str, port: int, timeout_s: float = 2.0) -> str:
        """What the server at host:port answers a connection from `namespace`,
        or "error ..." (the connection is bounded by timeout_s)."""
        return subprocess.run(self.python(namespace, CONNECT, host, str(port), str(timeout_s)),
                              capture_output=True, text=True, timeout=timeout_s + 10).stdout.strip()

    def router(self, **settings) -> Router:
        router = Router(self.root / f"router{len(self.routers)}", prefix=f"qrouter-t{self.tag}-",
                        network_bridge=lambda network: self.bridges[network.id], **settings)
        self.routers.append(router)
        return router

    def network(self, cidr: str = "10.0.0.0/24", ports: int = 1) -> Network:
        """A network with `ports` ports (10, 11, ... of its CIDR), its bridge made."""
        network_id = str(uuid.uuid4())
        self.bridges[network_id] = self.bridge()
        subnet = ipaddress.IPv4Network(cidr)
        return Network(id=network_id, project="p", vni=1000 + self.count, cidr=cidr,
                       gateway_ip=str(subnet[1]), mtu=1450, router_host="here",
                       snat_ip=next(self.external_addresses),
                       ports=tuple(self.port(subnet, i) for i in range(ports)))

    def port(self, subnet: ipaddress.IPv4Network, index: int) -> Port:
        self.count += 1
        mac = f"52:54:{self.tag[:2]}:{self.tag[2:]}:{self.count:02x}:{index:02x}"
        return Port(instance_id=f"guest-{index}", mac=mac, fixed_ip=str(subnet[10 + index]), vtep="192.0.2.1")

    def guest(self, network: Network, port: Port) -> str:
        """The port's guest: a namespace on the network's bridge, no address yet."""
        namespace = self.namespace(f"g{self.count}-{port.instance_id}")
        self.count += 1
        self.plug(namespace, self.bridges[network.id], mac=port.mac)
        return namespace

    def dhcp(self, namespace: str) -> tuple[dict[str, str], float]:
        """Take a lease in the guest with udhcpc (5 tries, 1 s apart: bounded
        at about 6 s); the lease's variables and how long it took."""
        script = self.root / f"udhcpc-{namespace}"
        script.write_text(UDHCPC_SCRIPT)
        script.chmod(0o755)
        started = time.monotonic()
        result = subprocess.run(["ip", "netns", "exec", namespace, "busybox", "udhcpc", "-i", "eth0", "-f",
                                 "-q", "-n", "-t", "5", "-T", "1", "-O", "mtu", "-s", str(script)],
                                capture_output=True, text=True, timeout=30)
        took = time.monotonic() - started
        assert result.returncode == 0, f"no lease: {result.stdout} {result.stderr}"
        lease = Path(f"{script}.eth0.lease").read_text()
        return dict(line.split("=", 1) for line in lease.splitlines() if "=" in line), took


@pytest.fixture
def lab():
    if os.geteuid() != 0:
        pytest.skip("namespaces, bridges and nftables need root")
    lab = Lab()
    try:
        yield lab
    finally:
        lab.close()


def attached(network: Network, *floating: str) -> Network:
    """The network with floating IPs attached to its first ports, in order."""
    ports = list(network.ports)
    for i, address in enumerate(floating):
        ports[i] = replace(ports[i], floating_ip=address)
    return replace(network, ports=tuple(ports))


def detached(network: Network) -> Network:
    return replace(network, ports=tuple(replace(p, floating_ip="") for p in network.ports))


def timed(call):
    started = time.monotonic()
    result = call()
    return result, time.monotonic() - started


def figure(name: str, value) -> None:
    print(f"\nFIGURE {name}: {value}")


# --- the kernel: DHCP, SNAT, floating IPs ------------------------------------------

def test_guest_gets_its_static_lease_and_reaches_outside_from_the_snat_address(lab):
    router = lab.router()
    network = lab.network()
    port = network.ports[0]
    guest = lab.guest(network, port)

    changes, first = timed(lambda: router.converge(network, lab.external))
    names = RouterNames.of(router.prefix, network.id)
    assert f"create namespace {names.namespace}" in changes
    assert f"start dnsmasq in {names.namespace}" in changes
    again, unchanged = timed(lambda: router.converge(network, lab.external))
    assert again == []
    assert router.present() == {network.id}
    figure("converge one router: first, unchanged (s)", f"{first:.3f}, {unchanged:.3f}")

    lease, took = lab.dhcp(guest)
    figure("DHCP lease in the guest (s)", f"{took:.3f}")
    assert (lease["ip"], lease["mask"], lease["router"], lease["mtu"]) == (
        port.fixed_ip, "24", "10.0.0.1", "1450")
    link = ip_json("-n", guest, "addr", "show", "dev", "eth0")[0]
    assert link["mtu"] == 1450
    addresses = [(a["local"], a["prefixlen"]) for a in link["addr_info"] if a["family"] == "inet"]
    assert addresses == [(port.fixed_ip, 24)]
    assert [r["gateway"] for r in ip_json("-n", guest, "route", "show", "default")] == ["10.0.0.1"]

    ping = subprocess.run(["ip", "netns", "exec", guest, "busybox", "ping", "-c", "1", "-W", "2", "10.0.0.1"],
                          capture_output=True, text=True, timeout=30)
    assert ping.returncode == 0, ping.stdout
    assert lab.connect(guest, lab.external.gateway_ip, EXTERNAL_PORT) == f"external {network.snat_ip}"


def test_floating_ip_is_one_to_one_nat_and_stops_answering_when_detached(lab):
    router = lab.router()
    network = lab.network()
    guest = lab.guest(network, network.ports[0])
    router.converge(network, lab.external)
    lab.dhcp(guest)
    lab.serve(guest, "guest-0", GUEST_PORT)
    floating = next(lab.external_addresses)
    assert lab.connect(lab.internet, floating, GUEST_PORT, timeout_s=0.5).startswith("error")

    changes = router.converge(attached(network, floating), lab.external)
    names = RouterNames.of(router.prefix, network.id)
    assert changes == [f"add address {floating}/32 to {names.outside}",
                       f"replace nft table {NFT_TABLE} in {names.namespace}"]
    # From outside, the floating IP is the guest; the guest's connections come from it.
    assert lab.connect(lab.internet, floating, GUEST_PORT) == f"guest-0 {lab.external.gateway_ip}"
    assert lab.connect(guest, lab.external.gateway_ip, EXTERNAL_PORT) == f"external {floating}"

    changes = router.converge(network, lab.external)
    assert changes == [f"remove address {floating}/32 from {names.outside}",
                       f"replace nft table {NFT_TABLE} in {names.namespace}",
                       f"flush conntrack of {floating}"]
    assert lab.connect(lab.internet, floating, GUEST_PORT, timeout_s=1).startswith("error")
    assert lab.connect(guest, lab.external.gateway_ip, EXTERNAL_PORT) == f"external {network.snat_ip}"


def test_detach_ends_the_sessions_open_through_the_floating_ip(lab):
    """Without the conntrack flush, a session opened before the detach would
    still be NATed to the guest (its packets still reach the router while the
    client's ARP cache holds the old address)."""
    router = lab.router()
    floating = next(lab.external_addresses)
    network = attached(lab.network(), floating)
    guest = lab.guest(network, network.ports[0])
    router.converge(network, lab.external)
    lab.dhcp(guest)
    process = subprocess.Popen(lab.python(guest, ECHO, str(GUEST_PORT)), stdout=subprocess.PIPE, text=True)
    lab.processes.append(process)
    assert process.stdout.readline().strip() == "ready"
    session = subprocess.Popen(lab.python(lab.internet, SESSION, floating, str(GUEST_PORT)),
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    lab.processes.append(session)
    assert session.stdout.readline().strip() == "open"
    session.stdin.write("again\n")
    session.stdin.flush()
    assert session.stdout.readline().strip() == "answered"

    assert f"flush conntrack of {floating}" in router.converge(detached(network), lab.external)
    session.stdin.write("again\n")
    session.stdin.flush()
    assert session.stdout.readline().strip() == "silent"


def test_floating_ip_attach_to_first_reply_from_outside(lab):
    """~20 attaches of a fresh floating IP: converge -> the first TCP answer
    through it, seen by a prober already knocking from the external namespace."""
    router = lab.router()
    network = lab.network()
    guest = lab.guest(network, network.ports[0])
    router.converge(network, lab.external)
    lab.dhcp(guest)
    lab.serve(guest, "guest-0", GUEST_PORT)
    latencies, converges = [], []
    for _ in range(20):
        floating = next(lab.external_addresses)
        # The prober gives up after 5 s: an attach answered in 0.05-0.1 s here (3 runs of 20).
        probe = subprocess.Popen(lab.python(lab.internet, PROBE, floating, str(GUEST_PORT), "5"),
                                 stdout=subprocess.PIPE, text=True)
        try:
            assert probe.stdout.readline().strip() == "ready"
            started = time.monotonic()
            router.converge(attached(network, floating), lab.external)
            converges.append(time.monotonic() - started)
            answered = probe.stdout.readline().strip()
            assert probe.wait(timeout=10) == 0, f"{floating} never answered"
            latencies.append(float(answered) - started)
        finally:
            probe.kill()
            probe.wait()
        router.converge(network, lab.external)
    latencies.sort()
    figure("floating IP attach -> first reply (s): median, p99, max",
           f"{statistics.median(latencies):.3f}, {latencies[int(0.99 * (len(latencies) - 1))]:.3f}, "
           f"{latencies[-1]:.3f} (converge median {statistics.median(converges):.3f})")
    assert statistics.median(latencies) < 1.0  # the target: effective within 1 s


def test_two_networks_with_the_same_cidr_side_by_side(lab):
    router = lab.router()
    one, two = lab.network("10.0.0.0/24"), lab.network("10.0.0.0/24")
    assert one.ports[0].fixed_ip == two.ports[0].fixed_ip  # the very same guest address
    guests = []
    for network in (one, two):
        router.converge(network, lab.external)
        guests.append(lab.guest(network, network.ports[0]))
    for guest, network in zip(guests, (one, two), strict=True):
        assert lab.dhcp(guest)[0]["ip"] == "10.0.0.10"
        assert lab.connect(guest, lab.external.gateway_ip, EXTERNAL_PORT) == f"external {network.snat_ip}"
    assert router.present() == {one.id, two.id}
    assert router.converge(one, lab.external) == [] and router.converge(two, lab.external) == []


# --- level-triggered: repair what drifted, nothing else --------------------------------

def dnsmasq_pids(lab: Lab) -> list[int]:
    """Every dnsmasq whose command line names this test's directory."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if proc.name.isdigit() and argv[0] == b"dnsmasq" and any(str(lab.root).encode() in a for a in argv):
            found.append(int(proc.name))
    return found


def test_converge_repairs_exactly_what_was_changed_by_hand(lab):
    router = lab.router()
    network = lab.network(ports=2)
    names = RouterNames.of(router.prefix, network.id)
    router.converge(network, lab.external)
    [pid] = dnsmasq_pids(lab)

    os.kill(pid, signal.SIGKILL)
    until(lambda: pid not in dnsmasq_pids(lab), 5, "dnsmasq killed")  # gone in milliseconds
    assert router.converge(network, lab.external) == [f"start dnsmasq in {names.namespace}"]
    [pid] = dnsmasq_pids(lab)

    ip("netns", "exec", names.namespace, "nft", "delete", "table", "ip", NFT_TABLE)
    assert router.converge(network, lab.external) == [f"replace nft table {NFT_TABLE} in {names.namespace}"]

    ip("netns", "exec", names.namespace, "sysctl", "-q", "-w", "net.ipv4.ip_forward=0")
    assert router.converge(network, lab.external) == [f"enable forwarding in {names.namespace}"]

    ip("-n", names.namespace, "route", "del", "default")
    ip("-n", names.namespace, "addr", "del", f"{network.snat_ip}/24", "dev", names.outside)
    assert router.converge(network, lab.external) == [f"add address {network.snat_ip}/24 to {names.outside}",
                                                      f"set default route via {lab.external.gateway_ip}"]

    # A new port: the hosts file is rewritten and dnsmasq reloads it (same process),
    # and the new guest gets its lease from it.
    subnet = ipaddress.IPv4Network(network.cidr)
    grown = replace(network, ports=(*network.ports, lab.port(subnet, 2)))
    assert router.converge(grown, lab.external) == [
        f"write DHCP hosts of {names.namespace} (3 ports)", f"reload dnsmasq in {names.namespace}"]
    assert dnsmasq_pids(lab) == [pid]
    guest = lab.guest(grown, grown.ports[2])
    assert lab.dhcp(guest)[0]["ip"] == grown.ports[2].fixed_ip
    assert router.converge(grown, lab.external) == []

    # The namespace deleted by hand while dnsmasq runs in it: the kernel keeps it
    # (and its veths) alive; converge replaces all of it and leaves one dnsmasq.
    ip("netns", "delete", names.namespace)
    changes = router.converge(grown, lab.external)
    assert f"create namespace {names.namespace}" in changes
    assert f"delete stray {names.inside_peer}" in changes
    assert f"stop dnsmasq {pid} of {names.namespace}" in changes
    assert len(dnsmasq_pids(lab)) == 1 and router.converge(grown, lab.external) == []
    assert lab.dhcp(guest)[0]["ip"] == grown.ports[2].fixed_ip

    # A new MTU: both ends of the inside leg, and dnsmasq restarted to offer it.
    [pid] = dnsmasq_pids(lab)
    assert router.converge(replace(grown, mtu=1400), lab.external) == [
        f"set mtu 1400 on {names.inside}", f"set mtu 1400 on {names.inside_peer}",
        f"stop dnsmasq {pid} of {names.namespace}", f"start dnsmasq in {names.namespace}"]
    assert lab.dhcp(guest)[0]["mtu"] == "1400"


def ours(lab: Lab, router: Router) -> dict[str, list]:
    """What of this test's routers the host has: namespaces, veths, dnsmasqs, state."""
    links = {link["ifname"] for link in ip_json("link", "show")}
    namespaces = [n["name"] for n in ip_json("netns", "list")]
    return {"namespaces": sorted(n for n in namespaces if n.startswith(router.prefix)),
            "veths": sorted(name for name in links if name[:3] in ("tr-", "tg-")
                            and any(name[3:] == RouterNames.of("", i).inside[3:] for i in lab.bridges)),
            "dnsmasq": dnsmasq_pids(lab),
            "state": sorted(p.name for p in router.state_dir.iterdir())}


def test_remove_absent_removes_everything_of_unwanted_routers_and_nothing_else(lab):
    router = lab.router()
    keep, drop = lab.network(), lab.network()
    for network in (keep, drop):
        router.converge(network, lab.external)
    assert len(ours(lab, router)["namespaces"]) == 2 and len(ours(lab, router)["veths"]) == 4

    drop_ns = RouterNames.of(router.prefix, drop.id).namespace
    assert router.remove_absent({keep.id}) == [f"remove router {drop_ns}"]
    left = ours(lab, router)
    assert left["namespaces"] == [RouterNames.of(router.prefix, keep.id).namespace]
    assert len(left["veths"]) == 2 and len(left["dnsmasq"]) == 1 and left["state"] == [keep.id]
    assert router.converge(keep, lab.external) == []  # the one kept is untouched
    assert router.remove_absent({keep.id}) == []

    assert len(router.remove_absent(set())) == 1
    # No namespace left, so no NAT table of ours either (it lived in the namespace).
    assert ours(lab, router) == {"namespaces": [], "veths": [], "dnsmasq": [], "state": []}
    assert router.present() == set()


def test_bad_input_is_refused_and_changes_nothing(lab):
    router = lab.router()
    network = lab.network()
    outside = "203.0.113.9"
    for bad, message in [
        (replace(network, gateway_ip="10.0.1.1"), "is not a host address of 10.0.0.0/24"),
        (replace(network, cidr="10.0.0.0/33"), "not an IPv4 address or network"),
        (replace(network, snat_ip=outside), f"SNAT address {outside} is not a host address"),
        (attached(network, outside), f"floating IP {outside} is not a host address"),
        (attached(network, network.snat_ip), "not all distinct"),
        (replace(network, mtu=20), "MTU 20"),
        (replace(network, ports=(replace(network.ports[0], mac="01:00:5e:00:00:01"),)), "unicast MAC"),
    ]:
        with pytest.raises(NetworkError, match=message):
            router.converge(bad, lab.external)
    with pytest.raises(NetworkError, match="the network id must be"):
        router.converge(replace(network, id="../etc"), lab.external)
    with pytest.raises(NetworkError, match="interface name"):
        router.converge(network, replace(lab.external, bridge="a-name-too-long-for-linux"))
    with pytest.raises(NetworkError, match="the external bridge lo is not a bridge"):
        router.converge(network, replace(lab.external, bridge="lo"))
    lab.bridges[network.id] = "tnone" + lab.tag
    with pytest.raises(NetworkError, match=f"its bridge tnone{lab.tag} does not exist"):
        router.converge(network, lab.external)
    assert ours(lab, router) == {"namespaces": [], "veths": [], "dnsmasq": [], "state": []}


def test_host_gateway_puts_the_external_gateway_on_the_host_bridge(lab):
    """A single host: the external bridge (made by the router) carries the
    gateway address, and this machine reaches a guest at its floating IP."""
    router = lab.router(host_gateway=True)
    subnet = _free_external_subnet()
    external = External(cidr=str(subnet), gateway_ip=str(subnet[1]), bridge=f"th{lab.tag}")
    lab.links.append(external.bridge)
    network = replace(lab.network(), snat_ip=str(subnet[2]))
    network = attached(network, str(subnet[3]))
    guest = lab.guest(network, network.ports[0])
    changes = router.converge(network, external)
    assert changes[:3] == [f"create external bridge {external.bridge}", f"set {external.bridge} up",
                           f"add address {subnet[1]}/24 to {external.bridge}"]
    lab.dhcp(guest)
    lab.serve(guest, "guest-0", GUEST_PORT)
    answer = subprocess.run([sys.executable, "-c", CONNECT, str(subnet[3]), str(GUEST_PORT), "2"],
                            capture_output=True, text=True, timeout=30).stdout.strip()
    assert answer == f"guest-0 {subnet[1]}"


# --- the desired state, without the kernel ---------------------------------------------

def test_nft_table_puts_floating_ips_before_the_network_snat():
    network = Network(id="abc", project="p", vni=1, cidr="10.0.0.0/24", gateway_ip="10.0.0.1", mtu=1450,
                      snat_ip="100.64.0.10",
                      ports=(Port("b", "52:54:00:00:00:02", "10.0.0.11", "", "100.64.0.20"),
                             Port("a", "52:54:00:00:00:01", "10.0.0.10", "", "")))
    text = nft_table(RouterNames.of("qrouter-", "abc"), network)
    assert 'iifname "qg-abc" ip daddr 100.64.0.20 dnat to 10.0.0.11' in text
    snat = [line.strip() for line in text.splitlines() if "snat to" in line]
    assert snat == ['oifname "qg-abc" ip saddr 10.0.0.11 snat to 100.64.0.20',
                    'oifname "qg-abc" ip saddr 10.0.0.0/24 snat to 100.64.0.10']
    assert dhcp_hosts(network) == "52:54:00:00:00:01,10.0.0.10\n52:54:00:00:00:02,10.0.0.11\n"
    check(network, External("100.64.0.0/24", "100.64.0.1", "brex"))


def test_names_fit_the_kernel_limit():
    names = RouterNames.of("qrouter-", "0b6f3a3e-4c5d-4e2f-9a71-1c2d3e4f5a6b")
    assert names.namespace == "qrouter-0b6f3a3e-4c5d-4e2f-9a71-1c2d3e4f5a6b"
    assert (names.inside, names.inside_peer, names.outside, names.outside_peer) == (
        "qr-0b6f3a3e4c5", "tr-0b6f3a3e4c5", "qg-0b6f3a3e4c5", "tg-0b6f3a3e4c5")


def test_a_state_dir_dnsmasq_could_not_reach_is_refused(tmp_path):
    """pytest's tmp_path is private (0700), as the agent's state_dir is (0710)."""
    with pytest.raises(NetworkError, match="not searchable by others.*under /run"):
        Router(tmp_path / "routers")
