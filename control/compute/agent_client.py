"""Calls from the control plane to the compute agents (the ComputeAgent gRPC service).

Over mutual TLS only: the control plane presents its certificate (CN
smallcloud-control, control/pki.py), and accepts an agent only if the agent's
certificate is of the cloud's CA and names the host registered at the address
called (the target name is set to that host's name), so host A's agent cannot
stand in for host B's.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from cloudapi.v1 import agent_pb2, agent_pb2_grpc
from cloudclient.endpoints import RECONNECT_OPTIONS

from control.errors import CloudError, InvalidTransition, Unavailable
from control.models import Image, Instance, Resources
from control.network.networks import SpawnNic

if TYPE_CHECKING:
    from control.config import ControlConfig
    from control.placement.hosts import Hosts


class SpawnFailed(CloudError):
    """The agent could not start the guest; it cleaned up what it had made."""


class AgentRefused(InvalidTransition):
    """The agent could not do an operation (stop, start, reboot, scale) in the
    guest's current state; nothing changed (FAILED_PRECONDITION to a caller)."""


@dataclass(frozen=True)
class GuestConfig:
    """What the agent puts on the guest's config drive."""

    hostname: str = ""
    public_keys: list[str] = field(default_factory=list)
    user_data: bytes = b""
    # Its NICs on tenant networks, with what the host needs to make their
    # segments before the guest starts. None: the host's default (NAT) network.
    nics: list[SpawnNic] = field(default_factory=list)


def channel_credentials(config: ControlConfig) -> grpc.ChannelCredentials | None:
    """The control plane's client credentials for agents; None when it has no certificate."""
    if not (config.tls_ca_file and config.tls_cert_file and config.tls_key_file):
        return None
    return grpc.ssl_channel_credentials(Path(config.tls_ca_file).read_bytes(),
                                        Path(config.tls_key_file).read_bytes(),
                                        Path(config.tls_cert_file).read_bytes())


def host_at(hosts: Hosts) -> Callable[[str], str]:
    """name_of for AgentClient: the name of the host registered at an address ("" if none)."""
    def name_of(address: str) -> str:
        return next((h.name for h in hosts.all() if h.address == address), "")
    return name_of


def guest_nic(spawn: SpawnNic) -> agent_pb2.GuestNic:
    """A NIC of a spawn: its address and MAC, and its network as the host makes it
    (ports and tunnel endpoints come with GetHostNetworks)."""
    n = spawn.network
    return agent_pb2.GuestNic(
        network_id=n.id, mac=spawn.nic.mac, fixed_ip=spawn.nic.fixed_ip,
        network=agent_pb2.NetworkSegment(id=n.id, project=n.project, vni=n.vni, cidr=n.cidr,
                                        gateway_ip=n.gateway_ip, mtu=n.mtu,
                                        router_host=spawn.router_host, snat_ip=n.snat_ip))


