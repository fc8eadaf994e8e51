"""A tenant network's router on the host that runs it (Network.router_host): its
gateway, DHCP, SNAT and floating IPs. Neutron's legacy L3 agent and its DHCP
agent are the model, on the kernel primitives this machine has.

One network namespace per router, named `<prefix><network id>` ("qrouter-" by
default), holds everything of it:

    network's bridge (l2.py) ── tr-<id> ═veth═ qr-<id>  gateway_ip/prefix, MTU of the network
                                               [router namespace]  forwarding on,
                                               nftables table "qrouter", dnsmasq on qr-<id>
    external bridge ─────────── tg-<id> ═veth═ qg-<id>  snat_ip/prefix, each floating IP/32,
                                                         default route via External.gateway_ip

(`<id>`: the network id's first 11 letters and digits: interface names are at
most 15 characters; the namespace name carries the whole id.)

- Why a namespace per router: two projects may both use 10.0.0.0/24. Each
  router's addresses, routes, NAT rules and conntrack table live in its own
  namespace, so overlapping ranges never meet on the host.
- Why one router host per network (not distributed, as Neutron's DVR): one place
  for a network's SNAT state and floating IPs, no per-host external address,
  and the guests' traffic to the router crosses VXLAN like any other traffic on
  the network. The control plane picks the host (router_host).
- NAT: one nftables table in the namespace, always replaced whole in one
  transaction (`nft -f` with "table; delete table; table {...}", as Proxmox's
  firewall does): the network's CIDR leaving by qg- is SNATed to snat_ip; each
  floating IP is 1:1 NAT (DNAT floating -> fixed for what arrives on qg-, SNAT
  fixed -> floating for what leaves by it, listed before the network's SNAT).
  The table is written as `nft list table` prints it, so what the kernel has
  compares with what it must have line by line (a plain text, easier to read
  in a log than `nft -j`'s JSON). As Neutron does, a new external address is
  announced by gratuitous ARP (neighbours already asking for it learn it at
  once, not at their next ARP retry up to a second later), and a detached
  floating IP's conntrack entries are deleted (an open session through it
  stops at once). Hairpin (a guest reaching a floating IP of its own network)
  is not handled.
- DHCP: dnsmasq in the namespace, bound to qr- only, no DNS (port 0), serving
  only static leases (`--dhcp-range=<net>,static`) from a hosts file of
  MAC,IP per port, with the router option (gateway_ip) and the MTU option (26:
  VXLAN's overhead). When ports are only added, the hosts file is rewritten and
  dnsmasq gets SIGHUP (it re-reads --dhcp-hostsfile) instead of a restart; it is
  restarted when a lease goes (it would keep the address from the next MAC
  given it: see _dnsmasq), when its command line must change, and started
  when it died.
  dnsmasq drops its privileges to "nobody" and reads the hosts file as nobody
  (at start too), so the router's state directory (hosts and pid files) must
  be reachable by others: not under the agent's private state_dir (0710), but
  under /run (run_dir(): ROUTER_RUN_DIR/<host>[@<tag>]): runtime state, gone at a reboot with the
  namespaces it describes. Router refuses a directory dnsmasq could not reach.
- External bridge (External.bridge, in the host's namespace): made if missing.
  With `host_gateway` (a single host, `make up`) it carries External.gateway_ip,
  so this machine reaches floating IPs the way a user's laptop reaches a public
  address; with several hosts an upstream router holds it instead.

Level-triggered (DESIGN.md convention 14): converge() reads what the kernel has
(ip -j in the namespace and on the host, `nft list table`, the processes in the
namespace and the hosts file), changes only what differs from the desired
state, and returns one line per change: nothing when all was right. A router
left half made (an agent killed midway) is completed by the next converge.
remove_absent() deletes everything of the routers no longer wanted (dnsmasq
first, then the veths, the namespace with its NAT table, the state files) and
nothing else: routers are found by the namespace prefix and the state files.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from compute_agent.errors import NetworkError
from compute_agent.tenant.model import External, Network

log = logging.getLogger(__name__)

NAMESPACE_PREFIX = "qrouter-"
ROUTER_RUN_DIR = Path("/run/cloud-agent-routers")  # the agent's routers' files: /<host name>/<network id>/
NFT_TABLE = "qrouter"           # the one table of ours in each router namespace
LEASE_TIME = "86400s"           # DHCP lease time (Neutron's default: a day)
MAC = re.compile(r"[0-9a-f][02468ace](:[0-9a-f]{2}){5}")
IFNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}")
NETWORK_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,63}")
COMMAND_TIMEOUT_S = 30          # any one ip/nft/dnsmasq command (they take milliseconds)
DNSMASQ_STOP_TIMEOUT_S = 2.0    # SIGTERM to gone: measured at most 11 ms; then SIGKILL


def run_dir(host_name: str, tag: str = "") -> Path:
    """The directory of an agent's routers' files: per host name and device tag
    (two clouds on one machine may name their hosts alike; "@" is in no host name)."""
    return ROUTER_RUN_DIR / (f"{host_name}@{tag}" if tag else host_name)


def short_id(network_id: str) -> str:
    """The part of a network id that names its interfaces (11 letters and digits)."""
    return re.sub(r"[^0-9a-z]", "", network_id.lower())[:11]


@dataclass(frozen=True)
class RouterNames:
    """Every kernel name of one network's router."""

    namespace: str
    inside: str        # qr-: in the namespace, the network's gateway
    inside_peer: str   # tr-: on the host, a port of the network's bridge
    outside: str       # qg-: in the namespace, on the external network
    outside_peer: str  # tg-: on the host, a port of the external bridge

    @classmethod
    def of(cls, prefix: str, network_id: str) -> RouterNames:
        short = short_id(network_id)
        return cls(namespace=prefix + network_id, inside=f"qr-{short}", inside_peer=f"tr-{short}",
                   outside=f"qg-{short}", outside_peer=f"tg-{short}")


