"""IP address management: which subnets a network may have, which address and MAC
a new NIC gets, and which external address a router or a floating IP gets.

Exact, in etcd: every address given out is one key (keys.fixed_ip per network,
keys.external_ip for the external network), written only if absent
(`expect_absent`) in the transaction that records what holds it (an instance,
a network's router, a floating IP), and deleted in the one that removes it. Two
creates that pick the same address cannot both commit: the loser re-reads and
picks again, so no address is ever held twice, under any concurrency, and each
goes back exactly once.

Choice: the lowest free address. All creates on one network are of one project
and already take turns on the project's quota record (control/identity/quotas.py),
so spreading the choice would save no conflicts; the lowest is predictable (the
first guest of 10.0.0.0/24 is 10.0.0.2) and keeps the used range compact.

A NIC's MAC is fa:16:3e (OpenStack's prefix: locally administered, unicast),
one random byte, then the 16 low bits of the address's offset in its subnet:
subnets are at most a /16, so two NICs of one network, having distinct
addresses, never share a MAC, with no key of its own; the random byte makes a
reused address come back with another MAC, so stale ARP entries and DHCP leases
of the guest that had it do not match the new one.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterable, Iterator
from ipaddress import IPv4Address, IPv4Network

from control.errors import InvalidArgument, ResourceExhausted
from control.models import Instance, Network, Nic
from control.store import keys
from control.store.etcd import Store, Txn

# RFC 1918: the private ranges tenant subnets must be in.
PRIVATE_RANGES = tuple(IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
# /16: up to 65533 guests (and a MAC per address in 16 bits, above); /29: the
# gateway and 5 guests. A longer prefix holds too few to be worth a network.
SHORTEST_PREFIX, LONGEST_PREFIX = 16, 29
DEFAULT_CIDR = "10.0.0.0/24"
MAC_PREFIX = "fa:16:3e"


def parse_cidr(text: str) -> IPv4Network:
    """A tenant subnet from its text, or InvalidArgument saying what is wrong:
    not an IPv4 network, host bits set, not in RFC 1918, prefix outside /16../29."""
    try:
        parsed = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise InvalidArgument(f"invalid cidr {text!r}: not an IPv4 network like 10.0.0.0/24") from None
    if not isinstance(parsed, IPv4Network) or "/" not in text:
        raise InvalidArgument(f"invalid cidr {text!r}: not an IPv4 network like 10.0.0.0/24")
    if str(parsed) != text.strip():
        # Refused, not silently changed: the caller may have meant another range.
        raise InvalidArgument(f"invalid cidr {text!r}: host bits are set; the network is {parsed}")
    if not any(parsed.subnet_of(r) for r in PRIVATE_RANGES):
        raise InvalidArgument(f"invalid cidr {text!r}: not a private range (RFC 1918: "
                              f"{', '.join(map(str, PRIVATE_RANGES))})")
    if not SHORTEST_PREFIX <= parsed.prefixlen <= LONGEST_PREFIX:
        raise InvalidArgument(f"invalid cidr {text!r}: the prefix must be /{SHORTEST_PREFIX} to "
                              f"/{LONGEST_PREFIX} (a /{LONGEST_PREFIX} holds the gateway and 5 guests)")
    return parsed


def gateway_of(subnet: IPv4Network) -> IPv4Address:
    """The subnet's first address: its router's, the guests' default route."""
    return subnet.network_address + 1


def guest_addresses(subnet: IPv4Network) -> Iterator[IPv4Address]:
    """The addresses NICs may get, lowest first: every host address but the gateway."""
    gateway = gateway_of(subnet)
    return (a for a in subnet.hosts() if a != gateway)


def capacity(subnet: IPv4Network) -> int:
    """How many NICs the subnet holds (without network, broadcast and gateway)."""
    return subnet.num_addresses - 3


def lowest_free(candidates: Iterable[IPv4Address], used: set[str]) -> str | None:
    return next((str(a) for a in candidates if str(a) not in used), None)


def mac_for(subnet: IPv4Network, address: str, rng: random.Random | None = None) -> str:
    """The MAC of a NIC with `address` (see the module's docstring)."""
    offset = int(IPv4Address(address)) - int(subnet.network_address)
    random_byte = (rng or random).randrange(256)
    return f"{MAC_PREFIX}:{random_byte:02x}:{offset >> 8 & 0xff:02x}:{offset & 0xff:02x}"


# ---------------------------------------------------------------- fixed IPs


def used_fixed_ips(store: Store, project: str, network_id: str, txn: Txn | None = None) -> set[str]:
    """Addresses of the network held now, and those `txn` is about to take (a
    scale-out gives several NICs on one network in one transaction)."""
    prefix = keys.fixed_ips(project, network_id)
    stored = {r.key[len(prefix):] for r in store.list(prefix)}
    pending = {k[len(prefix):] for k in txn.puts if k.startswith(prefix)} if txn else set()
    return stored | pending


def nic_into(txn: Txn, store: Store, network: Network, instance_id: str) -> Nic:
    """Give the instance a NIC on `network`: its lowest free address (claimed in
    `txn`, absent-only) and a MAC. ResourceExhausted if the subnet is full."""
    subnet = IPv4Network(network.cidr)
    address = lowest_free(guest_addresses(subnet),
                          used_fixed_ips(store, network.project, network.id, txn))
    if address is None:
        raise ResourceExhausted(f"network {network.name} has no free address")
    nic = Nic(network_id=network.id, network_name=network.name, mac=mac_for(subnet, address),
              fixed_ip=address)
    key = keys.fixed_ip(network.project, network.id, address)
    txn.expect_absent(key).put(key, {"instance_id": instance_id, "mac": nic.mac})
    return nic


def release_nics_into(txn: Txn, instance: Instance) -> None:
    """Give the instance's addresses back: in the transaction that removes its
    record, so each goes back exactly once."""
    for nic in instance.nics:
        txn.delete(keys.fixed_ip(instance.project, nic.network_id, nic.fixed_ip))


# ---------------------------------------------------------------- external addresses


def external_network(cidr: str) -> IPv4Network:
    try:
        return IPv4Network(cidr)
    except ValueError as exc:
        raise ValueError(f"external_cidr {cidr!r}: {exc}") from None


def external_address_into(txn: Txn, store: Store, cidr: str, owner: dict[str, str]) -> str:
    """Take the lowest free address of the external network for `owner` (what
    holds it: {"kind": "snat" | "floating", "project": ..., ...}) in `txn`,
    absent-only. ResourceExhausted if none is free. Its first address is the
    gateway's and is never given out."""
    subnet = external_network(cidr)
    prefix = keys.external_ips()
    used = {r.key[len(prefix):] for r in store.list(prefix)}
    used |= {k[len(prefix):] for k in txn.puts if k.startswith(prefix)}
    address = lowest_free(guest_addresses(subnet), used)
    if address is None:
        raise ResourceExhausted(f"the external network {cidr} has no free address")
    key = keys.external_ip(address)
    txn.expect_absent(key).put(key, owner)
    return address
