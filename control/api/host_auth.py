"""The agent listener: HostService over mutual TLS, on its own port.

Only peers with a certificate of the cloud's CA complete the handshake
(require_client_auth). Then every call is checked against that certificate
(control/pki.py identities): it must be a host's (OU `host`), and a request
that names a host must name the certificate's own, so host A's certificate
cannot register, heartbeat or report metrics for host B (PERMISSION_DENIED,
nothing written). The public API port does not serve HostService at all.
"""

from __future__ import annotations

import functools
from concurrent import futures
from pathlib import Path

import grpc
from cloudapi.v1 import agent_pb2, agent_pb2_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from control import errors
from control.api.agents import HostServicer
from control.api.interceptors import ApiInterceptor
from control.api.limits import LimitsInterceptor, agent_listener_services, server_options
from control.config import ControlConfig
from control.pki import ROLE_HOST, Identity, identity_of
from control.plane import ControlPlane

# The request field naming the host a call speaks for; None: any host may call.
# A HostService RPC missing here is refused to everyone (closed by default).
HOST_FIELD: dict[str, str | None] = {
    "RegisterHost": "name",
    "Heartbeat": "name",
    "ReportMetrics": "name",
    "FetchImageFile": None,  # an image the control plane serves to every registered host
    "GetHostNetworks": None,  # names no host: answers for the certificate's own
}


@functools.lru_cache(maxsize=4096)
def _identity(pem: bytes) -> Identity:
    return identity_of(pem)


def peer_identity(context: grpc.ServicerContext) -> Identity:
    """Who the verified peer certificate of this call says it is."""
    pem = (context.auth_context().get("x509_pem_cert") or [b""])[0]
    if not pem:
        raise errors.Unauthenticated("host calls need the host's TLS certificate")
    return _identity(pem)


class HostCheck:
    """ApiInterceptor's check_host on the agent listener."""

    def __init__(self, plane: ControlPlane):
        self.plane = plane

    def __call__(self, method: str, request: object, context: grpc.ServicerContext) -> None:
        peer = peer_identity(context)
        rpc = method.rsplit("/", 1)[1]
        if peer.role != ROLE_HOST:
            raise errors.PermissionDenied(
                f"{peer.name or 'this certificate'} is not a host's certificate")
        if rpc not in HOST_FIELD:
            raise errors.PermissionDenied(f"hosts may not call {rpc}")
        field = HOST_FIELD[rpc]
        if field is not None:
            named = getattr(request, field)
            if named != peer.name:
                raise errors.PermissionDenied(
                    f"host {peer.name}'s certificate cannot {rpc} for host {named!r}")
        else:
            if self.plane.hosts.find(peer.name) is None:
                raise errors.PermissionDenied(f"host {peer.name} is not registered")


def server_credentials(config: ControlConfig) -> grpc.ServerCredentials:
    files = {"tls_ca_file": config.tls_ca_file, "tls_cert_file": config.tls_cert_file,
             "tls_key_file": config.tls_key_file}
    missing = [name for name, path in files.items() if not path]
    if missing:
        raise ValueError(f"the agent listener ({config.agent_listen}) needs {', '.join(missing)}: "
                         "agents talk to the control plane over mutual TLS only "
                         "(python -m control.pki init --dir PKI_DIR)")
    return grpc.ssl_server_credentials(
        [(Path(config.tls_key_file).read_bytes(), Path(config.tls_cert_file).read_bytes())],
        root_certificates=Path(config.tls_ca_file).read_bytes(), require_client_auth=True)


def create_agent_server(config: ControlConfig, plane: ControlPlane) -> tuple[grpc.Server, int]:
    """HostService (and health checks) on config.agent_listen, mutual TLS required.
    Returns the unstarted server and its port (port 0 picks a free one)."""
    credentials = server_credentials(config)
    services = agent_listener_services()
    # Request sizes: control/api/limits.py (checked inside ApiInterceptor).
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16),
                         options=server_options(services),
                         interceptors=[ApiInterceptor(plane.identity.authenticate,
                                                      check_host=HostCheck(plane)),
                                       LimitsInterceptor(services)])
    agent_pb2_grpc.add_HostServiceServicer_to_server(HostServicer(plane), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in (agent_pb2.DESCRIPTOR.services_by_name["HostService"].full_name, ""):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    port = server.add_secure_port(config.agent_listen, credentials)
    return server, port
