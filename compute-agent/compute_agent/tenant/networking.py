"""TenantNetworking: the networking contract (network.py) for tenant networks, and
the convergence of the host's whole share of them.

plug() makes the NIC's network exist on this host at once (its layer 2: l2.py),
from the network the Spawn request brought, so the guest can start before the
next sync; the domain then gets <interface type='bridge'> on the network's
bridge (libvirt's network driver is not used for tenant networks: it is not
in the embedded QEMU driver either). converge() applies what the control plane
says this host must have (sync.py fetches it): every network's layer 2, then
the routers of the networks whose router runs here (tenant/router.py), then,
with a firewall (the agent's security_groups setting), the security groups and
anti-spoofing of this host's NICs (tenant/firewall.py). With a firewall, a NIC's
tap is named by it (firewall.tap_name, the domain's <target dev>): a tap the
desired state does not list yet (a guest started before the next sync) passes
nothing until the sync that lists it.

A NIC with no network (network_id "") goes to `default`, the host's NAT network,
as before tenant networks. Plugs are recorded on disk (NicRecords, as the NAT
network does): the bridges of plugged NICs are kept even when the desired state
does not (yet) list their network, so a sync read just before a spawn's plug
never takes the bridge from under a starting guest.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Protocol

from compute_agent.errors import NetworkError
from compute_agent.network import (
    HostNetworking,
    InterfaceDevice,
    NicRecords,
    NicSpec,
    PluggedNic,
    check_nic,
)
from compute_agent.tenant.firewall import Firewall
from compute_agent.tenant.l2 import L2
from compute_agent.tenant.model import External, HostNetworks, Network

log = logging.getLogger(__name__)


class Router(Protocol):
    """What converge asks of the routers (tenant/router.py's Router; a protocol
    so this module and its tests need no router)."""

    def converge(self, network: Network, external: External) -> list[str]:
        """Make the network's router on this host as desired; the changes made."""

    def remove_absent(self, keep_ids: set[str]) -> list[str]:
        """Remove the routers of networks not in keep_ids; the changes made."""


class TenantNetworking(HostNetworking):
    def __init__(self, local_vtep: str, host_name: str, records_dir: Path,
                 default: HostNetworking | None = None, router: Router | None = None,
                 tag: str = "", firewall: Firewall | None = None):
        self.l2 = L2(local_vtep, tag)  # tag: names this agent's devices (l2.py)
        self.host_name = host_name       # routers run where router_host names this host
        self.records = NicRecords(records_dir)
        self.default = default           # NICs without a network; None: refused
        self.router = router             # None: this host runs no routers
        self.firewall = firewall         # None: the guests' traffic is not filtered
        self.desired: dict[str, Network] = {}  # as of the last converge, by id
        # One change at a time to the kernel: a spawn's plug and the sync loop.
        self._lock = threading.Lock()

    def ensure_host(self) -> None:
        """The networks themselves come with plugs and converges; the default
        network, if any, is made here."""
        if self.default is not None:
            self.default.ensure_host()

    def plug(self, instance_id: str, index: int, nic: NicSpec) -> InterfaceDevice:
        check_nic(instance_id, index, nic)
        if not nic.network_id:
            if self.default is None:
                raise NetworkError("a NIC needs a tenant network on this host (no default network)")
            return self.default.plug(instance_id, index, nic)
        with self._lock:
            # The network as last converged, when this host has it: it carries the
            # forwarding entries to the other hosts. The spawn's copy has no ports, and
            # ensuring it would delete those entries until the next sync. Read under
            # the lock: a converge running meanwhile may add entries the copy read
            # before it would not have.
            network = self.desired.get(nic.network_id) or nic.network
            if network is None:
                raise NetworkError(f"no network {nic.network_id!r} on this host, and the NIC "
                                   "does not bring it")
            if network.id != nic.network_id:
                raise NetworkError(f"the NIC is for network {nic.network_id!r} but brings {network.id!r}")
            changes = self.l2.ensure(network)  # refuses a bad network before any change
        if changes:
            log.info("plug %s/%d: %s", instance_id, index, "; ".join(changes))
        tap = self.firewall.tap(nic.mac) if self.firewall is not None and nic.mac else ""
        device = InterfaceDevice("bridge", self.l2.bridge(network.vni), nic.mac, target=tap)
        self.records.put(instance_id, index, device)
        return device

    def unplug(self, instance_id: str, index: int) -> bool:
        # The bridge stays until a converge finds no network needs it.
        mine = self.records.remove(instance_id, index)
        theirs = self.default is not None and self.default.unplug(instance_id, index)
        return mine or theirs

    def plugged(self) -> list[PluggedNic]:
        nics = self.records.all() + (self.default.plugged() if self.default is not None else [])
        return sorted(nics, key=lambda p: (p.instance_id, p.index))

    def converge(self, desired: HostNetworks) -> list[str]:
        """Make this host's tenant networks what the control plane says; the
        changes made ([] when all was right). NetworkError for a desired state
        that cannot be applied, before anything is changed."""
        routed = [n for n in desired.networks if n.router_host == self.host_name]
        with self._lock:
            changes: list[str] = []
            # Routers no longer here go first (their veths leave the bridges l2
            # may delete); the routers here come after l2 (they plug into its bridges).
            if self.router is not None:
                changes += self.router.remove_absent({n.id for n in routed})
            keep = {p.device.source for p in self.records.all()}
            changes += self.l2.converge(desired.networks, keep)
            if self.router is not None:
                for network in routed:
                    changes += self.router.converge(network, desired.external)
            if self.firewall is not None:
                changes += self.firewall.converge(desired)
            self.desired = {n.id: n for n in desired.networks}
        return changes

    def converge_firewall(self, desired: HostNetworks) -> list[str]:
        """Only the firewall (a security group changed; the networks' devices,
        forwarding entries and routers wait for the next whole converge)."""
        if self.firewall is None:
            return []
        with self._lock:
            return self.firewall.converge(desired)
