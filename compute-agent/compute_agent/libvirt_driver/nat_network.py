"""The host's guests on one libvirt NAT network with DHCP (the network before tenant
networks): a networking implementation (network.py) for the libvirt driver.

libvirt itself creates each guest's tap on the network's bridge when the domain
starts, so plugging only tells the domain which network to join; the plugs are
recorded (NicRecords) so plugged() can say which instance each NIC is for.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from pathlib import Path

import libvirt

from compute_agent.domain_xml import network_xml
from compute_agent.errors import NetworkError
from compute_agent.network import (
    HostNetworking,
    InterfaceDevice,
    NicRecords,
    NicSpec,
    PluggedNic,
    check_nic,
)

log = logging.getLogger(__name__)


class LibvirtNatNetwork(HostNetworking):
    def __init__(self, connect: Callable[[], libvirt.virConnect], records_dir: Path,
                 name: str = "cloud-net", bridge: str = "cloudbr0", cidr: str = "10.213.0.0/24"):
        self.connect = connect  # the driver's connection (opened again if it dropped)
        self.records = NicRecords(records_dir)
        self.name = name
        self.bridge = bridge
        self.cidr = ipaddress.ip_network(cidr)

    def ensure_host(self) -> None:
        """Make sure the host's NAT network for guests exists and is running."""
        conn = self.connect()
        try:
            try:
                network = conn.networkLookupByName(self.name)
            except libvirt.libvirtError:
                hosts = list(self.cidr.hosts())
                xml = network_xml(self.name, self.bridge, gateway=str(hosts[0]),
                                  netmask=str(self.cidr.netmask),
                                  dhcp_start=str(hosts[1]), dhcp_end=str(hosts[-1]))
                network = conn.networkDefineXML(xml)
                log.info("defined network %s (%s)", self.name, self.cidr)
            if not network.isActive():
                network.create()
            network.setAutostart(True)
        except libvirt.libvirtError as exc:
            raise NetworkError(f"cannot set up network {self.name}: {exc}") from exc

    def plug(self, instance_id: str, index: int, nic: NicSpec) -> InterfaceDevice:
        check_nic(instance_id, index, nic)
        # One network per host: a NIC asks for it by its name, or for the default.
        if nic.network_id not in ("", self.name):
            raise NetworkError(f"no network {nic.network_id!r} on this host (only {self.name})")
        device = InterfaceDevice("network", self.name, nic.mac)
        self.records.put(instance_id, index, device)
        return device

    def unplug(self, instance_id: str, index: int) -> bool:
        return self.records.remove(instance_id, index)

    def plugged(self) -> list[PluggedNic]:
        return self.records.all()
