"""Agent settings, read from the `[agent]` table of a TOML file."""

from __future__ import annotations

import ipaddress
import socket
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator


class AgentConfig(BaseModel):
    host_name: str = socket.gethostname()
    listen: str = "127.0.0.1:50061"
    # The address the control plane calls; defaults to listen's host and bound port.
    advertise_address: str = ""
    # The control plane's agent endpoint (its agent_listen, not the public API);
    # with several API replicas, all their agent_listen, comma-separated (failover).
    control_endpoint: str = "127.0.0.1:50052"
    # Mutual TLS (python -m control.pki issue-host NAME): this host's certificate
    # and key, and the cloud's CA. Both ways only peers with a certificate of
    # that CA get through; the agent serves only the certificate named
    # control_name, and calls the control plane only if its certificate has
    # that name. Required: an agent without them does not start.
    tls_ca_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""
    control_name: str = "smallcloud-control"
    driver: Literal["libvirt", "fake"] = "libvirt"
    # Fake driver only: fail every spawn (to test rescheduling).
    fake_fail_spawn: bool = False
    # Fake driver only: seconds each spawn takes (fault tests kill processes mid-build).
    fake_spawn_delay_s: float = 0.0
    # Fake driver only: a JSON file {"name pattern": CPU percent} (fnmatch on the
    # instance's display name, first match wins; re-read when it changes) that
    # sets how busy its guests are, so metrics and autoscaling can be tested.
    fake_cpu_file: str = ""
    libvirt_uri: str = "qemu:///system"
    # kvm, qemu (software emulation), or auto: kvm only when /dev/kvm opens and
    # the CPU has vmx/svm (nested virtualization off means KVM guests hang).
    virt_type: Literal["kvm", "qemu", "auto"] = "auto"
    state_dir: str = "/var/lib/cloud-agent"
    # The NAT network the agent keeps on its host for its guests.
    network_name: str = "cloud-net"
    network_bridge: str = "cloudbr0"
    network_cidr: str = "10.213.0.0/24"
    # Guests' networks: "nat", the NAT network above on every host (as before
    # tenant networks); "tenant", each project's own networks (compute_agent/tenant/:
    # a bridge and a VXLAN device per network, routers), with the NAT network
    # kept for NICs that name no network.
    networking: Literal["nat", "tenant"] = "nat"
    # "tenant" only: this host's tunnel (underlay) IPv4 address, the local end of
    # its VXLAN devices: the address other hosts reach it on (UDP 4789).
    tunnel_address: str = ""
    # "tenant" only: how often the agent fetches and converges its networks
    # (besides at start and when the control plane nudges it).
    network_sync_interval_s: float = 5.0
    # "tenant" only: a tag of up to 3 lower-case letters or digits in the names of
    # this agent's devices and router namespaces (tenant/l2.py): bridges
    # brq<tag>-<vni>, VXLAN devices vxq<tag>-<vni> (untagged: brq-<vni>,
    # vxlan-<vni>), namespaces qrouter<tag>-<network id>. Names are machine-wide
    # and each agent removes the devices of its own naming that it does not want,
    # so agents sharing one network namespace (`make up`'s cloud and a test's
    # cloud on one machine) need different tags.
    device_tag: str = Field(default="", pattern=r"^[a-z0-9]{0,3}$")
    # "tenant" only, the routers this host runs (tenant/router.py): the prefix of
    # their namespaces ("" : "qrouter<device_tag>-"; agents sharing a machine need
    # different ones, neither a prefix of the other), and whether the external
    # bridge gets the external network's gateway address (a single host: this
    # machine is the upstream).
    router_namespace_prefix: str = ""
    external_host_gateway: bool = False
    # "tenant" only: security groups and anti-spoofing on this host's NICs
    # (tenant/firewall.py: nftables tables cloudfw<device_tag>, taps named
    # tq<device_tag>-...). Off: guests' traffic is not filtered at all, and a
    # guest can take its neighbours' addresses: only for a trusted single tenant.
    security_groups: bool = True
    # Until registered; then the control plane's heartbeat_interval_s applies.
    heartbeat_interval_s: float = 2.0
    # Memory reclaim (compute_agent/reclaim.py): what an idle guest does not use goes
    # back to the host through its balloon, down to max(floor_mb, floor_ratio x its
    # memory), and returns as soon as the guest needs it. Off: guests keep all of it.
    reclaim_enabled: bool = True
    reclaim_floor_mb: int = 128
    reclaim_floor_ratio: float = 0.25
    reclaim_idle_s: float = 30.0       # quiet this long (after boot, scale, busy) first
    reclaim_interval_s: float = 2.0
    reclaim_headroom_mb: int = 64      # left usable to an idle guest; busy below half
    reclaim_step_mb: int = 64          # most taken per interval


    @model_validator(mode="after")
    def _tenant_needs_a_tunnel(self) -> AgentConfig:
        if self.networking == "tenant":
            try:
                ipaddress.IPv4Address(self.tunnel_address)
            except ValueError:
                raise ValueError(f"networking = \"tenant\" needs tunnel_address, this host's "
                                 f"underlay IPv4 address (not {self.tunnel_address!r})") from None
        if self.network_sync_interval_s <= 0:
            raise ValueError("network_sync_interval_s must be positive")
        return self

    def router_prefix(self) -> str:
        """The router namespaces' prefix: the setting, or one from device_tag."""
        return self.router_namespace_prefix or f"qrouter{self.device_tag}-"


def load_config(path: str | Path) -> AgentConfig:
    with open(path, "rb") as f:
        return AgentConfig(**tomllib.load(f).get("agent", {}))
