"""Several endpoints of one service as one gRPC channel, for a highly available
control plane: clients (cloudctl, the dashboard, tests) are given the API
replicas as a comma-separated list ("10.0.0.1:50051,10.0.0.2:50051"); one
channel connects to the first that answers (pick_first) and moves to the next
when it dies. Calls that fail UNAVAILABLE (the replica died under them, or the
channel was between replicas) are retried by gRPC, a few times within about
3 s. A retried create is not made twice when it carries a request_id (cloudctl
always sends one): the API replays the first one's result.

One endpoint is used as given, with no retries, exactly as before.

(The compute agent has its own copy of this, compute_agent/tls.py: it does not
import the control plane's code.)
"""

from __future__ import annotations

import ipaddress
import json
import socket

# Retries of a call that failed UNAVAILABLE: 0.2 s, 0.4 s, 0.8 s, 1.6 s apart
# (each jittered), long enough to cover pick_first moving to the next replica.
RETRY_POLICY = {"maxAttempts": 5, "initialBackoff": "0.2s", "maxBackoff": "2s",
                "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}
SERVICE_CONFIG = {"loadBalancingConfig": [{"pick_first": {}}],
                  "methodConfig": [{"name": [{}], "retryPolicy": RETRY_POLICY}]}
# gRPC backs off up to 2 minutes between reconnects by default: a dead replica
# (an API replica, an etcd member, an agent) is skipped, and a restarted one is
# usable again, within a second. Every channel of the control plane uses these.
RECONNECT_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 100),
                     ("grpc.min_reconnect_backoff_ms", 100),
                     ("grpc.max_reconnect_backoff_ms", 1000)]


def split(endpoints: str | list[str]) -> list[str]:
    """["host:port", ...] from a comma-separated string (or a list of them)."""
    items = endpoints if isinstance(endpoints, list) else [endpoints]
    return [e.strip() for item in items for e in item.split(",") if e.strip()]


def _addresses(endpoint: str) -> list[str]:
    """The IP addresses of one "host:port" (a name is resolved now)."""
    host, _, port = endpoint.rpartition(":")
    host = host.strip("[]")
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def channel_target(endpoints: str | list[str]) -> tuple[str, list[tuple[str, object]]]:
    """The gRPC target and channel options for one endpoint or several.

    Several become one "ipv4:" (or "ipv6:") target listing every address (host
    names are resolved when the channel is made), with pick_first and retries
    of UNAVAILABLE calls. A name is kept as the channel's authority (what TLS
    checks the server's certificate against)."""
    items = split(endpoints)
    if len(items) <= 1:
        return (items[0] if items else ""), []
    v4: list[str] = []
    v6: list[str] = []
    for endpoint in items:
        port = endpoint.rpartition(":")[2]
        for address in _addresses(endpoint):
            if ":" in address:
                v6.append(f"[{address}]:{port}")
            else:
                v4.append(f"{address}:{port}")
    # One target holds one address family: IPv4 when any endpoint has one.
    target = "ipv4:" + ",".join(v4) if v4 else "ipv6:" + ",".join(v6)
    options: list[tuple[str, object]] = [
        ("grpc.service_config", json.dumps(SERVICE_CONFIG)), ("grpc.enable_retries", 1),
        *RECONNECT_OPTIONS]
    first_host = items[0].rpartition(":")[0].strip("[]")
    try:
        ipaddress.ip_address(first_host)
    except ValueError:
        options.append(("grpc.default_authority", items[0]))
    return target, options
