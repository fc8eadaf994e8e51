"""Tenant networks: a project's private networks, and what each host must make of them.

A network is one IPv4 subnet (control/network/ipam.py says which are allowed)
and one L2 segment, stretched between the hosts that have its NICs by VXLAN
with a VNI given once per network, unique in the whole cloud (one key per VNI,
written absent-only). Projects may use the same subnets: they are kept apart by
VNI on the wire and by a bridge and a router namespace per network on hosts.

Each network is made in one transaction with its name (unique in its project),
its VNI, its router's SNAT address on the external network (one key per
external address, shared with floating IPs) and its charge on the project's
`networks` quota; deleted in one that gives all of them back, and only while
no NIC is on it (the transaction compares that its fixed-ip keys are none).

The "default" network. An instance created without networks gets a NIC on its
project's "default" network (10.0.0.0/24), made by the first such create: the
name key is written absent-only, so two first creates at once make one network
(the loser finds the winner's). It does NOT count against the `networks` quota:
the cloud makes it, not the tenant, and a project at its network quota (or
with a quota of 0) can still boot instances. It does take a VNI and an
external (SNAT) address, like any network. A tenant may delete it while no NIC
is on it; the next create without networks makes it again. A network the
tenant creates by the name "default" is the tenant's: it counts, and is used.

Routers. Each network has one router (its gateway address, DHCP, SNAT and the
floating IPs' 1:1 NAT), on one host: the one that scores highest for the
network by rendezvous hashing, sha256(network id, host name), among the hosts
that are up and enabled. Every reader computes the same answer from the host
list, with no write and no record to keep consistent; a network's router moves
only when its host goes down or is disabled (then to the next-highest host),
and a host that joins takes over only the networks it now scores highest for,
about 1/N of them. A distributed router (one per host) would spare the hop
through the router's host, at the price of every host holding every floating
IP's NAT and a MAC per host on the external network; one router per network is
Neutron's legacy L3 agent, and what this kernel's primitives do plainly.

What a host must have (GetHostNetworks): every network with a NIC on the host
or its router there, with every port of the network on every host (so the
agent programs forwarding entries: no flooding) and the tunnel endpoints of
every host that has the network; and the security groups of the host's ports
with what their rules need (security_groups.host_groups).
"""

from __future__ import annotations

import builtins
import hashlib
import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Network

from control import deadlines
from control.config import ControlConfig
from control.errors import (
    AlreadyExists,
    CloudError,
    Conflict,
    InvalidArgument,
    InvalidTransition,
    NotFound,
)
from control.identity.accounts import check_project, expect_project_into
from control.identity.quotas import Quotas, QuotaValues
from control.models import FloatingIp, Host, Instance, Network, Nic, SecurityGroup, validate_name
from control.network import ipam
from control.network.security_groups import HostGroup, host_groups
from control.store import keys, lookup
from control.store.etcd import Record, Store, Txn

log = logging.getLogger(__name__)

DEFAULT_NETWORK = "default"
NETWORKS_QUOTA = "networks"
# A create races with the other writers of its project's quota record and of
# the external addresses; each loss means another one won.
ATTEMPTS = 50



def vtep_of(host: Host) -> str:
    """A host's tunnel endpoint: the IP part of the address it registered (ip:port)."""
    return host.address.rpartition(":")[0].strip("[]")


def router_host(network_id: str, candidates: list[str]) -> str:
    """The host that runs the network's router: rendezvous hashing over the
    candidates (see the module's docstring). "" when there is none."""
    def score(host: str) -> bytes:
        return hashlib.sha256(f"{network_id}/{host}".encode()).digest()
    return max(candidates, key=score, default="")


def router_candidates(hosts: list[Host]) -> list[str]:
    """Hosts that may run routers: up (by the reconciler's verdict, not a clock,
    so a late heartbeat does not move routers) and enabled."""
    return [h.name for h in hosts if h.up and h.enabled]


