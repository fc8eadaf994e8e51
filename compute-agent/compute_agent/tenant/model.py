"""What a host must have of the tenant networks: the agent's desired state, as the
control plane's HostService.GetHostNetworks answers it (agent.proto's
HostNetworks), in plain dataclasses so the data plane code and its tests need no
gRPC. from_proto() converts; the data plane (l2.py, router.py, firewall.py,
networking.py) converges the kernel to these."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Port:
    """A NIC on a tenant network, on whichever host it is."""

    instance_id: str
    mac: str
    fixed_ip: str
    vtep: str              # the underlay address of the host it is on
    floating_ip: str = ""  # 1:1 NAT on the network's router, if attached
    # Its instance's security groups (HostNetworks.security_groups has them): the
    # host the NIC is on filters its traffic by their rules (firewall.py).
    security_group_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class Network:
    """A tenant network as this host must have it."""

    id: str
    project: str
    vni: int
    cidr: str
    gateway_ip: str
    mtu: int
    ports: tuple[Port, ...] = ()
    vteps: tuple[str, ...] = ()  # every host that has the network, this one included
    router_host: str = ""        # the host that runs its router (gateway, DHCP, SNAT, floating IPs)
    snat_ip: str = ""            # the router's address on the external network


@dataclass(frozen=True)
class External:
    """The external network routers SNAT to and floating IPs come from."""

    cidr: str = ""
    gateway_ip: str = ""
    bridge: str = ""


@dataclass(frozen=True)
class Rule:
    """One security group rule: what it lets in (ingress) or out (egress) of a
    NIC of the group; replies to what it lets through pass too (stateful)."""

    id: str
    direction: str            # "ingress" or "egress"
    protocol: str = "any"     # "tcp", "udp", "icmp" or "any"
    port_min: int = 0         # tcp and udp: the first port; 0 with port_max 0: every port
    port_max: int = 0         # the last port (port_min for one port)
    remote_cidr: str = ""     # the peers it allows, as an IPv4 CIDR; or
    remote_group_id: str = ""  # the members of this group; neither: anyone


@dataclass(frozen=True)
class SecurityGroup:
    """A security group as a host applies it: its rules, and the fixed IPs of
    its members (for rules, of any group, that name it as their remote group)."""

    id: str
    rules: tuple[Rule, ...] = ()
    member_ips: tuple[str, ...] = ()


@dataclass(frozen=True)
class HostNetworks:
    networks: tuple[Network, ...] = ()
    external: External = field(default_factory=External)
    revision: int = 0
    # The groups of this host's NICs, and the groups their rules name as remote.
    security_groups: tuple[SecurityGroup, ...] = ()


def network_from_proto(message) -> Network:
    """agent_pb2.TenantNetwork -> Network."""
    return Network(
        id=message.id, project=message.project, vni=message.vni, cidr=message.cidr,
        gateway_ip=message.gateway_ip, mtu=message.mtu,
        ports=tuple(Port(p.instance_id, p.mac, p.fixed_ip, p.vtep, p.floating_ip,
                         tuple(p.security_group_ids))
                    for p in message.ports),
        vteps=tuple(message.vteps), router_host=message.router_host, snat_ip=message.snat_ip)


def segment_from_proto(message) -> Network:
    """agent_pb2.NetworkSegment (a spawn's NIC's network) -> Network, without ports."""
    return Network(id=message.id, project=message.project, vni=message.vni, cidr=message.cidr,
                   gateway_ip=message.gateway_ip, mtu=message.mtu,
                   router_host=message.router_host, snat_ip=message.snat_ip)


def security_group_from_proto(message) -> SecurityGroup:
    """agent_pb2.HostSecurityGroup -> SecurityGroup."""
    return SecurityGroup(
        id=message.id, member_ips=tuple(message.member_ips),
        rules=tuple(Rule(r.id, r.direction, r.protocol, r.port_min, r.port_max, r.remote_cidr,
                         r.remote_group_id) for r in message.rules))


def from_proto(message) -> HostNetworks:
    """agent_pb2.HostNetworks -> HostNetworks."""
    e = message.external
    return HostNetworks(networks=tuple(network_from_proto(n) for n in message.networks),
                        external=External(e.cidr, e.gateway_ip, e.bridge),
                        revision=message.revision,
                        security_groups=tuple(security_group_from_proto(g)
                                              for g in message.security_groups))
