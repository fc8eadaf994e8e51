"""Security groups and anti-spoofing on this host's guest ports: one nftables
ruleset per agent, converged level-triggered like l2.py and router.py.
Neutron's semantics (stateful, default deny both ways, groups on a port add
up, anti-spoofing always on); Proxmox's nftables firewall is the shape (one
table, a verdict map from each guest port to its chain, sets for address
groups, the whole ruleset replaced in one transaction).

Where filtering happens, and why
--------------------------------
A guest's NIC is a tap plugged into its network's Linux bridge (l2.py), so its
traffic is bridged, never routed, on this host. Frames between two guests of
one host never leave the bridge; frames to other hosts leave by the VXLAN
device, to the router by its veth (router.py's tr-). The only place that sees
each frame together with the tap it came from or goes to is the bridge, so
the per-port filtering is in nftables' bridge family: `iifname` (prerouting)
is the tap a frame came in by, `oifname` (postrouting) the tap it leaves by,
and a flooded frame is filtered once per tap it is copied to.

Stateful filtering needs conntrack, and this kernel has no nf_conntrack_bridge:
`ct` expressions in a bridge table are refused ("Protocol error", tried). What
it has is br_netfilter: with net.bridge.bridge-nf-call-iptables = 1 (per
network namespace on this kernel, 1 by default, in new namespaces too:
measured), bridged IPv4 frames also traverse the inet family's prerouting,
forward and postrouting hooks, conntrack included, and there `iifname` is the
bridge, not the port (measured). So the work is split in two tables, loaded
together:

- `inet cloudfw<tag>`: for frames bridged on our networks' bridges only, sets
  the conntrack zone from the bridge (raw priority, before conntrack: each
  network's connections are apart, so two projects using 10.0.0.0/24 on one
  host never share an entry, as Neutron's zones do), then copies conntrack's
  verdict into two bits of the packet mark (MARK_*, mangle priority, after
  conntrack). The mark travels with the frame back into the bridge hooks.
  What passes on the mark alone is a reply (a packet of an established
  connection's reply direction) and a related packet (an ICMP error about an
  allowed flow); a packet of the opener's direction goes through the rules
  every time, not only when it opens the connection. So a rule's removal cuts
  the connections it alone allowed at their next packet, while a connection
  the rules still allow (an unrelated rule's change) carries on: Neutron's
  semantics, which it gets by deleting conntrack entries after a change, here
  without touching conntrack. The cost: the port's rules (a few lines and set
  lookups) for each packet the opener sends (bench/network.py's TCP figure).
- `bridge cloudfw<tag>`: the rules. `from-guests` (prerouting, priority 10:
  after br_netfilter's hook at 0 ran conntrack, so the mark is set; measured)
  sends a frame from a tap to its port's `from-<tap>` chain by a verdict map;
  `to-guests` (postrouting) does the same by the outgoing tap to `to-<tap>`.
  Two base chains at two hooks: an accept in one does not skip the other, so
  guest-to-guest traffic on one host passes the sender's egress rules and the
  receiver's ingress rules.

A port's from- chain (egress), in order: anti-spoofing first, stateless (a
guest's frame must carry its own MAC; ARP only with its own MAC and IP, or
0.0.0.0 for an address probe; IPv4 only from its fixed IP, except a DHCP
client's 0.0.0.0 -> broadcast; never DHCP server traffic, udp sport 67), and
only then the state (replies and related packets pass; invalid is dropped),
so a spoofed packet can never ride a neighbour's established connection. Then the
DHCP client's unicast renewals, then a jump to each of the port's groups'
egress chains (an accept there ends the hook), then drop. The to- chain
(ingress): ARP passes; then state; then DHCP from the network's router
(the gateway IP, udp 67 -> 68) whatever the rules; then the groups' ingress
chains; then drop. Anything but IPv4 and ARP (IPv6, VLAN tags) is dropped both
ways: the tenant networks are IPv4 only.

Rules live once per group (`sg-<id>-ingress`/`-egress`), not once per port;
a remote group is a set of its members' addresses (`rg-<id>`), so a member
joining changes one set element and no rule. Taps are named by the agent
(tap_name: from the NIC's MAC and the agent's tag, put in the domain's
<target dev>), so the ruleset is a function of the desired state alone, known
before a guest starts. A tap of ours that the desired state has no port for
(a guest started before the sync that lists it) passes nothing: fail closed.

Level-triggered (DESIGN.md convention 14): converge() renders both tables as
`nft -s list table` prints them and compares them, block by block (each set,
map and chain), with what the kernel has: what differs (a change from the
control plane, a rule deleted by hand, an agent that never ran) is patched in
ONE `nft -f` transaction (only the differing blocks flushed and written again:
patch()), or both tables replaced in one (declare, delete, define) when a
patch cannot do it (a table missing). Either way there is never a moment
without rules, and conntrack is not touched: established connections that
the new rules still allow carry on, the others are cut (above). It returns one line per block that
differed, so a second converge returns [], and so does the first converge
of a restarted agent when nothing changed. Reading 2,000 rules back takes
~120 ms here, so a desired state that differs from the last one applied is
patched against that, without a read (~40-60 ms for one more rule on a host
with 200 ports and 2,000 rules, bench/firewall.py); if the kernel was changed
under it the transaction fails as a whole and converge reads the kernel
instead. A pass with nothing new always reads the kernel: drift is repaired
within one sync interval.

Known limits: the zone is the VNI modulo 65535 plus one, unique in a cloud
because its vni_range holds at most 65535 VNIs (control/config.py), not across
two clouds sharing a network namespace unless their ranges differ modulo
65535; br_netfilter sends every bridged IPv4 frame of this host's network
namespace through the inet hooks, so another program's inet or iptables rules
in that namespace see tenant traffic too (that is the kernel's default here
already; converge only turns the setting on if someone turned it off).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from compute_agent.errors import NetworkError
from compute_agent.network import MAC
from compute_agent.tenant.l2 import bridge_name, check_tag
from compute_agent.tenant.model import HostNetworks, Network, Port, Rule, SecurityGroup

TABLE = "cloudfw"                 # + the agent's tag; one in the bridge family, one in inet
MARK_MASK = 0x30000000            # the packet mark's bits that carry conntrack's verdict
MARK_REPLY = 0x10000000           # a reply of an established connection, or related to one
MARK_INVALID = 0x20000000         # conntrack could not place it
BRIDGE_NF = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")
GROUP_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")  # names chains and sets
PROTOCOLS = ("tcp", "udp", "icmp", "any")
NFT_TIMEOUT_S = 30                # one nft run; 200 ports and 2,000 rules load in well under a second


def table_name(tag: str = "") -> str:
    return f"{TABLE}{tag}"


def tap_prefix(tag: str = "") -> str:
    return f"tq{tag}-"


def tap_name(mac: str, tag: str = "") -> str:
    """The tap of a guest's NIC on a tenant network (the domain's <target dev>):
    from its MAC, unique in the cloud, and the agent's tag, so the firewall
    knows it before the guest starts. Interface names have at most 15
    characters: a hash of the MAC fills what the prefix leaves."""
    prefix = tap_prefix(check_tag(tag))
    return prefix + hashlib.sha256(mac.encode()).hexdigest()[:15 - len(prefix)]


def zone(network: Network) -> int:
    """The conntrack zone of a network's connections on this host (1..65535; 0 is
    the host's own)."""
    return network.vni % 65535 + 1


