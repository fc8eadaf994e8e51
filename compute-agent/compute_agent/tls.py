"""Mutual TLS of the agent, both ways (the files come from `python -m control.pki`).

- Its ComputeAgent server takes only clients with a certificate of the cloud's
  CA (checked in the handshake), and of those only the control plane's: the
  certificate whose CN is `control_name` and OU `control` (checked by
  ControlOnly on every ComputeAgent call). Health checks and reflection need a
  certificate of the CA, any.
- Its calls to the control plane present the host's certificate and accept
  only a server whose certificate of the CA names `control_name`.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import socket
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.x509.oid import NameOID

from compute_agent.config import AgentConfig

AGENT_SERVICE_PREFIX = "/cloudapi.v1.ComputeAgent/"
CONTROL_ROLE = "control"
# Reconnect quickly once the control plane is back (as the control plane's own channels do).
CHANNEL_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 200),
                   ("grpc.max_reconnect_backoff_ms", 2000)]


class TlsNotConfigured(RuntimeError):
    """The agent has no certificate: it does not start without one."""


@dataclass(frozen=True)
class TlsFiles:
    ca: bytes
    cert: bytes
    key: bytes


def load(config: AgentConfig) -> TlsFiles:
    files = {"tls_ca_file": config.tls_ca_file, "tls_cert_file": config.tls_cert_file,
             "tls_key_file": config.tls_key_file}
    missing = [name for name, path in files.items() if not path]
    if missing:
        raise TlsNotConfigured(
            f"the agent needs {', '.join(missing)}: the control plane talks to agents over "
            f"mutual TLS only (python -m control.pki issue-host {config.host_name} --dir PKI_DIR)")
    return TlsFiles(ca=Path(config.tls_ca_file).read_bytes(),
                    cert=Path(config.tls_cert_file).read_bytes(),
                    key=Path(config.tls_key_file).read_bytes())


def server_credentials(tls: TlsFiles) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials([(tls.key, tls.cert)], root_certificates=tls.ca,
                                       require_client_auth=True)


def control_channel(config: AgentConfig, tls: TlsFiles) -> grpc.Channel:
    """A channel to the control plane's agent endpoint, as this host. Several
    endpoints (comma-separated: the agent listeners of the API replicas) make
    one channel that fails over between them."""
    credentials = grpc.ssl_channel_credentials(tls.ca, tls.key, tls.cert)
    target, options = _channel_target(config.control_endpoint)
    return grpc.secure_channel(target, credentials, options=[
        *CHANNEL_OPTIONS, *options, ("grpc.ssl_target_name_override", config.control_name)])


# Several endpoints: pick_first over all of them, and UNAVAILABLE calls (the
# replica died under them) retried for about 3 s. What the agent sends (heartbeats,
# reports, metrics) is safe to send twice. A copy of client/cloudclient/endpoints.py.
_SERVICE_CONFIG = {"loadBalancingConfig": [{"pick_first": {}}],
                   "methodConfig": [{"name": [{}], "retryPolicy": {
                       "maxAttempts": 5, "initialBackoff": "0.2s", "maxBackoff": "2s",
                       "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}}]}


def _channel_target(endpoints: str) -> tuple[str, list[tuple[str, object]]]:
    items = [e.strip() for e in endpoints.split(",") if e.strip()]
    if len(items) <= 1:
        return endpoints.strip(), []
    v4: list[str] = []
    v6: list[str] = []
    for endpoint in items:
        host, _, port = endpoint.rpartition(":")
        host = host.strip("[]")
        try:
            addresses = [str(ipaddress.ip_address(host))]
        except ValueError:
            addresses = list(dict.fromkeys(str(i[4][0]) for i in socket.getaddrinfo(
                host, int(port), type=socket.SOCK_STREAM)))
        for address in addresses:
            (v6 if ":" in address else v4).append(
                f"[{address}]:{port}" if ":" in address else f"{address}:{port}")
    target = "ipv4:" + ",".join(v4) if v4 else "ipv6:" + ",".join(v6)
    return target, [("grpc.service_config", json.dumps(_SERVICE_CONFIG)),
                    ("grpc.enable_retries", 1), ("grpc.min_reconnect_backoff_ms", 100)]


@functools.lru_cache(maxsize=64)
def _identity(pem: bytes) -> tuple[str, str]:
    """(CN, OU) of a peer certificate the handshake has verified."""
    subject = x509.load_pem_x509_certificate(pem).subject

    def first(oid) -> str:
        values = subject.get_attributes_for_oid(oid)
        return str(values[0].value) if values else ""
    return first(NameOID.COMMON_NAME), first(NameOID.ORGANIZATIONAL_UNIT_NAME)


def peer_identity(context: grpc.ServicerContext) -> tuple[str, str]:
    pem = (context.auth_context().get("x509_pem_cert") or [b""])[0]
    return _identity(pem) if pem else ("", "")


class ControlOnly(grpc.ServerInterceptor):
    """ComputeAgent calls from the control plane's certificate only (any other
    certificate of the CA, a host's for one, is PERMISSION_DENIED)."""

    def __init__(self, control_name: str):
        self.control_name = control_name

    def check(self, context: grpc.ServicerContext) -> None:
        name, role = peer_identity(context)
        if role != CONTROL_ROLE or name != self.control_name:
            context.abort(grpc.StatusCode.PERMISSION_DENIED,
                          f"only the control plane ({self.control_name}) may call this agent, "
                          f"not {name or 'an anonymous peer'}")

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or not handler_call_details.method.startswith(AGENT_SERVICE_PREFIX):
            return handler  # health and reflection: the handshake's CA check is enough
        if handler.unary_unary is None:
            def refuse(request, context):
                context.abort(grpc.StatusCode.PERMISSION_DENIED, "not an RPC the agent serves")
            return grpc.unary_unary_rpc_method_handler(refuse)
        inner = handler.unary_unary

        def call(request, context):
            self.check(context)
            return inner(request, context)
        return grpc.unary_unary_rpc_method_handler(
            call, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)