@dataclass(frozen=True)
class Port:
    """A NIC as the hosts see it."""

    instance_id: str
    mac: str
    fixed_ip: str
    vtep: str
    floating_ip: str = ""
    security_group_ids: tuple[str, ...] = ()  # its instance's groups


@dataclass(frozen=True)
class HostNetwork:
    """A network as one host must make it (agent.proto's TenantNetwork)."""

    network: Network
    ports: list[Port]
    vteps: list[str]
    router_host: str


@dataclass(frozen=True)
class HostView:
    """agent.proto's HostNetworks."""

    networks: list[HostNetwork]
    external_cidr: str
    external_gateway: str
    external_bridge: str
    revision: int
    security_groups: list[HostGroup] = field(default_factory=list)  # of this host's ports


@dataclass(frozen=True)
class SpawnNic:
    """A NIC as a spawn asks for it: the NIC, its network and its router's host."""

    nic: Nic
    network: Network
    router_host: str = ""


@dataclass
class Usage:
    """How full a network is."""

    ports: int = 0
    free: int = 0
    holders: list[str] = field(default_factory=list)  # ids of the instances with a NIC on it


class Networks:
    def __init__(self, store: Store, quotas: Quotas, config: ControlConfig):
        self.store = store
        self.quotas = quotas
        self.config = config
        # nudge(host name): ask that host's agent to converge its networks now
        # (control/plane.py wires it once the agents' client exists).
        self.nudge: Callable[[str], object] = lambda host: None

    # ---------------------------------------------------------------- reads

    def record(self, project: str, id_or_name: str) -> Record:
        """The network's record, by id or name, in this project only (another
        project's network is NOT_FOUND, like one that does not exist)."""
        return lookup.by_id_or_name(self.store, id_or_name, lambda i: keys.network(project, i),
                                    lambda n: keys.network_name(project, n), "network")

    def get(self, project: str, id_or_name: str) -> Network:
        return Network(**self.record(project, id_or_name).value)

    def list(self, project: str) -> list[Network]:
        return sorted((Network(**r.value) for r in self.store.list(keys.networks(project))),
                      key=lambda n: n.name)

    def usage(self, network: Network) -> Usage:
        held = self.store.list(keys.fixed_ips(network.project, network.id))
        return Usage(ports=len(held), free=ipam.capacity(IPv4Network(network.cidr)) - len(held),
                     holders=sorted({r.value["instance_id"] for r in held}))

    # ---------------------------------------------------------------- create, delete

    def create(self, project: str, name: str, cidr: str = "", counted: bool = True) -> Network:
        """Make a network, with its VNI, SNAT address and quota charge, in one
        transaction. Bad input: INVALID_ARGUMENT; name taken: ALREADY_EXISTS;
        over quota or no external address left: RESOURCE_EXHAUSTED; nothing
        written on any refusal."""
        validate_name(name, "network name")
        subnet = ipam.parse_cidr(cidr or ipam.DEFAULT_CIDR)
        network_id = str(uuid.uuid4())
        for attempt in range(ATTEMPTS):
            if attempt:
                deadlines.check(f"the create of network {name!r}")
                time.sleep(random.uniform(0, 0.002 * min(attempt, 10)))
            if self.store.get(keys.network_name(project, name)) is not None:
                raise AlreadyExists(f"a network named {name!r} already exists")
            txn = Txn()
            vni = random.randint(*self.config.vni_range)  # a taken one is retried
            snat_ip = ipam.external_address_into(txn, self.store, self.config.external_cidr, {
                "kind": "snat", "project": project, "network_id": network_id})
            network = Network(id=network_id, project=project, name=name, cidr=str(subnet),
                              gateway_ip=str(ipam.gateway_of(subnet)), mtu=self.config.network_mtu(),
                              vni=vni, snat_ip=snat_ip, counted=counted)
            (txn.expect_absent(keys.network_vni(vni))
             .put(keys.network_vni(vni), {"network_id": network_id, "project": project})
             .expect_absent(keys.network_name(project, name))
             .put(keys.network_name(project, name), {"id": network_id})
             .put(keys.network(project, network_id), network.model_dump(mode="json"))
             .put(keys.network_index(network_id), {"project": project}))
            if counted:
                self.quotas.claim_into(txn, project, QuotaValues(resources={NETWORKS_QUOTA: 1}))
                guard = None
            else:
                guard = expect_project_into(self.store, txn, project)
            if self.store.commit(txn):
                log.info("network %s (%s, %s, VNI %d) created in %s", network_id, name, subnet, vni,
                         project)
                return network
            if guard is not None:
                check_project(self.store, guard)
        raise Conflict(f"too many concurrent changes in project {project}; try again")

    def default(self, project: str) -> Network:
        """The project's "default" network, made now if it has none (see the
        module's docstring: not counted in the quota; two first uses make one)."""
        return Network(**self._default_record(project).value)

    def _default_record(self, project: str) -> Record:
        try:
            return self.record(project, DEFAULT_NETWORK)
        except NotFound:
            pass
        try:
            self.create(project, DEFAULT_NETWORK, ipam.DEFAULT_CIDR, counted=False)
        except AlreadyExists:
            pass  # made meanwhile by another create: that one is the project's
        return self.record(project, DEFAULT_NETWORK)

    def delete(self, project: str, id_or_name: str) -> None:
        """Delete a network no NIC is on, giving back its name, VNI, SNAT address and
        quota in one transaction. FAILED_PRECONDITION naming the instances on it."""
        for _ in range(ATTEMPTS):
            record = self.record(project, id_or_name)
            network = Network(**record.value)
            txn = (Txn().expect(record).expect_empty(keys.fixed_ips(project, network.id))
                   .delete(record.key).delete(keys.network_name(project, network.name))
                   .delete(keys.network_index(network.id)).delete(keys.network_vni(network.vni))
                   .delete(keys.external_ip(network.snat_ip)))
            if network.counted:
                self.quotas.release_into(txn, project, QuotaValues(resources={NETWORKS_QUOTA: 1}))
            router = self.router_of(network.id)
            if self.store.commit(txn):
                log.info("network %s (%s) deleted from %s", network.id, network.name, project)
                self._nudge_router(router, network.id)
                return
            holders = self.usage(network).holders
            if holders:
                names = [self._instance_name(project, i) for i in holders]
                raise InvalidTransition(f"network {network.name} has NICs of instances "
                                        f"{', '.join(names)}: delete them first")
        raise Conflict(f"network {id_or_name!r} is changing too often; try again")

    def _nudge_router(self, host: str, network_id: str) -> None:
        """With no NIC left, only the router's host has the network: tell it to
        remove the router now (best effort: it also converges on its timer)."""
        if not host:
            return
        try:
            self.nudge(host)
        except CloudError as exc:
            log.info("nudging %s about deleted network %s failed (it converges on its timer): %s",
                     host, network_id, exc)

    def _instance_name(self, project: str, instance_id: str) -> str:
        record = self.store.get(keys.instance(project, instance_id))
        return record.value["name"] if record else instance_id

    # ---------------------------------------------------------------- NICs of a new instance

    def for_instance(self, project: str, refs: builtins.list[str]) -> builtins.list[Record]:
        """The networks a new instance gets a NIC on: those named (ids or names),
        or the project's default network. NOT_FOUND for one not in the project."""
        if not refs:
            return [self._default_record(project)]
        found = [self.record(project, ref) for ref in refs]
        ids = [r.value["id"] for r in found]
        if len(set(ids)) != len(ids):
            raise InvalidArgument("a network is listed twice: one NIC per network")
        return found

    def reread(self, found: builtins.list[Record]) -> builtins.list[Record]:
        """The same networks' records again (NOT_FOUND for one deleted meanwhile)."""
        again = []
        for record in found:
            current = self.store.get(record.key)
            if current is None:
                raise NotFound(f"network {record.value['name']!r} not found (deleted meanwhile)")
            again.append(current)
        return again

    def nics_into(self, txn: Txn, networks: builtins.list[Record], instance_id: str,
                  ) -> builtins.list[Nic]:
        """A NIC on each network for the instance, claimed in `txn` (which then
        commits only if those networks still exist). ResourceExhausted naming
        the first network that is full."""
        nics = []
        for record in networks:
            txn.expect(record)
            nics.append(ipam.nic_into(txn, self.store, Network(**record.value), instance_id))
        return nics

    # ---------------------------------------------------------------- the hosts' view

    def router_of(self, network_id: str) -> str:
        hosts = [Host(**r.value) for r in self.store.list(keys.hosts())]
        return router_host(network_id, router_candidates(hosts))

    def hosts_of(self, project: str, network_ids: set[str]) -> set[str]:
        """The hosts that have any of these networks of the project: those with a
        NIC on one (an instance placed there) and their routers' hosts. The ones
        to nudge when a port comes or goes, so their forwarding entries and DHCP
        leases change now, not at their next poll."""
        if not network_ids:
            return set()
        hosts = {self.router_of(n) for n in network_ids}
        for record in self.store.list(keys.instances(project)):
            instance = Instance(**record.value)
            if instance.host and any(n.network_id in network_ids for n in instance.nics):
                hosts.add(instance.host)
        return hosts - {""}

    def spawn_nics(self, instance: Instance) -> builtins.list[SpawnNic]:
        """What a spawn of the instance sends for its NICs (a network deleted
        meanwhile cannot be: it has this instance's NIC on it)."""
        found = []
        for nic in instance.nics:
            record = self.store.get(keys.network(instance.project, nic.network_id))
            if record is None:
                raise NotFound(f"network {nic.network_name} of instance {instance.name} is gone")
            found.append(SpawnNic(nic, Network(**record.value), self.router_of(nic.network_id)))
        return found

    def host_view(self, host_name: str) -> HostView:
        """The tenant networks `host_name` must have, read as one snapshot (every
        read at one store revision, which the agent gets back)."""
        host_records, revision = self.store.list_at_revision(keys.hosts())
        hosts = [Host(**r.value) for r in host_records]
        vteps = {h.name: vtep_of(h) for h in hosts}
        candidates = router_candidates(hosts)
        index, _ = self.store.list_at_revision(keys.network_indexes(), revision)
        found = []
        groups: list[HostGroup] = []
        for project in sorted({r.value["project"] for r in index}):
            networks = [Network(**r.value)
                        for r in self.store.list_at_revision(keys.networks(project), revision)[0]]
            if not networks:
                continue
            instances = [Instance(**r.value)
                         for r in self.store.list_at_revision(keys.instances(project), revision)[0]]
            floating = {(f.instance_id, f.network_id): f.address for f in (
                FloatingIp(**r.value)
                for r in self.store.list_at_revision(keys.floating_ips(project), revision)[0])
                if f.instance_id}
            for network in networks:
                placed = [(i, n) for i in instances if i.host for n in i.nics
                          if n.network_id == network.id]
                router = router_host(network.id, candidates)
                if router != host_name and not any(i.host == host_name for i, _ in placed):
                    continue
                ports = [Port(i.id, n.mac, n.fixed_ip, vteps.get(i.host, ""),
                              floating.get((i.id, network.id), ""),
                              tuple(g.id for g in i.security_groups)) for i, n in placed]
                on = {vteps[h] for h in {i.host for i, _ in placed} | {router} if h in vteps}
                found.append(HostNetwork(network, ports, sorted(on), router))
            local = [i for i in instances if i.host == host_name and i.nics and i.security_groups]
            if local:
                in_project = [SecurityGroup(**r.value) for r in self.store.list_at_revision(
                    keys.security_groups(project), revision)[0]]
                groups.extend(host_groups(in_project, instances, local))
        external = ipam.external_network(self.config.external_cidr)
        return HostView(found, str(external), str(ipam.gateway_of(external)),
                        self.config.external_bridge, revision, groups)
