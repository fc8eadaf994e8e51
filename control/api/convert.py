"""Models (control.models) to and from their protobuf messages."""

from __future__ import annotations

from cloudapi.v1 import agent_pb2 as apb
from cloudapi.v1 import compute_pb2 as pb
from cloudapi.v1 import identity_pb2 as ipb
from cloudapi.v1 import network_pb2 as npb
from cloudapi.v1 import security_group_pb2 as spb
from google.protobuf.timestamp_pb2 import Timestamp

from control.api.state_enums import to_wire
from control.compute.actions import Action
from control.compute.keypairs import Keypair
from control.compute.server_groups import ServerGroup
from control.compute.states import allowed_operations, status
from control.identity.accounts import Caller, Project, User
from control.identity.quotas import QuotaValues
from control.models import (
    Fault,
    Flavor,
    FloatingIp,
    Host,
    Image,
    Instance,
    Network,
    SecurityGroup,
    SecurityGroupRule,
)
from control.network.networks import HostView, Usage
from control.placement.aggregates import Aggregate, effective
from control.placement.allocations import Provider


def _ts(seconds: float | None) -> Timestamp | None:
    if seconds is None:
        return None
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def flavor(f: Flavor) -> pb.Flavor:
    return pb.Flavor(name=f.name, vcpus=f.vcpus, memory_mb=f.memory_mb, disk_gb=f.disk_gb,
                     public=f.public, projects=f.projects, required_traits=f.required_traits,
                     forbidden_traits=f.forbidden_traits, zone=f.zone)


def fault(f: Fault) -> pb.Fault:
    return pb.Fault(message=f.message, phase=f.phase, time=_ts(f.time), host=f.host)


def host_info(h: Host, provider: Provider | None, instances: int, up: bool,
              aggregates: list[Aggregate]) -> pb.HostInfo:
    inventory = []
    if provider is not None:
        for rc, item in provider.inventory.items():
            inventory.append(pb.HostInventoryItem(
                resource_class=rc, total=item.total, reserved=item.reserved,
                allocation_ratio=item.allocation_ratio, capacity=item.capacity,
                used=provider.usage.get(rc, 0)))
    zone, traits, member_of = effective(h, aggregates)
    return pb.HostInfo(name=h.name, address=h.address, enabled=h.enabled,
                       disabled_reason=h.disabled_reason, up=up, zone=zone, traits=sorted(traits),
                       inventory=inventory, instances=instances, virt_type=h.virt_type,
                       hypervisor=h.hypervisor, last_heartbeat=_ts(h.last_heartbeat),
                       aggregates=member_of)


def aggregate(a: Aggregate) -> pb.Aggregate:
    return pb.Aggregate(name=a.name, zone=a.zone, traits=a.traits, hosts=a.hosts)


def token(caller: Caller, secret: str = "") -> ipb.Token:
    return ipb.Token(token=secret, username=caller.username, project=caller.project,
                     role=caller.role, expires_at=_ts(caller.expires_at))


def project(p: Project) -> ipb.Project:
    return ipb.Project(name=p.name, description=p.description, created_at=_ts(p.created_at))


def user(u: User, roles: dict[str, str]) -> ipb.User:
    return ipb.User(name=u.name, created_at=_ts(u.created_at),
                    roles=[ipb.RoleAssignment(project=p, role=r) for p, r in sorted(roles.items())])


def quota_values(v: QuotaValues) -> ipb.QuotaValues:
    return ipb.QuotaValues(instances=v.instances, vcpus=v.vcpus, memory_mb=v.memory_mb,
                           disk_gb=v.disk_gb, resources=v.others())


def image(i: Image) -> pb.Image:
    return pb.Image(id=i.id, name=i.name, os=i.os, min_disk_gb=i.min_disk_gb,
                    min_memory_mb=i.min_memory_mb, status=i.status.upper(), project=i.project,
                    visibility=i.visibility, disk_format=i.disk_format, size_bytes=i.size_bytes,
                    virtual_size_bytes=i.virtual_size_bytes, checksum_sha256=i.disk_sha256,
                    direct_kernel_boot=i.direct_kernel_boot, cmdline=i.cmdline,
                    created_at=_ts(i.created_at))


