"""What a host must have of the tenant networks: the agent's desired state, as the
control plane's HostService.GetHostNetworks answers it (agent.proto's
HostNetworks), in plain dataclasses so the data plane code and its tests need no
gRPC. from_proto() converts; the data plane (l2.py, router.py, networking.py)
converges the kernel to these."""

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
class HostNetworks:
    networks: tuple[Network, ...] = ()
    external: External = field(default_factory=External)
    revision: int = 0


def network_from_proto(message) -> Network:
    """agent_pb2.TenantNetwork -> Network."""
    return Network(
        id=message.id, project=message.project, vni=message.vni, cidr=message.cidr,
        gateway_ip=message.gateway_ip, mtu=message.mtu,
        ports=tuple(Port(p.instance_id, p.mac, p.fixed_ip, p.vtep, p.floating_ip)
                    for p in message.ports),
        vteps=tuple(message.vteps), router_host=message.router_host, snat_ip=message.snat_ip)


def segment_from_proto(message) -> Network:
    """agent_pb2.NetworkSegment (a spawn's NIC's network) -> Network, without ports."""
    return Network(id=message.id, project=message.project, vni=message.vni, cidr=message.cidr,
                   gateway_ip=message.gateway_ip, mtu=message.mtu,
                   router_host=message.router_host, snat_ip=message.snat_ip)


def from_proto(message) -> HostNetworks:
    """agent_pb2.HostNetworks -> HostNetworks."""
    e = message.external
    return HostNetworks(networks=tuple(network_from_proto(n) for n in message.networks),
                        external=External(e.cidr, e.gateway_ip, e.bridge),
                        revision=message.revision)