# --- the desired state -------------------------------------------------------------

def _ipv4(text: str, what: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(text)
    except ValueError:
        raise NetworkError(f"{what} {text!r} is not an IPv4 address") from None


def check_group(group: SecurityGroup) -> None:
    """NetworkError, saying what is wrong, for a group the host cannot apply."""
    if not GROUP_ID.fullmatch(group.id):
        raise NetworkError(f"security group id {group.id!r} must be letters, digits, - and _")
    for ip in group.member_ips:
        _ipv4(ip, f"security group {group.id}: member address")
    for rule in group.rules:
        where = f"security group {group.id}, rule {rule.id}"
        if rule.direction not in ("ingress", "egress"):
            raise NetworkError(f"{where}: direction {rule.direction!r} is not ingress or egress")
        if rule.protocol not in PROTOCOLS:
            raise NetworkError(f"{where}: protocol {rule.protocol!r} is not one of {', '.join(PROTOCOLS)}")
        if (rule.port_min, rule.port_max) != (0, 0):
            if rule.protocol not in ("tcp", "udp"):
                raise NetworkError(f"{where}: ports only go with tcp or udp")
            if not 1 <= rule.port_min <= rule.port_max <= 65535:
                raise NetworkError(f"{where}: ports {rule.port_min}-{rule.port_max} are not a range "
                                   "in 1..65535")
        if rule.remote_cidr and rule.remote_group_id:
            raise NetworkError(f"{where}: a remote CIDR or a remote group, not both")
        if rule.remote_cidr:
            try:
                ipaddress.IPv4Network(rule.remote_cidr, strict=False)
            except ValueError:
                raise NetworkError(f"{where}: remote CIDR {rule.remote_cidr!r} is not an IPv4 "
                                   "network") from None
        if rule.remote_group_id and not GROUP_ID.fullmatch(rule.remote_group_id):
            raise NetworkError(f"{where}: remote group id {rule.remote_group_id!r} is not a group id")


@dataclass(frozen=True)
class LocalPort:
    """A NIC on this host, with its network and tap."""

    port: Port
    network: Network
    tap: str


def local_ports(desired: HostNetworks, local_vtep: str, tag: str = "") -> list[LocalPort]:
    """The NICs of this host (their vtep is this host's), sorted by tap."""
    found = [LocalPort(p, n, tap_name(p.mac, tag))
             for n in desired.networks for p in n.ports if p.vtep == local_vtep]
    taps = [lp.tap for lp in found]
    if len(set(taps)) != len(taps):
        raise NetworkError("two NICs of this host have the same MAC")
    for lp in found:
        _ipv4(lp.port.fixed_ip, f"fixed IP of {lp.port.instance_id}")
        _ipv4(lp.network.gateway_ip, f"gateway of network {lp.network.id}")
        if not MAC.fullmatch(lp.port.mac):
            raise NetworkError(f"MAC {lp.port.mac!r} of {lp.port.instance_id} is not a lower-case "
                               "unicast MAC")
    return sorted(found, key=lambda lp: lp.tap)


def _address(cidr: str) -> str:
    """A CIDR as nft prints it: a single address without /32."""
    net = ipaddress.IPv4Network(cidr, strict=False)
    return str(net.network_address) if net.prefixlen == 32 else str(net)


def _sorted_ips(ips: Iterable[str]) -> list[str]:
    return sorted(set(ips), key=ipaddress.IPv4Address)


def rule_line(rule: Rule) -> str:
    """One rule as nft prints it (inside its group's ingress or egress chain)."""
    words = []
    side = "saddr" if rule.direction == "ingress" else "daddr"  # the peer's address
    if rule.remote_group_id:
        words.append(f"ip {side} @rg-{rule.remote_group_id}")
    elif rule.remote_cidr and ipaddress.IPv4Network(rule.remote_cidr, strict=False).prefixlen > 0:
        words.append(f"ip {side} {_address(rule.remote_cidr)}")
    if rule.protocol != "any":
        if (rule.port_min, rule.port_max) == (0, 0):
            words.append(f"meta l4proto {rule.protocol}")
        elif rule.port_min == rule.port_max:
            words.append(f"{rule.protocol} dport {rule.port_min}")
        else:
            words.append(f"{rule.protocol} dport {rule.port_min}-{rule.port_max}")
    return " ".join([*words, "accept"])


def _elements(items: list[str]) -> list[str]:
    return [f"\t\telements = {{ {', '.join(items)} }}"] if items else []


def _state_line() -> str:
    return (f"meta mark & {MARK_MASK:#010x} vmap {{ {MARK_REPLY:#010x} : accept, "
            f"{MARK_INVALID:#010x} : drop }}")


def _from_chain(lp: LocalPort) -> list[str]:
    """A guest's egress: anti-spoofing (stateless, first), state, its groups."""
    mac, ip = lp.port.mac, lp.port.fixed_ip
    return [
        f"ether saddr != {mac} drop",
        f"arp saddr ether != {mac} drop",
        f"arp saddr ip != {{ 0.0.0.0, {ip} }} drop",
        "ether type arp accept",
        "ether type != ip drop",
        "udp sport 67 drop",
        "ip saddr 0.0.0.0 ip daddr 255.255.255.255 udp sport 68 udp dport 67 accept",
        f"ip saddr != {ip} drop",
        "udp sport 68 udp dport 67 accept",
        _state_line(),
        *(f"jump sg-{g}-egress" for g in lp.port.security_group_ids),
        "drop",
    ]


def _to_chain(lp: LocalPort) -> list[str]:
    """A guest's ingress: ARP, state, DHCP from the router, its groups."""
    return [
        "ether type arp accept",
        "ether type != ip drop",
        _state_line(),
        f"ip saddr {lp.network.gateway_ip} udp sport 67 udp dport 68 accept",
        *(f"jump sg-{g}-ingress" for g in lp.port.security_group_ids),
        "drop",
    ]


def _chain(name: str, lines: list[str], hook: str = "") -> list[str]:
    return [f"\tchain {name} {{", *([f"\t\t{hook}"] if hook else []),
            *(f"\t\t{line}" for line in lines), "\t}"]


def render(desired: HostNetworks, local_vtep: str, tag: str = "") -> str:
    """Both tables, as `nft -s list table` prints them. NetworkError for a
    desired state that cannot be applied."""
    check_tag(tag)
    ports = local_ports(desired, local_vtep, tag)
    groups: dict[str, SecurityGroup] = {}
    for group in desired.security_groups:
        check_group(group)
        groups.setdefault(group.id, group)
    for lp in ports:
        for gid in lp.port.security_group_ids:
            if not GROUP_ID.fullmatch(gid):
                raise NetworkError(f"security group id {gid!r} of {lp.port.instance_id} is not a group id")
            # A group the control plane did not describe allows nothing (fail closed).
            groups.setdefault(gid, SecurityGroup(gid))
    used = sorted({g for lp in ports for g in lp.port.security_group_ids})
    remotes = sorted({r.remote_group_id for g in used for r in groups[g].rules if r.remote_group_id})
    name = table_name(tag)
    prefix = tap_prefix(tag)

    bridge = [f"table bridge {name} {{"]
    for gid in remotes:
        members = groups[gid].member_ips if gid in groups else ()  # unknown: nobody
        bridge += [f"\tset rg-{gid} {{", "\t\ttype ipv4_addr", *_elements(_sorted_ips(members)), "\t}"]
    for direction in ("from", "to"):
        items = [f'"{lp.tap}" : jump {direction}-{lp.tap}' for lp in ports]
        bridge += [f"\tmap {direction}-port {{", "\t\ttype ifname : verdict", *_elements(items), "\t}"]
    bridge += _chain("from-guests", ["iifname vmap @from-port", f'iifname "{prefix}*" drop'],
                     "type filter hook prerouting priority 10; policy accept;")
    bridge += _chain("to-guests", ["oifname vmap @to-port", f'oifname "{prefix}*" drop'],
                     "type filter hook postrouting priority 0; policy accept;")
    for gid in used:
        for direction in ("ingress", "egress"):
            bridge += _chain(f"sg-{gid}-{direction}",
                             [rule_line(r) for r in groups[gid].rules if r.direction == direction])
    for lp in ports:
        bridge += _chain(f"from-{lp.tap}", _from_chain(lp))
        bridge += _chain(f"to-{lp.tap}", _to_chain(lp))
    bridge.append("}")

    bridges = sorted({bridge_name(n.vni, tag): zone(n) for n in desired.networks}.items())
    zones = ", ".join(f'"{b}" : {z}' for b, z in bridges)
    inet = [f"table inet {name} {{",
            "\tset bridges {", "\t\ttype ifname", *_elements([f'"{b}"' for b, _ in bridges]), "\t}"]
    inet += _chain("zone", [f"ct zone set iifname map {{ {zones} }}"] if bridges else [],
                   "type filter hook prerouting priority raw; policy accept;")
    inet += _chain("state", [
        "iifname != @bridges return",
        f"meta mark set meta mark & {~MARK_MASK & 0xffffffff:#010x}",
        f"ct state related meta mark set meta mark | {MARK_REPLY:#010x}",
        f"ct direction reply ct state established meta mark set meta mark | {MARK_REPLY:#010x}",
        f"ct state invalid meta mark set meta mark | {MARK_INVALID:#010x}",
    ], "type filter hook prerouting priority mangle; policy accept;")
    inet.append("}")
    return "\n".join(bridge + inet) + "\n"


# --- comparing with the kernel --------------------------------------------------------

BRACED_LIST = re.compile(r"\{ ([^{}]*, [^{}]*) \}")


def _logical_lines(text: str) -> list[str]:
    """Stripped non-empty lines, with nft's wrapped element lists joined and
    the items of every { a, b } sorted: nft lists a hashed set's or map's
    elements in the kernel's order, and a set has none."""
    out: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if out and out[-1].endswith(","):
            out[-1] += " " + line
        else:
            out.append(line)
    return [BRACED_LIST.sub(lambda m: "{ " + ", ".join(sorted(m[1].split(", "))) + " }", line)
            for line in out]


def blocks(text: str) -> dict[str, list[str]]:
    """A listing as {"bridge cloudfw / chain from-guests": its lines, ...}: each
    table's sets, maps and chains, and the table's own lines under its name."""
    found: dict[str, list[str]] = {}
    table = block = ""
    depth = 0
    for line in _logical_lines(text):
        if depth == 0 and line.startswith("table "):
            table = " ".join(line.split()[1:3])
            block = table
        elif depth == 1 and line.split()[0] in ("set", "map", "chain"):
            block = f"{table} / {' '.join(line.split()[:2])}"
        found.setdefault(block, []).append(line)
        depth += line.count("{") - line.count("}")
        if depth == 1:
            block = table
    return found


def _run(argv: list[str], input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    try:
        done = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=NFT_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetworkError(f"{' '.join(argv)}: {exc}") from exc
    if check and done.returncode != 0:
        raise NetworkError(f"{' '.join(argv)}: {done.stderr.strip() or f'exit {done.returncode}'}")
    return done


def patch(have: dict[str, list[str]], want: dict[str, list[str]]) -> str | None:
    """An `nft -f` script (one transaction) that turns the blocks `have` into
    `want`, touching only the sets, maps and chains that differ; None when only
    replacing the tables will do (a table missing or changed, a base chain to
    add or re-hook, a set's type changed). In order: new chains declared empty
    (maps and rules may jump to them), every changed or removed block flushed
    (so nothing refers to what goes), the new contents (sets and maps before
    the chains that use them), then what goes deleted (chains before the maps
    and sets they used)."""
    declare, flush, define, delete = [], [], [], []
    for key in sorted(have.keys() | want.keys(), key=lambda k: (" / chain " in k, k)):
        old, new = have.get(key), want.get(key)
        if old == new:
            continue
        if " / " not in key:
            return None  # a table's own lines, or a table missing
        table, block = key.split(" / ")
        kind, name = block.split()
        base = any(b is not None and len(b) > 1 and b[1].startswith("type ") and kind == "chain"
                   for b in (old, new))
        if old is None:
            if base:
                return None
            if kind == "chain":
                declare.append(f"add chain {table} {name}")
        elif new is not None and (old[1:2] != new[1:2]) and (base or kind != "chain"):
            return None  # a set's or map's type, a base chain's hook
        if old is not None:
            flush.append(f"flush {kind} {table} {name}")
        if new is None:
            delete.append((kind != "chain", f"delete {kind} {table} {name}"))
        else:
            define.append(f"table {table} {{\n" + "\n".join(new) + "\n}")
    return "\n".join([*declare, *flush, *define, *(line for _, line in sorted(delete))]) + "\n"


def _describe(have: dict[str, list[str]], want: dict[str, list[str]]) -> list[str]:
    """One line per block that differed; a table added or removed whole is one line."""
    whole = {k for k in have.keys() ^ want.keys() if " / " not in k}
    lines = []
    for key in sorted(have.keys() | want.keys()):
        verb = "add" if key not in have else "remove" if key not in want else "change"
        if key in whole:
            count = sum(1 for k in (want if verb == "add" else have) if k.startswith(f"{key} / "))
            lines.append(f"firewall: {verb} table {key} ({count} sets, maps and chains)")
        elif have.get(key) != want.get(key) and key.split(" / ")[0] not in whole:
            lines.append(f"firewall: {verb} {key}")
    return lines


class Firewall:
    """This host's security groups and anti-spoofing (see the module's docstring)."""

    def __init__(self, local_vtep: str, tag: str = ""):
        self.local_vtep = local_vtep   # this host's NICs are the ports with this vtep
        self.tag = check_tag(tag)      # names the tables and taps, as l2.py's devices
        self.table = table_name(tag)
        # The blocks this object last made the kernel have: a new desired state is
        # applied against them without reading the kernel back (a 2,000-rule
        # listing takes 120 ms here); a pass with nothing new reads the kernel.
        self._applied: dict[str, list[str]] | None = None

    def tap(self, mac: str) -> str:
        return tap_name(mac, self.tag)

    def listing(self) -> str:
        """Both tables as the kernel has them ("" for one that is not there)."""
        return "".join(_run(["nft", "-s", "list", "table", family, self.table], check=False).stdout
                       for family in ("bridge", "inet"))

    def converge(self, desired: HostNetworks) -> list[str]:
        """Make the kernel's tables what `desired` says; one line per set, map
        or chain that differed ([] when all was right).

        Something new to apply (the desired state differs from what this
        object last applied): patched against that, one transaction, no read.
        Nothing new, or the patch refused (the kernel was changed under us),
        or a first pass: the kernel's tables are read and compared block by
        block, and what differs is patched (or both tables replaced)."""
        want = blocks(render(desired, self.local_vtep, self.tag))
        changes = self._bridge_netfilter()
        if self._applied is not None and want != self._applied:
            script = patch(self._applied, want)
            if script is not None and _run(["nft", "-f", "-"], input=script, check=False).returncode == 0:
                changes += _describe(self._applied, want)
                self._applied = want
                return changes
        self._applied = None
        have = blocks(self.listing())
        if have == want:
            self._applied = want
            return changes
        script = patch(have, want)
        if script is None or _run(["nft", "-f", "-"], input=script, check=False).returncode != 0:
            self._replace(want)
        self._applied = want
        return changes + _describe(have, want)

    def _replace(self, want: dict[str, list[str]]) -> None:
        """Both tables deleted and made again, in one transaction."""
        tables = [key for key in want if " / " not in key]
        text = "\n".join(line for key in tables for line in self._table_text(key, want))
        _run(["nft", "-f", "-"], input=self._deletes() + text + "\n")

    @staticmethod
    def _table_text(table: str, want: dict[str, list[str]]) -> list[str]:
        inner = [line for key, lines in want.items() if key.startswith(f"{table} / ") for line in lines]
        head = want[table]  # "table ... {", the table's own lines, "}"
        return [*head[:-1], *inner, head[-1]]

    def _deletes(self) -> str:
        """Delete both tables; declared first, so that a table not there is no error."""
        return "".join(f"table {family} {self.table}\ndelete table {family} {self.table}\n"
                       for family in ("bridge", "inet"))

    def remove(self) -> list[str]:
        """Delete both tables (guests' traffic then passes unfiltered)."""
        self._applied = None
        if not self.listing():
            return []
        _run(["nft", "-f", "-"], input=self._deletes())
        return [f"firewall: delete tables {self.table}"]

    @staticmethod
    def _bridge_netfilter() -> list[str]:
        """Bridged IPv4 must go through conntrack (the module's docstring); it is
        on by default, per network namespace."""
        if BRIDGE_NF.read_text().strip() == "1":
            return []
        BRIDGE_NF.write_text("1\n")
        return ["firewall: set net.bridge.bridge-nf-call-iptables = 1"]
