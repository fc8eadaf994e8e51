"""The agent's network sync: fetch what this host must have of the tenant networks
from the control plane (HostService.GetHostNetworks, over the agent's mutual-TLS
channel) and converge to it (networking.py), at start, every interval and when
the control plane nudges (ComputeAgent.SyncNetworks, after a change the host must
apply at once).

Level-triggered: every pass compares the whole desired state with the kernel, so
a missed nudge costs at most one interval, and a restarted agent repairs what
drifted while it was down. While the control plane is unreachable nothing is
removed: the host keeps what it has (the data plane keeps forwarding) and the
next pass tries again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import grpc
from cloudapi.v1 import agent_pb2, agent_pb2_grpc

from compute_agent.errors import NetworkError
from compute_agent.tenant.model import HostNetworks, from_proto
from compute_agent.tenant.networking import TenantNetworking

log = logging.getLogger(__name__)

FETCH_TIMEOUT_S = 10  # one read of etcd on the control plane's side; it answers in milliseconds


def host_networks_fetcher(channel: grpc.Channel, timeout_s: float = FETCH_TIMEOUT_S,
                          ) -> Callable[[], HostNetworks]:
    """fetch(): this host's desired tenant networks, from the control plane."""
    stub = agent_pb2_grpc.HostServiceStub(channel)

    def fetch() -> HostNetworks:
        # wait_for_ready: a nudge that comes just as the channel reconnects (its
        # backoff, at most 2 s: tls.py) waits for it instead of failing.
        return from_proto(stub.GetHostNetworks(agent_pb2.GetHostNetworksRequest(),
                                               timeout=timeout_s, wait_for_ready=True))
    return fetch


class NetworkSync:
    """Converges `networking` to what `fetch` returns; with networking None (the
    host is on the NAT network), does nothing and reports no changes."""

    def __init__(self, networking: TenantNetworking | None, fetch: Callable[[], HostNetworks],
                 interval_s: float = 5.0):
        self.networking = networking
        self.fetch = fetch
        self.interval_s = interval_s
        self.last: HostNetworks | None = None  # the desired state last applied
        self._pass = threading.Lock()           # one pass at a time: the loop's or a nudge's
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="network-sync", daemon=True)

    def start(self) -> None:
        if self.networking is not None:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=FETCH_TIMEOUT_S + 5)

    def sync(self, firewall_only: bool = False) -> list[str]:
        """One pass: fetch, converge (with firewall_only, the firewall alone: a
        nudge after a security group change); the changes made. grpc.RpcError
        when the control plane cannot be reached, NetworkError when the desired
        state cannot be applied: either way nothing was removed."""
        if self.networking is None:
            return []
        with self._pass:
            desired = self.fetch()
            if firewall_only:
                changes = self.networking.converge_firewall(desired)
            else:
                changes = self.networking.converge(desired)
                self.last = desired
        if changes:
            log.info("networks at revision %d: %s", desired.revision, "; ".join(changes))
        return changes

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sync()
            except grpc.RpcError as exc:
                log.warning("network sync: control plane unreachable (%s); keeping what is here",
                            exc.details() or exc.code())
            except NetworkError as exc:
                log.error("network sync: %s", exc)
            except Exception:
                log.exception("network sync failed")
            self._stop.wait(self.interval_s)
