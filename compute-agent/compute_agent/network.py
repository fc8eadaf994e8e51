"""The networking contract: a guest's NICs on this host (after os-vif's plug/unplug).

The virtualization driver asks an implementation to plug each NIC of an instance
before it defines the domain, and puts what plug returns into the domain's
<interface>; it unplugs them when the instance is deleted. Implementations:
LibvirtNatNetwork (libvirt_driver/nat_network.py: every guest on one libvirt NAT network
per host, as before tenant networks) and FakeNetwork (below, in memory).
tests/compute_agent/test_network_contract.py checks every one of them.
"""

from __future__ import annotations

import json
import os
import re
import threading
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path

from compute_agent.errors import NetworkError
from compute_agent.tenant.model import Network

# A unicast MAC: the low bit of the first octet (multicast) clear, or QEMU refuses it.
MAC = re.compile(r"[0-9a-f][02468ace](:[0-9a-f]{2}){5}")
# Instance ids name files of implementations that keep records (UUIDs in practice).
INSTANCE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,63}")


@dataclass(frozen=True)
class NicSpec:
    """A NIC the control plane asks for (agent.proto's GuestNic)."""

    network_id: str = ""  # empty: the host's default network
    mac: str = ""         # empty: the hypervisor picks one when the domain is defined
    # A tenant network's NIC: its address and its network as the control plane sent
    # them, so the host can make the network's segment before the guest starts.
    fixed_ip: str = ""
    network: Network | None = None


@dataclass(frozen=True)
class InterfaceDevice:
    """What the domain's <interface> needs of a plugged NIC."""

    type: str             # "network": a libvirt network; "bridge": a host bridge
    source: str           # that network's or bridge's name
    mac: str = ""         # empty: no <mac>, libvirt generates one
    model: str = "virtio"
    target: str = ""      # the tap's name (<target dev>); empty: libvirt picks one (vnetN)


@dataclass(frozen=True)
class PluggedNic:
    instance_id: str
    index: int            # its place among the instance's NICs (0: the first)
    device: InterfaceDevice


class HostNetworking(ABC):
    """Promises: plug is idempotent (the same NIC again returns the same device);
    a refused plug (NetworkError) records nothing; unplug of a NIC that is not
    plugged succeeds (False); plugged() lists exactly what is plugged and not
    unplugged since, across restarts of the agent for real implementations."""

    @abstractmethod
    def ensure_host(self) -> None:
        """Set up what the host's NICs plug into. Safe to call again."""

    @abstractmethod
    def plug(self, instance_id: str, index: int, nic: NicSpec) -> InterfaceDevice:
        """Plug the instance's NIC number `index`; NetworkError for an unknown
        network or a malformed or multicast MAC."""

    @abstractmethod
    def unplug(self, instance_id: str, index: int) -> bool:
        """Unplug it; whether it was plugged."""

    @abstractmethod
    def plugged(self) -> list[PluggedNic]:
        """Every NIC plugged on this host, by instance and index."""

    def unplug_all(self, instance_id: str) -> bool:
        """Unplug every NIC of an instance; whether it had any."""
        found = [p.index for p in self.plugged() if p.instance_id == instance_id]
        for index in found:
            self.unplug(instance_id, index)
        return bool(found)


def check_nic(instance_id: str, index: int, nic: NicSpec) -> None:
    """The checks every implementation makes before plugging (NetworkError)."""
    if not INSTANCE_ID.fullmatch(instance_id):
        raise NetworkError(f"bad instance id {instance_id!r}")
    if index < 0:
        raise NetworkError(f"bad NIC index {index}")
    if nic.mac and not MAC.fullmatch(nic.mac):
        raise NetworkError(f"bad MAC address {nic.mac!r} (lower-case hex, unicast)")


class NicRecords:
    """Plugged NICs kept on disk, one JSON file per instance, for implementations
    whose kernel or libvirt state does not say which instance a NIC is for."""

    def __init__(self, directory: Path):
        self.directory = directory  # created on the first plug
        self._lock = threading.Lock()

    def _read(self, path: Path) -> dict[int, InterfaceDevice]:
        try:
            return {int(i): InterfaceDevice(**d) for i, d in json.loads(path.read_text()).items()}
        except FileNotFoundError:
            return {}

    def _write(self, instance_id: str, nics: dict[int, InterfaceDevice]) -> None:
        path = self.directory / f"{instance_id}.json"
        if not nics:
            path.unlink(missing_ok=True)
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        temp = path.with_suffix(".tmp")  # then renamed: a crash never leaves half a record
        temp.write_text(json.dumps({str(i): asdict(d) for i, d in sorted(nics.items())}))
        os.replace(temp, path)

    def put(self, instance_id: str, index: int, device: InterfaceDevice) -> None:
        with self._lock:
            nics = self._read(self.directory / f"{instance_id}.json")
            nics[index] = device
            self._write(instance_id, nics)

    def remove(self, instance_id: str, index: int) -> bool:
        if not INSTANCE_ID.fullmatch(instance_id):
            return False
        with self._lock:
            nics = self._read(self.directory / f"{instance_id}.json")
            existed = nics.pop(index, None) is not None
            self._write(instance_id, nics)
            return existed

    def all(self) -> list[PluggedNic]:
        if not self.directory.is_dir():
            return []
        with self._lock:
            return [PluggedNic(path.stem, index, device)
                    for path in sorted(self.directory.glob("*.json"))
                    for index, device in sorted(self._read(path).items())]


class FakeNetwork(HostNetworking):
    """In memory, with the contract of the real ones: for the fake driver and unit tests.
    `networks` are the network ids it knows besides the default (""); a NIC that
    brings its tenant network (nic.network with that id) plugs too, as on a real host."""

    def __init__(self, networks: tuple[str, ...] = ()):
        self.networks = {"", *networks}
        self.ready = False
        self._nics: dict[tuple[str, int], InterfaceDevice] = {}
        self._lock = threading.Lock()

    def ensure_host(self) -> None:
        self.ready = True

    def plug(self, instance_id: str, index: int, nic: NicSpec) -> InterfaceDevice:
        check_nic(instance_id, index, nic)
        brought = nic.network is not None and nic.network.id == nic.network_id
        if nic.network_id not in self.networks and not brought:
            raise NetworkError(f"no network {nic.network_id!r} on this host")
        device = InterfaceDevice("bridge", f"fake-{nic.network_id or 'default'}", nic.mac)
        with self._lock:
            self._nics[(instance_id, index)] = device
        return device

    def unplug(self, instance_id: str, index: int) -> bool:
        with self._lock:
            return self._nics.pop((instance_id, index), None) is not None

    def plugged(self) -> list[PluggedNic]:
        with self._lock:
            return [PluggedNic(i, n, d) for (i, n), d in sorted(self._nics.items())]