def instance(i: Instance, floating: dict[tuple[str, str], str] | None = None) -> pb.Instance:
    """`floating`: (instance id, network id) -> the floating IP attached there."""
    shown = status(i.state)
    msg = pb.Instance(
        id=i.id, name=i.name, project=i.project, status=shown,
        vm_state=i.vm_state.value, task_state=i.task_state.value, power_state=i.power_state.value,
        status_enum=to_wire(shown), vm_state_enum=to_wire(i.vm_state),
        task_state_enum=to_wire(i.task_state), power_state_enum=to_wire(i.power_state),
        flavor=i.flavor, vcpus=i.resources.vcpus, memory_mb=i.resources.memory_mb,
        disk_gb=i.resources.disk_gb, image=i.image, host=i.host, addresses=i.addresses,
        group=i.group, max_vcpus=i.max_vcpus, max_memory_mb=i.max_memory_mb, key_name=i.key_name,
        created_at=_ts(i.created_at), updated_at=_ts(i.updated_at),
        launched_at=_ts(i.launched_at), allowed_actions=allowed_operations(i.state))
    if i.fault:
        msg.fault.CopyFrom(fault(i.fault))
    msg.attempts.extend(fault(a) for a in i.attempts)
    msg.security_groups.extend(spb.SecurityGroupRef(id=g.id, name=g.name) for g in i.security_groups)
    msg.nics.extend(npb.Nic(network_id=n.network_id, network_name=n.network_name, mac=n.mac,
                            fixed_ip=n.fixed_ip,
                            floating_ip=(floating or {}).get((i.id, n.network_id), ""))
                    for n in i.nics)
    seen = list(msg.addresses)
    del msg.addresses[:]
    msg.addresses.extend(addresses(msg.nics, seen))
    return msg


def addresses(nics, seen: list[str]) -> list[str]:
    """Instance.addresses, the one list `instance list` and the dashboard show:
    each NIC's fixed IP then its floating IP (known from the create on, not
    learned from DHCP), then what the host saw of its guest (NAT network leases)."""
    found = [a for n in nics for a in (n.fixed_ip, n.floating_ip) if a]
    return list(dict.fromkeys([*found, *seen]))


def server_group(g: ServerGroup) -> pb.ServerGroup:
    return pb.ServerGroup(name=g.name, policy=g.policy, members=sorted(g.members))


def action(a: Action) -> pb.InstanceAction:
    return pb.InstanceAction(action=a.action, request_id=a.request_id, user=a.user,
                             start=_ts(a.start), end=_ts(a.end), result=a.result, error=a.error)


def keypair(k: Keypair) -> pb.Keypair:
    return pb.Keypair(name=k.name, public_key=k.public_key, fingerprint=k.fingerprint, type=k.type,
                      created_at=_ts(k.created_at))


def network(n: Network, usage: Usage) -> npb.Network:
    return npb.Network(id=n.id, name=n.name, project=n.project, cidr=n.cidr, gateway_ip=n.gateway_ip,
                       mtu=n.mtu, ports=usage.ports, free_addresses=usage.free,
                       created_at=_ts(n.created_at))


def floating_ip(f: FloatingIp) -> npb.FloatingIp:
    return npb.FloatingIp(address=f.address, project=f.project, instance_id=f.instance_id,
                          fixed_ip=f.fixed_ip, network_id=f.network_id, created_at=_ts(f.created_at))


def security_group(g: SecurityGroup, names: dict[str, str]) -> spb.SecurityGroup:
    """`names`: id -> name of the project's groups (for remote groups' names)."""
    return spb.SecurityGroup(id=g.id, name=g.name, description=g.description, project=g.project,
                             rules=[security_group_rule(g.id, r, names) for r in g.rules],
                             created_at=_ts(g.created_at))


def security_group_rule(group_id: str, r: SecurityGroupRule, names: dict[str, str]) -> spb.SecurityGroupRule:
    return spb.SecurityGroupRule(id=r.id, security_group_id=group_id, direction=r.direction,
                                 protocol=r.protocol, port_min=r.port_min, port_max=r.port_max,
                                 remote_cidr=r.remote_cidr, remote_group_id=r.remote_group_id,
                                 remote_group_name=names.get(r.remote_group_id, ""))


def host_networks(view: HostView) -> apb.HostNetworks:
    return apb.HostNetworks(
        networks=[apb.TenantNetwork(
            id=h.network.id, project=h.network.project, vni=h.network.vni, cidr=h.network.cidr,
            gateway_ip=h.network.gateway_ip, mtu=h.network.mtu,
            ports=[apb.NetworkPort(instance_id=p.instance_id, mac=p.mac, fixed_ip=p.fixed_ip,
                                   vtep=p.vtep, floating_ip=p.floating_ip,
                                   security_group_ids=p.security_group_ids) for p in h.ports],
            vteps=h.vteps, router_host=h.router_host, snat_ip=h.network.snat_ip)
            for h in view.networks],
        external=apb.ExternalNetwork(cidr=view.external_cidr, gateway_ip=view.external_gateway,
                                     bridge=view.external_bridge),
        revision=view.revision,
        security_groups=[apb.HostSecurityGroup(
            id=g.id, member_ips=g.member_ips,
            rules=[apb.HostSecurityGroupRule(
                id=r.id, direction=r.direction, protocol=r.protocol, port_min=r.port_min,
                port_max=r.port_max, remote_cidr=r.remote_cidr, remote_group_id=r.remote_group_id)
                for r in g.rules]) for g in view.security_groups])
