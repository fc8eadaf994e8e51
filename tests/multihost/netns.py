"""A private network of "hosts" on this machine: one network namespace per host,
each joined by a veth pair to one bridge in the root namespace.

    root namespace: bridge scbr<tag>, 10.250.<n>.1/24 (the control plane listens here)
    namespace sc-<tag>-<i>: eth0 = 10.250.<n>.<i+2>/24, lo; no default route

So each host has its own address and reaches nothing but the bridge's subnet;
cutting a host's link (`cut`) is `ip link set <its root-side veth> down`.

With an external network (`add_external`, the tenant network tests), one more
namespace stands for the internet: a bridge in it holds the external network's
gateway address, and each host's external bridge (the one its routers' qg-
legs plug into) is joined to it by a veth:

    namespace sc-<tag>-ext: bridge ext0 = <external gateway>/<prefix>, lo
      ├─ veth h<i> ═══ uplink in sc-<tag>-<i>, a port of its bridge <host_bridge>
      ...
Nothing in it routes anywhere else: it reaches the floating IPs and SNAT
addresses on its subnet, and that is all.

Everything is made by, and removed by, this module (`remove` is idempotent and
runs even when `create` stopped halfway).
"""

from __future__ import annotations

import ipaddress
import secrets
import subprocess
from dataclasses import dataclass, field


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check,
                          timeout=30)


def _used_networks() -> list[ipaddress.IPv4Network]:
    found = []
    for line in ip("-4", "-o", "addr", "show").stdout.splitlines():
        parts = line.split()
        if "inet" in parts:
            found.append(ipaddress.ip_interface(parts[parts.index("inet") + 1]).network)
    return found


def _free_subnet() -> ipaddress.IPv4Network:
    """A 10.250.<n>.0/24 no interface of this machine is on."""
    used = _used_networks()
    for _ in range(100):
        net = ipaddress.ip_network(f"10.250.{secrets.randbelow(256)}.0/24")
        if not any(net.overlaps(u) for u in used):
            return net
    raise RuntimeError("no free 10.250.x.0/24")


@dataclass
class HostNet:
    namespace: str
    address: str    # the namespace's own address (its eth0)
    veth: str       # the root-namespace end of its veth pair


@dataclass
class NetnsLab:
    count: int
    tag: str = field(default_factory=lambda: secrets.token_hex(2))
    subnet: ipaddress.IPv4Network = field(default_factory=_free_subnet)
    hosts: list[HostNet] = field(default_factory=list)

    @property
    def bridge(self) -> str:
        return f"scbr{self.tag}"

    @property
    def gateway(self) -> str:
        """The root namespace's address on the bridge: where the hosts reach it."""
        return str(self.subnet.network_address + 1)

    def create(self) -> NetnsLab:
        prefix = self.subnet.prefixlen
        ip("link", "add", self.bridge, "type", "bridge", "forward_delay", "0")
        ip("addr", "add", f"{self.gateway}/{prefix}", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        for i in range(self.count):
            host = HostNet(namespace=f"sc-{self.tag}-{i}",
                           address=str(self.subnet.network_address + 2 + i),
                           veth=f"scv{self.tag}{i}")
            self.hosts.append(host)
            peer = f"scp{self.tag}{i}"
            ip("netns", "add", host.namespace)
            ip("link", "add", host.veth, "type", "veth", "peer", "name", peer)
            ip("link", "set", peer, "netns", host.namespace)
            ns = ("-n", host.namespace)
            ip(*ns, "link", "set", peer, "name", "eth0")
            ip(*ns, "addr", "add", f"{host.address}/{prefix}", "dev", "eth0")
            ip(*ns, "link", "set", "eth0", "up")
            ip(*ns, "link", "set", "lo", "up")
            ip("link", "set", host.veth, "master", self.bridge, "up")
        return self

    @property
    def external_namespace(self) -> str:
        return f"sc-{self.tag}-ext"

    def add_external(self, cidr: str, host_bridge: str) -> str:
        """The external namespace, its bridge with the gateway (the subnet's first
        address) and a link to `host_bridge` (made here if missing) in every host;
        returns the gateway address."""
        net = ipaddress.ip_network(cidr)
        gateway = str(net.network_address + 1)
        ext = ("-n", self.external_namespace)
        ip("netns", "add", self.external_namespace)
        ip(*ext, "link", "set", "lo", "up")
        ip(*ext, "link", "add", "ext0", "type", "bridge", "forward_delay", "0")
        ip(*ext, "addr", "add", f"{gateway}/{net.prefixlen}", "dev", "ext0")
        ip(*ext, "link", "set", "ext0", "up")
        for i, host in enumerate(self.hosts):
            ns = ("-n", host.namespace)
            ip(*ns, "link", "add", host_bridge, "type", "bridge", "forward_delay", "0")
            ip(*ns, "link", "set", host_bridge, "up")
            ip(*ns, "link", "add", "uplink", "type", "veth", "peer", "name", f"h{i}",
               "netns", self.external_namespace)
            ip(*ns, "link", "set", "uplink", "master", host_bridge, "up")
            ip(*ext, "link", "set", f"h{i}", "master", "ext0", "up")
        return gateway

    def cut(self, host: HostNet) -> None:
        ip("link", "set", host.veth, "down")

    def restore(self, host: HostNet) -> None:
        ip("link", "set", host.veth, "up")

    def remove(self) -> None:
        """Delete the namespaces (their veth pairs go with them) and the bridge.
        Stop the processes in the namespaces first, or the kernel keeps them."""
        for i in range(self.count):
            ip("netns", "delete", f"sc-{self.tag}-{i}", check=False)
            ip("link", "delete", f"scv{self.tag}{i}", check=False)
        ip("link", "delete", self.bridge, check=False)
        ip("netns", "delete", self.external_namespace, check=False)