class AgentClient:
    """One channel per agent address, shared by all threads of the process.

    credentials: the control plane's (channel_credentials); without them every
    call is UNAVAILABLE, as agents take nothing but mutual TLS. name_of(address)
    names the host expected at an address; its agent's certificate must carry
    that name. It is asked once per channel, and again after the channel fails."""

    def __init__(self, timeout_s: float = 30.0,
                 credentials: grpc.ChannelCredentials | None = None,
                 name_of: Callable[[str], str] | None = None):
        self.timeout_s = timeout_s
        self.credentials = credentials
        self.name_of = name_of
        self._stubs: dict[str, agent_pb2_grpc.ComputeAgentStub] = {}
        self._lock = threading.Lock()

    def _stub(self, address: str) -> agent_pb2_grpc.ComputeAgentStub:
        with self._lock:
            stub = self._stubs.get(address)
        if stub is not None:
            return stub
        if self.credentials is None:
            raise Unavailable("the control plane has no TLS certificate (tls_cert_file, "
                              "tls_key_file, tls_ca_file): it cannot call compute agents")
        options: list[tuple[str, object]] = list(RECONNECT_OPTIONS)
        if self.name_of is not None:
            name = self.name_of(address)  # an etcd read: outside the lock
            if not name:
                raise Unavailable(f"no host is registered at {address}")
            options.append(("grpc.ssl_target_name_override", name))
        stub = agent_pb2_grpc.ComputeAgentStub(
            grpc.secure_channel(address, self.credentials, options=options))
        with self._lock:
            return self._stubs.setdefault(address, stub)

    def _forget(self, address: str) -> None:
        """Drop a failed channel: the next call asks which host is there again."""
        with self._lock:
            self._stubs.pop(address, None)

    def _call(self, address: str, method: str, request: object, timeout_s: float | None = None):
        try:
            return getattr(self._stub(address), method)(request, timeout=timeout_s or self.timeout_s)
        except grpc.RpcError as exc:
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                if exc.code() == grpc.StatusCode.UNAVAILABLE:
                    self._forget(address)
                raise Unavailable(f"compute agent at {address} unreachable: {exc.details()}") from exc
            detail = exc.details() or str(exc.code())
            if method == "Spawn":
                raise SpawnFailed(detail) from exc
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                raise AgentRefused(detail) from exc
            raise CloudError(f"compute agent at {address}: {detail}") from exc

    def spawn(self, address: str, instance: Instance, image: Image, timeout_s: float,
              guest: GuestConfig | None = None) -> str:
        guest = guest or GuestConfig()
        request = agent_pb2.SpawnRequest(
            instance_id=instance.id, name=instance.name, vcpus=instance.resources.vcpus,
            memory_mb=instance.resources.memory_mb, disk_gb=instance.resources.disk_gb,
            max_vcpus=instance.max_vcpus, max_memory_mb=instance.max_memory_mb,
            hostname=guest.hostname, public_keys=guest.public_keys, user_data=guest.user_data,
            image=agent_pb2.ImageSource(id=image.id, cmdline=image.cmdline,
                                        disk_format=image.disk_format,
                                        disk_sha256=image.disk_sha256,
                                        kernel_sha256=image.kernel_sha256,
                                        initrd_sha256=image.initrd_sha256),
            nics=[guest_nic(n) for n in guest.nics])
        return self._call(address, "Spawn", request, timeout_s).power_state

    def sync_networks(self, address: str, timeout_s: float = 3.0, firewall_only: bool = False,
                      ) -> list[str]:
        """Ask the agent to converge its tenant networks now (only its firewall,
        when only security groups changed); what it changed."""
        request = agent_pb2.SyncNetworksRequest(firewall_only=firewall_only)
        return list(self._call(address, "SyncNetworks", request, timeout_s).changes)

    def destroy(self, address: str, instance_id: str) -> bool:
        return self._call(address, "Destroy", agent_pb2.InstanceRef(instance_id=instance_id)).existed

    def console(self, address: str, instance_id: str, max_bytes: int) -> bytes:
        request = agent_pb2.AgentConsoleRequest(instance_id=instance_id, max_bytes=max_bytes)
        return self._call(address, "GetConsoleOutput", request).output

    def stop(self, address: str, instance_id: str, timeout_s: int) -> str:
        request = agent_pb2.StopRequest(instance_id=instance_id, timeout_s=timeout_s)
        return self._call(address, "Stop", request, timeout_s + 30).power_state

    def start(self, address: str, instance_id: str) -> str:
        return self._call(address, "Start", agent_pb2.InstanceRef(instance_id=instance_id)).power_state

    def reboot(self, address: str, instance_id: str, hard: bool) -> str:
        request = agent_pb2.RebootRequest(instance_id=instance_id, hard=hard)
        return self._call(address, "Reboot", request, 120).power_state

    def scale(self, address: str, instance_id: str, vcpus: int, memory_mb: int, disk_gb: int) -> str:
        request = agent_pb2.ScaleRequest(instance_id=instance_id, vcpus=vcpus, memory_mb=memory_mb,
                                         disk_gb=disk_gb)
        return self._call(address, "Scale", request).power_state

    def stats(self, address: str, instance_id: str) -> agent_pb2.InstanceStats:
        return self._call(address, "GetStats", agent_pb2.InstanceRef(instance_id=instance_id))

    def resize(self, address: str, instance: Instance, resources: Resources, max_vcpus: int,
               max_memory_mb: int) -> str:
        request = agent_pb2.ResizeRequest(
            instance_id=instance.id, vcpus=resources.vcpus, memory_mb=resources.memory_mb,
            disk_gb=resources.disk_gb, max_vcpus=max_vcpus, max_memory_mb=max_memory_mb)
        return self._call(address, "Resize", request).power_state
