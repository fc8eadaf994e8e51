"""A lab for the tenant network tests: "hosts" as network namespaces joined by a
veth underlay, each with its own tunnel address and its own TenantNetworking (or
whatever the test builds around it: a NetworkSync), and "guests" as namespaces
with a veth on a network's bridge. No libvirt, no guests to boot.

Each host's object lives in a child process that entered the host's namespace
(setns) and serves calls over a pipe (Host below): the code under test runs
exactly as an agent in that namespace runs it, its `ip` and `bridge` commands
included, and keeps its state between calls as an agent does. (`ip netns exec NS
python` would start a Python per call; Python 3.11 has no os.setns, hence ctypes.)
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import multiprocessing
import re
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

from compute_agent.tenant.l2 import bridge_name, vxlan_name
from compute_agent.tenant.model import HostNetworks, Network, Port
from compute_agent.tenant.networking import TenantNetworking

CLONE_NEWNET = 0x40000000
VTEP = {"h1": "192.0.2.1", "h2": "192.0.2.2"}  # TEST-NET-1: routed nowhere
MTU = 1450


def sh(*argv: str, check: bool = True) -> str:
    done = subprocess.run(argv, capture_output=True, text=True)
    if check and done.returncode:
        raise AssertionError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done.stdout


def _serve(netns: str, conn, build: Callable[[], object]) -> None:
    """The child: enter the host's namespace, build the object, then run its
    methods as the parent asks."""
    libc = ctypes.CDLL(None, use_errno=True)
    with open(f"/run/netns/{netns}") as f:
        if libc.setns(f.fileno(), CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {netns}")
    served = build()
    while (call := conn.recv()) is not None:
        method, params = call
        try:
            conn.send((True, getattr(served, method)(*params)))
        except Exception as exc:  # sent back, raised in the test
            try:
                conn.send((False, exc))
            except Exception:  # not picklable (a gRPC error): its text then
                conn.send((False, RuntimeError(f"{type(exc).__name__}: {exc}")))


class Host:
    """An agent's TenantNetworking (or what `build` makes around one) running
    inside a host namespace; its methods are called as host.method(...)."""

    def __init__(self, netns: str, vtep: str, name: str, build: Callable[[], object]):
        self.netns, self.vtep, self.name = netns, vtep, name
        # fork: `build` runs in the child as it is, no pickling.
        self.conn, child = multiprocessing.get_context("fork").Pipe()
        self.process = multiprocessing.get_context("fork").Process(
            target=_serve, args=(netns, child, build), daemon=True)
        self.process.start()

    def __getattr__(self, method):
        def call(*params):
            self.conn.send((method, params))
            if not self.conn.poll(30):  # a converge of 50 networks takes 1.6 s here
                raise AssertionError(f"{self.name}: no answer to {method} in 30 s")
            ok, value = self.conn.recv()
            if not ok:
                raise value
            return value
        return call

    def close(self) -> None:
        if self.process.is_alive():
            self.conn.send(None)
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()

    # what the kernel has, read from the test
    def links(self) -> set[str]:
        return {link["ifname"] for link in json.loads(sh("ip", "-n", self.netns, "-j", "link", "show"))
                if re.fullmatch(r"(brq|vxlan)-\d+", link["ifname"])}

    def fdb(self, vni: int) -> set[tuple[str, str]]:
        return {(e["mac"], e["dst"])
                for e in json.loads(sh("bridge", "-n", self.netns, "-j", "fdb", "show",
                                       "dev", vxlan_name(vni), check=False) or "[]")
                if "dst" in e}


class Topology:
    """Namespaces named with a random tag, all deleted at the end (their devices
    go with them): nothing of the test outlives it, on failure too."""

    def __init__(self, tmp_path: Path):
        self.tag = uuid.uuid4().hex[:6]
        self.namespaces: list[str] = []
        self.hosts: dict[str, Host] = {}
        self.tmp_path = tmp_path

    def netns(self, name: str) -> str:
        ns = f"l2t-{self.tag}-{name}"
        sh("ip", "netns", "add", ns)
        self.namespaces.append(ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        return ns

    def underlay(self, build: Callable[[str, str, Path], object] = TenantNetworking) -> None:
        """h1 and h2, joined by a veth (MTU 1500) with their tunnel addresses;
        build(tunnel address, host name, state directory) is what each runs."""
        h1, h2 = self.netns("h1"), self.netns("h2")
        sh("ip", "-n", h1, "link", "add", "ul0", "type", "veth", "peer", "name", "ul0", "netns", h2)
        for name, ns in (("h1", h1), ("h2", h2)):
            sh("ip", "-n", ns, "addr", "add", f"{VTEP[name]}/24", "dev", "ul0")
            sh("ip", "-n", ns, "link", "set", "ul0", "up")
            self.hosts[name] = Host(ns, VTEP[name], name,
                                    lambda v=VTEP[name], n=name: build(v, n, self.tmp_path / n))

    def guest(self, name: str, host: str, network: Network, port: Port, tap: str = "") -> str:
        """A namespace with eth0 (the port's MAC and address, the network's MTU),
        its peer (named `tap`, or gv<name>) on the network's bridge on `host`: as
        a guest's tap would be. No IPv6 on either end, so an idle guest sends
        nothing at all."""
        ns, host_ns = self.netns(name), self.hosts[host].netns
        veth = tap or f"gv{name}"
        sh("ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", veth, "netns", host_ns)
        prefix = network.cidr.split("/")[1]
        sh("ip", "-n", ns, "link", "set", "eth0", "address", port.mac, "mtu", str(MTU),
           "addrgenmode", "none")
        sh("ip", "-n", ns, "addr", "add", f"{port.fixed_ip}/{prefix}", "dev", "eth0")
        sh("ip", "-n", host_ns, "link", "set", veth, "mtu", str(MTU), "addrgenmode", "none",
           "master", bridge_name(network.vni))
        sh("ip", "-n", host_ns, "link", "set", veth, "up")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        return ns

    def close(self) -> None:
        for host in self.hosts.values():
            host.close()
        for ns in self.namespaces:
            sh("ip", "netns", "del", ns, check=False)


@contextlib.contextmanager
def lab(tmp_path: Path, build: Callable[[str, str, Path], object] = TenantNetworking):
    """Two hosts on an underlay; everything deleted at the end, on failure too."""
    t = Topology(tmp_path)
    try:
        t.underlay(build)
        yield t
    finally:
        t.close()
    left = [ns for ns in sh("ip", "netns", "list").split() if ns.startswith(f"l2t-{t.tag}")]
    assert left == []


def network(vni: int, *ports: Port, cidr: str = "10.0.0.0/24", project: str = "p1") -> Network:
    return Network(id=f"net-{vni}", project=project, vni=vni, cidr=cidr, gateway_ip="10.0.0.1",
                   mtu=MTU, ports=ports, vteps=tuple(VTEP.values()))


def port(n: int, host: str, vni: int = 0) -> Port:
    return Port(instance_id=f"i-{vni}-{n}", mac=f"52:54:00:{vni % 256:02x}:00:{n:02x}",
                fixed_ip=f"10.0.0.{n}", vtep=VTEP[host])


def ping(ns: str, address: str, *options: str, count: int = 1, wait_s: float = 1) -> bool:
    # Replies here take well under a millisecond (median 0.05 ms on one host,
    # 0.09 ms across hosts): wait_s only bounds a reply that never comes.
    return subprocess.run(["ip", "netns", "exec", ns, "ping", "-n", "-q", "-c", str(count),
                           "-i", "0.2", "-W", str(wait_s), *options, address],
                          capture_output=True).returncode == 0


# Prints the source MAC of every frame eth0 receives, until its stdin closes.
SNIFF = """
import select, socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))  # ETH_P_ALL
s.bind(("eth0", 0))
print("ready", flush=True)
while sys.stdin not in select.select([s, sys.stdin], [], [])[0]:
    frame, address = s.recvfrom(65535)
    if address[2] != socket.PACKET_OUTGOING:
        print(frame[6:12].hex(":"), flush=True)
"""


class Sniffer:
    """What a guest receives, by source MAC: a listener on its eth0."""

    def __init__(self, ns: str):
        self.process = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", SNIFF],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None and self.process.stdout.readline() == "ready\n"

    def stop(self) -> set[str]:
        out, _ = self.process.communicate("", timeout=5)  # stdin closed: it stops at once
        return set(out.split())


def converge_both(topo: Topology, *networks: Network) -> dict[str, list[str]]:
    return {name: host.converge(HostNetworks(networks=networks))
            for name, host in topo.hosts.items()}