# --- running commands ----------------------------------------------------------

def _run(argv: list[str], input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    try:
        result = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetworkError(f"{' '.join(argv)}: {exc}") from exc
    if check and result.returncode != 0:
        raise NetworkError(f"{' '.join(argv)}: {result.stderr.strip() or f'exit {result.returncode}'}")
    return result


def _ip(*args: str, namespace: str = "", check: bool = True) -> subprocess.CompletedProcess:
    return _run(["ip", *(("-n", namespace) if namespace else ()), *args], check=check)


def _ip_json(*args: str, namespace: str = "") -> list[dict]:
    """`ip -j ...`'s answer; [] when the device (or namespace) does not exist."""
    result = _ip("-j", *args, namespace=namespace, check=False)
    if result.returncode != 0 or not result.stdout.strip():
        return []
    return json.loads(result.stdout)


def _in_namespace(namespace: str, *argv: str, input: str | None = None,
                  check: bool = True) -> subprocess.CompletedProcess:
    return _run(["ip", "netns", "exec", namespace, *argv], input=input, check=check)


def _namespaces() -> set[str]:
    return {entry["name"] for entry in _ip_json("netns", "list")}


def _cmdline(pid: int) -> list[str]:
    """A live process's argv; [] for one that is gone or a zombie (a daemon
    whose parent is gone may never be reaped here: it must count as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
            return []
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except (OSError, IndexError):
        return []


def _stop(pid: int) -> None:
    """SIGTERM, then SIGKILL if it lingers."""
    try:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + DNSMASQ_STOP_TIMEOUT_S
        while _cmdline(pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        if _cmdline(pid):
            os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# --- the desired state ---------------------------------------------------------

def check(network: Network, external: External) -> None:
    """NetworkError, saying what is wrong, for a router that cannot be made as
    asked; called before anything is changed."""
    def bad(what: str) -> NetworkError:
        return NetworkError(f"router of network {network.id!r}: {what}")

    if not NETWORK_ID.fullmatch(network.id):
        raise bad("the network id must be letters, digits and dashes (it names a namespace and a directory)")
    try:
        cidr = ipaddress.IPv4Network(network.cidr)
        ext = ipaddress.IPv4Network(external.cidr)
        gateway = ipaddress.IPv4Address(network.gateway_ip)
        snat = ipaddress.IPv4Address(network.snat_ip)
        ext_gateway = ipaddress.IPv4Address(external.gateway_ip)
        fixed = [ipaddress.IPv4Address(p.fixed_ip) for p in network.ports]
        floating = [ipaddress.IPv4Address(p.floating_ip) for p in network.ports if p.floating_ip]
    except ValueError as exc:
        raise bad(f"not an IPv4 address or network: {exc}") from exc
    if gateway not in cidr or gateway in (cidr.network_address, cidr.broadcast_address):
        raise bad(f"gateway {gateway} is not a host address of {cidr}")
    if not 68 <= network.mtu <= 65535:
        raise bad(f"MTU {network.mtu} is not between 68 and 65535")
    if not IFNAME.fullmatch(external.bridge):
        raise bad(f"external bridge name {external.bridge!r} is not an interface name (15 at most)")
    for address, what in [(ext_gateway, "external gateway"), (snat, "SNAT address"),
                          *((f, "floating IP") for f in floating)]:
        if address not in ext or address in (ext.network_address, ext.broadcast_address):
            raise bad(f"{what} {address} is not a host address of the external network {ext}")
    for port, address in zip(network.ports, fixed, strict=True):
        if address not in cidr or address == gateway:
            raise bad(f"fixed IP {address} of {port.instance_id} is not a guest address of {cidr}")
        if not MAC.fullmatch(port.mac):
            raise bad(f"MAC {port.mac!r} of {port.instance_id} is not a lower-case unicast MAC")
    external_used = [ext_gateway, snat, *floating]
    if len(set(external_used)) != len(external_used):
        raise bad("the external gateway, the SNAT address and the floating IPs are not all distinct")
    if len(set(fixed)) != len(fixed) or len({p.mac for p in network.ports}) != len(network.ports):
        raise bad("two ports share a fixed IP or a MAC")


def nft_table(names: RouterNames, network: Network) -> str:
    """The router's NAT table, written as `nft list table` prints it, so that
    what the kernel has compares line by line with what it must have."""
    floating = sorted((p for p in network.ports if p.floating_ip),
                      key=lambda p: ipaddress.IPv4Address(p.floating_ip))
    out = f'oifname "{names.outside}"'
    return "\n".join([
        f"table ip {NFT_TABLE} {{",
        "\tchain prerouting {",
        "\t\ttype nat hook prerouting priority dstnat; policy accept;",
        *(f'\t\tiifname "{names.outside}" ip daddr {p.floating_ip} dnat to {p.fixed_ip}' for p in floating),
        "\t}",
        "",
        "\tchain postrouting {",
        "\t\ttype nat hook postrouting priority srcnat; policy accept;",
        *(f"\t\t{out} ip saddr {p.fixed_ip} snat to {p.floating_ip}" for p in floating),
        f"\t\t{out} ip saddr {ipaddress.IPv4Network(network.cidr)} snat to {network.snat_ip}",
        "\t}",
        "}",
    ]) + "\n"


def _same_ruleset(listed: str, desired: str) -> bool:
    def lines(text: str) -> list[str]:
        return [line.strip() for line in text.splitlines() if line.strip()]
    return lines(listed) == lines(desired)


def dhcp_hosts(network: Network) -> str:
    """dnsmasq's --dhcp-hostsfile: one static lease per port."""
    ports = sorted(network.ports, key=lambda p: ipaddress.IPv4Address(p.fixed_ip))
    return "".join(f"{p.mac},{p.fixed_ip}\n" for p in ports)


# --- the router ----------------------------------------------------------------

class Router:
    """The routers of the tenant networks this host runs (see the module's
    docstring). `state_dir`: their files (a directory per network: the DHCP
    hosts file, dnsmasq's pid file), reachable by others. `prefix` names their
    namespaces: two agents on one machine (the multi-host tests) give different
    ones, neither a prefix of the other, since namespace names are machine-wide.
    `host_gateway`: whether the external bridge gets External.gateway_ip.
    `network_bridge`: the name of a network's bridge (default: l2.py's, by VNI)."""

    def __init__(self, state_dir: Path, *, prefix: str = NAMESPACE_PREFIX, host_gateway: bool = False,
                 network_bridge: Callable[[Network], str] | None = None):
        self.state_dir = Path(state_dir)
        self.prefix = prefix
        self.host_gateway = host_gateway
        self._network_bridge = network_bridge
        self._lock = threading.Lock()  # one convergence at a time (sync loop, RPC nudges)
        self._announcers: list[subprocess.Popen] = []  # gratuitous ARPs still lingering
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.state_dir.chmod(0o711)  # others may pass, not list
        self._check_reachable()

    def _check_reachable(self) -> None:
        """NetworkError unless "nobody" can reach files in state_dir: dnsmasq
        reads its hosts file there after dropping its privileges."""
        for directory in (self.state_dir.resolve(), *self.state_dir.resolve().parents):
            if not directory.stat().st_mode & 0o001:
                raise NetworkError(f"{directory} is not searchable by others: dnsmasq (as nobody) could not "
                                   f"read its hosts file under {self.state_dir}; give the router a directory "
                                   f"under /run")

    def names(self, network_id: str) -> RouterNames:
        return RouterNames.of(self.prefix, network_id)

    def network_bridge(self, network: Network) -> str:
        if self._network_bridge is not None:
            return self._network_bridge(network)
        from compute_agent.tenant import l2  # the L2 half names the network's bridge

        return l2.bridge_name(network.vni)

    def _dir(self, network_id: str) -> Path:
        return self.state_dir / network_id

    # --- the contract networking.py calls ---------------------------------------

    def present(self) -> set[str]:
        """The ids of the networks with a router (namespace) here."""
        return {name[len(self.prefix):] for name in _namespaces() if name.startswith(self.prefix)}

    def converge(self, network: Network, external: External) -> list[str]:
        """Make this network's router as desired; one line per change made
        (nothing when all was right). NetworkError for a router that cannot be
        made as asked (nothing changed then) or a command that failed (the next
        converge completes what this one left)."""
        check(network, external)
        self._check_reachable()  # a parent made private since would stop DHCP silently
        inside_bridge = self.network_bridge(network)
        for bridge, what in [(inside_bridge, "its bridge"), (external.bridge, "the external bridge")]:
            found = _ip_json("-d", "link", "show", "dev", bridge)
            if not found and bridge == inside_bridge:
                raise NetworkError(f"router of network {network.id!r}: {what} {bridge} does not exist")
            if found and found[0].get("linkinfo", {}).get("info_kind") != "bridge":
                raise NetworkError(f"router of network {network.id!r}: {what} {bridge} is not a bridge")
        with self._lock:
            names = self.names(network.id)
            changes: list[str] = []
            changes += self._external_bridge(external)
            changes += self._namespace(names)
            cidr = ipaddress.IPv4Network(network.cidr)
            ext = ipaddress.IPv4Network(external.cidr)
            changes += self._leg(names.namespace, names.inside, names.inside_peer, inside_bridge, network.mtu,
                                 {f"{network.gateway_ip}/{cidr.prefixlen}"})
            outside = {f"{network.snat_ip}/{ext.prefixlen}"} | {
                f"{p.floating_ip}/32" for p in network.ports if p.floating_ip}
            had = self._addresses_of(names.namespace, names.outside)
            changes += self._leg(names.namespace, names.outside, names.outside_peer, external.bridge,
                                 self._mtu(external.bridge), outside)
            changes += self._default_route(names, external.gateway_ip)
            changes += self._nat(names, network)
            self._announce(names, outside - had)
            changes += self._forget_sessions(names.namespace, had - outside)
            changes += self._dnsmasq(names, network)
            for change in changes:
                log.info("router %s: %s", network.id, change)
            return changes

    def remove_absent(self, keep: set[str]) -> list[str]:
        """Remove the routers of the networks not in `keep`, everything of
        theirs (dnsmasq, veths, namespace and NAT table, state files), and
        nothing else; one line per router removed."""
        with self._lock:
            recorded = {p.name for p in self.state_dir.iterdir() if p.is_dir()}
            changes = []
            for network_id in sorted((self.present() | recorded) - keep):
                self._remove(network_id)
                changes.append(f"remove router {self.names(network_id).namespace}")
                log.info("router %s: removed", network_id)
            return changes

    # --- the host's side ----------------------------------------------------------

    def _external_bridge(self, external: External) -> list[str]:
        changes = []
        found = _ip_json("-d", "addr", "show", "dev", external.bridge)
        if not found:
            _ip("link", "add", external.bridge, "type", "bridge")
            changes.append(f"create external bridge {external.bridge}")
            found = _ip_json("-d", "addr", "show", "dev", external.bridge)
        if "UP" not in found[0]["flags"]:
            _ip("link", "set", external.bridge, "up")
            changes.append(f"set {external.bridge} up")
        if self.host_gateway:
            address = f"{external.gateway_ip}/{ipaddress.IPv4Network(external.cidr).prefixlen}"
            if address not in _addresses(found[0]):
                _ip("addr", "add", address, "dev", external.bridge)
                changes.append(f"add address {address} to {external.bridge}")
        return changes

    @staticmethod
    def _mtu(device: str) -> int:
        return _ip_json("link", "show", "dev", device)[0]["mtu"]

    # --- the namespace ----------------------------------------------------------

    def _namespace(self, names: RouterNames) -> list[str]:
        changes = []
        ns = names.namespace
        if ns not in _namespaces():
            _ip("netns", "add", ns)
            changes.append(f"create namespace {ns}")
        lo = _ip_json("link", "show", "dev", "lo", namespace=ns)
        if "UP" not in lo[0]["flags"]:
            _ip("link", "set", "lo", "up", namespace=ns)
            changes.append(f"set lo up in {ns}")
        conf = [c for c in _ip_json("netconf", "show", namespace=ns)
                if c.get("family") == "inet" and c.get("interface") == "all"]
        if not conf or not conf[0].get("forwarding"):
            _in_namespace(ns, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
            changes.append(f"enable forwarding in {ns}")
        return changes

    def _leg(self, ns: str, inner: str, peer: str, bridge: str, mtu: int, addresses: set[str]) -> list[str]:
        """One veth: `inner` in the namespace with exactly `addresses`, `peer` on
        the host plugged into `bridge`, both up with `mtu`."""
        changes = []
        found = _ip_json("-d", "addr", "show", "dev", inner, namespace=ns)
        if not found:
            if _ip_json("link", "show", "dev", peer):  # its namespace was deleted under a live process
                _ip("link", "delete", peer)
                changes.append(f"delete stray {peer}")
            _ip("link", "add", peer, "type", "veth", "peer", "name", inner, "netns", ns)
            changes.append(f"create veth {peer} - {inner}")
            found = _ip_json("-d", "addr", "show", "dev", inner, namespace=ns)
        inside = found[0]
        if inside["mtu"] != mtu:
            _ip("link", "set", inner, "mtu", str(mtu), namespace=ns)
            changes.append(f"set mtu {mtu} on {inner}")
        have = _addresses(inside)
        for address in sorted(addresses - have):
            _ip("addr", "add", address, "dev", inner, namespace=ns)
            changes.append(f"add address {address} to {inner}")
        for address in sorted(have - addresses):
            _ip("addr", "del", address, "dev", inner, namespace=ns)
            changes.append(f"remove address {address} from {inner}")
        if "UP" not in inside["flags"]:
            _ip("link", "set", inner, "up", namespace=ns)
            changes.append(f"set {inner} up")
        host_end = _ip_json("link", "show", "dev", peer)[0]
        if host_end.get("master") != bridge:
            _ip("link", "set", peer, "master", bridge)
            changes.append(f"plug {peer} into {bridge}")
        if host_end["mtu"] != mtu:
            _ip("link", "set", peer, "mtu", str(mtu))
            changes.append(f"set mtu {mtu} on {peer}")
        if "UP" not in host_end["flags"]:
            _ip("link", "set", peer, "up")
            changes.append(f"set {peer} up")
        return changes

    @staticmethod
    def _addresses_of(ns: str, device: str) -> set[str]:
        found = _ip_json("addr", "show", "dev", device, namespace=ns)
        return _addresses(found[0]) if found else set()

    def _announce(self, names: RouterNames, added: set[str]) -> None:
        """A gratuitous ARP for each address new on the external side: a
        neighbour that already asked for it (a client knocking before the
        floating IP was attached) learns it now, not at its next ARP retry up
        to a second later. Not state, so not a change; arping sends at once but
        lingers a second before it exits: it is not waited for (reaped later)."""
        self._announcers = [p for p in self._announcers if p.poll() is None]
        for address in sorted(a.split("/")[0] for a in added):
            try:
                self._announcers.append(subprocess.Popen(
                    ["ip", "netns", "exec", names.namespace, "arping", "-q", "-U", "-c", "1",
                     "-I", names.outside, "-s", address, address],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            except OSError as exc:
                log.warning("router %s: arping %s: %s", names.namespace, address, exc)

    @staticmethod
    def _default_route(names: RouterNames, gateway: str) -> list[str]:
        routes = _ip_json("route", "show", "default", namespace=names.namespace)
        if [(r.get("gateway"), r.get("dev")) for r in routes] == [(gateway, names.outside)]:
            return []
        _ip("route", "replace", "default", "via", gateway, "dev", names.outside, namespace=names.namespace)
        return [f"set default route via {gateway}"]

    @staticmethod
    def _nat(names: RouterNames, network: Network) -> list[str]:
        desired = nft_table(names, network)
        listed = _in_namespace(names.namespace, "nft", "list", "table", "ip", NFT_TABLE, check=False)
        if listed.returncode == 0 and _same_ruleset(listed.stdout, desired):
            return []
        # Declaring the table first makes the delete succeed when there is none:
        # one transaction either way, so the rules are never half there.
        script = f"table ip {NFT_TABLE}\ndelete table ip {NFT_TABLE}\n{desired}"
        _in_namespace(names.namespace, "nft", "-f", "-", input=script)
        return [f"replace nft table {NFT_TABLE} in {names.namespace}"]

    @staticmethod
    def _forget_sessions(ns: str, removed: set[str]) -> list[str]:
        """Delete the conntrack entries of floating IPs just detached: sessions
        through them would otherwise stay NATed until they time out."""
        changes = []
        for address in sorted(a.removesuffix("/32") for a in removed if a.endswith("/32")):
            for direction in ("--orig-dst", "--reply-dst"):
                # exit 1 when there was nothing to delete
                _in_namespace(ns, "conntrack", "-D", direction, address, check=False)
            changes.append(f"flush conntrack of {address}")
        return changes

    # --- DHCP --------------------------------------------------------------------

    def _dnsmasq_argv(self, names: RouterNames, network: Network) -> list[str]:
        directory = self._dir(network.id)
        cidr = ipaddress.IPv4Network(network.cidr)
        return ["dnsmasq", "--conf-file=/dev/null", "--no-hosts", "--no-resolv", "--port=0",
                f"--interface={names.inside}", "--except-interface=lo", "--bind-interfaces",
                f"--pid-file={directory / 'dnsmasq.pid'}", f"--dhcp-hostsfile={directory / 'hosts'}",
                "--leasefile-ro", "--dhcp-authoritative",
                f"--dhcp-range={cidr.network_address},static,{cidr.netmask},{LEASE_TIME}",
                f"--dhcp-option=option:router,{network.gateway_ip}",
                f"--dhcp-option=option:mtu,{network.mtu}"]

    def _dnsmasq(self, names: RouterNames, network: Network) -> list[str]:
        changes = []
        directory = self._dir(network.id)
        directory.mkdir(mode=0o711, exist_ok=True)
        hosts = directory / "hosts"
        wanted = dhcp_hosts(network)
        had = hosts.read_text() if hosts.exists() else ""
        hosts_changed = not hosts.exists() or had != wanted
        # A lease gone (a port deleted, or its address now another MAC's): dnsmasq
        # keeps the old lease in memory (--leasefile-ro: only there) and, given
        # the address for another MAC, refuses it ("not using configured address
        # ... because it is leased to" the old one) until the lease expires, a
        # day later: the next guest given a freed address would get none. A
        # restart forgets the leases; the guests still bound are ACKed on renewal
        # (--dhcp-authoritative). Only added leases are a reload (SIGHUP).
        forgotten = set(had.splitlines()) - set(wanted.splitlines())
        if hosts_changed:
            temp = directory / "hosts.new"
            temp.write_text(wanted)
            temp.chmod(0o644)  # dnsmasq re-reads it as nobody
            temp.replace(hosts)
            changes.append(f"write DHCP hosts of {names.namespace} ({len(network.ports)} ports)")
        argv = self._dnsmasq_argv(names, network)
        running = [pid for pid in _pids(names.namespace) if _cmdline(pid) == argv]
        if running and not forgotten:
            if hosts_changed:
                os.kill(running[0], signal.SIGHUP)
                changes.append(f"reload dnsmasq in {names.namespace}")
            return changes
        for pid in self._dnsmasqs(names, network.id):  # with an old command line, or astray
            _stop(pid)
            changes.append(f"stop dnsmasq {pid} of {names.namespace}")
        _in_namespace(names.namespace, *argv)  # returns once the daemon is serving
        changes.append(f"start dnsmasq in {names.namespace}")
        return changes

    def _dnsmasqs(self, names: RouterNames, network_id: str) -> set[int]:
        """The dnsmasq processes of a router: those in its namespace, and the one
        its pid file names if that is still ours (left in a namespace deleted by
        hand, which lives on as long as a process is in it)."""
        found = {pid for pid in _pids(names.namespace) if _cmdline(pid)[:1] == ["dnsmasq"]}
        pid_file = self._dir(network_id) / "dnsmasq.pid"
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            return found
        if f"--pid-file={pid_file}" in _cmdline(pid):
            found.add(pid)
        return found

    # --- removal -------------------------------------------------------------------

    def _remove(self, network_id: str) -> None:
        names = self.names(network_id)
        for pid in self._dnsmasqs(names, network_id) | set(_pids(names.namespace)):
            _stop(pid)
        # Deleting a veth deletes both ends at once; a namespace's own devices
        # go away only when the kernel gets to cleaning it up, after `ip netns delete`.
        for device in (names.inside_peer, names.outside_peer):
            _ip("link", "delete", device, check=False)
        if names.namespace in _namespaces():
            _ip("netns", "delete", names.namespace)
        shutil.rmtree(self._dir(network_id), ignore_errors=True)


def _addresses(link: dict) -> set[str]:
    """A device's IPv4 addresses as address/prefix, from `ip -j addr show`."""
    return {f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", []) if a.get("family") == "inet"}


def _pids(namespace: str) -> list[int]:
    """The processes in a namespace (none when it does not exist)."""
    result = _ip("netns", "pids", namespace, check=False)
    return [int(word) for word in result.stdout.split()] if result.returncode == 0 else []
