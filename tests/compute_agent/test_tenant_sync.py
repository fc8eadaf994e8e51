"""The agent's network sync (compute_agent/tenant/sync.py) over real gRPC, against
the kernel of a host namespace (tenant_lab.py); and the SyncNetworks RPC.

The control plane's side is a HostService answering GetHostNetworks with what
the test sets, as test_heartbeat.py's listener answers heartbeats: the records
behind it are the control plane's tests' business. It listens on a unix socket,
which the agent in its namespace reaches (a loopback port would be the
namespace's own)."""

from __future__ import annotations

import dataclasses
import time
from concurrent import futures

import grpc
import pytest
from cloudapi.v1 import agent_pb2, agent_pb2_grpc
from compute_agent.fake_driver import FakeDriver
from compute_agent.server import ComputeAgentServicer
from compute_agent.tenant.firewall import Firewall
from compute_agent.tenant.model import Network
from compute_agent.tenant.networking import TenantNetworking
from compute_agent.tenant.sync import NetworkSync, host_networks_fetcher
from compute_agent.tls import CHANNEL_OPTIONS

from tests.compute_agent.tenant_lab import lab, network, port
from tests.conftest import until

INTERVAL_S = 0.2
FETCH_TIMEOUT_S = 1.0  # a fetch from a control plane that is down gives up after this


def to_proto(networks: list[Network]) -> agent_pb2.HostNetworks:
    return agent_pb2.HostNetworks(networks=[agent_pb2.TenantNetwork(
        id=n.id, project=n.project, vni=n.vni, cidr=n.cidr, gateway_ip=n.gateway_ip, mtu=n.mtu,
        vteps=n.vteps, router_host=n.router_host, snat_ip=n.snat_ip,
        ports=[agent_pb2.NetworkPort(instance_id=p.instance_id, mac=p.mac, fixed_ip=p.fixed_ip,
                                     vtep=p.vtep, floating_ip=p.floating_ip) for p in n.ports])
        for n in networks])


class ControlPlane(agent_pb2_grpc.HostServiceServicer):
    def __init__(self, socket: str):
        self.socket = socket
        self.desired: list[Network] = []
        self.server: grpc.Server | None = None

    def GetHostNetworks(self, request, context):
        return to_proto(self.desired)

    def start(self) -> None:
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        agent_pb2_grpc.add_HostServiceServicer_to_server(self, self.server)
        self.server.add_insecure_port(f"unix:{self.socket}")
        self.server.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(grace=None).wait()


@pytest.fixture
def synced(tmp_path):
    """h1 has a NetworkSync (loop every INTERVAL_S once started) against the
    control plane, with a firewall (security_groups on, the agent's default)."""
    socket = str(tmp_path / "control.sock")

    def build(vtep, name, state):
        channel = grpc.insecure_channel(f"unix:{socket}", options=CHANNEL_OPTIONS)  # the agent's backoff
        return NetworkSync(TenantNetworking(vtep, name, state, firewall=Firewall(vtep)),
                           host_networks_fetcher(channel, timeout_s=FETCH_TIMEOUT_S), INTERVAL_S)

    # The hosts fork before the control plane starts any gRPC thread in this process.
    with lab(tmp_path, build) as t:
        control = ControlPlane(socket)
        control.start()
        try:
            yield t, control
        finally:
            control.stop()
            for host in t.hosts.values():
                host.stop()


def test_a_nudge_converges_at_once_and_answers_with_the_changes(synced):
    t, control = synced
    h1 = t.hosts["h1"]
    a = network(601, port(11, "h1", 601), port(12, "h2", 601))
    control.desired = [a]
    changes = h1.sync()  # no loop running: only the nudge converges
    assert "add bridge brq-601" in changes
    assert f"add fdb {a.ports[1].mac} dst 192.0.2.2 on vxlan-601" in changes
    assert h1.links() == {"brq-601", "vxlan-601"}
    assert h1.sync() == []


def test_a_firewall_only_nudge_converges_the_firewall_alone(synced):
    """After a security group change the control plane asks for the firewall
    alone (SyncNetworksRequest.firewall_only): the rest waits for a whole pass."""
    t, control = synced
    h1 = t.hosts["h1"]
    control.desired = [network(601, port(11, "h1", 601), port(12, "h2", 601))]
    changes = h1.sync(True)
    assert changes and all(c.startswith("firewall: ") for c in changes), changes
    assert h1.links() == set(), "no bridge: only the firewall was converged"
    changes = h1.sync()
    assert "add bridge brq-601" in changes and not any(c.startswith("firewall: ") for c in changes)
    assert h1.sync(True) == [] and h1.sync() == []


def test_the_loop_converges_and_keeps_all_while_the_control_plane_is_down(synced):
    t, control = synced
    h1 = t.hosts["h1"]
    a = network(601, port(11, "h1", 601), port(12, "h2", 601))
    control.desired = [a]
    h1.start()
    # Bound: one interval (0.2 s) plus a converge (about 0.05 s) plus the fetch.
    until(lambda: h1.links() == {"brq-601", "vxlan-601"}, timeout_s=3, what="the loop made a")

    control.stop()  # the control plane goes away: nothing is removed
    time.sleep(5 * INTERVAL_S)
    assert h1.links() == {"brq-601", "vxlan-601"} and len(h1.fdb(601)) == 2
    with pytest.raises(RuntimeError, match="DEADLINE_EXCEEDED"):  # a nudge waited for the channel
        h1.sync()

    control.desired = [network(602, port(11, "h1", 602))]
    control.start()
    # Bound: the channel's reconnect backoff (2 s at most) plus an interval and a converge.
    until(lambda: h1.links() == {"brq-602", "vxlan-602"}, timeout_s=5, what="the loop made b")
    control.desired = []
    until(lambda: h1.links() == set(), timeout_s=3, what="the loop removed b")


def test_sync_networks_on_a_nat_host_answers_no_changes():
    def unreachable():
        raise AssertionError("a NAT host never asks for its networks")

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = ComputeAgentServicer(FakeDriver(), images=None,
                                    networks=NetworkSync(None, unreachable))
    agent_pb2_grpc.add_ComputeAgentServicer_to_server(servicer, server)
    port_ = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port_}") as channel:
            response = agent_pb2_grpc.ComputeAgentStub(channel).SyncNetworks(
                agent_pb2.SyncNetworksRequest(), timeout=5)
        assert list(response.changes) == []
    finally:
        server.stop(grace=None)


def test_a_spawns_nic_brings_its_tenant_network():
    """What Spawn passes to the driver: the NIC with its network, so the host
    makes the network's segment before any sync (networking.py's plug)."""
    from compute_agent.network import NicSpec
    from compute_agent.server import nic_spec

    net = network(701, port(11, "h1", 701))
    sent = to_proto([net]).networks[0]
    segment = agent_pb2.NetworkSegment(
        id=sent.id, project=sent.project, vni=sent.vni, cidr=sent.cidr, gateway_ip=sent.gateway_ip,
        mtu=sent.mtu, router_host=sent.router_host, snat_ip=sent.snat_ip)
    nic = agent_pb2.GuestNic(network_id=net.id, mac=net.ports[0].mac, fixed_ip="10.0.0.11",
                             network=segment)
    # The network without its ports and tunnel endpoints: those come with the next sync.
    without_ports = dataclasses.replace(net, ports=(), vteps=())
    assert nic_spec(nic) == NicSpec(net.id, net.ports[0].mac, "10.0.0.11", without_ports)
    assert nic_spec(agent_pb2.GuestNic(mac="52:54:00:00:00:01")) == NicSpec(mac="52:54:00:00:00:01")
