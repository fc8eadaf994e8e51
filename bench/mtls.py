"""What mutual TLS costs the agents' calls: HostService.Heartbeat served by the
same servicer, side by side in one run, over

- `plaintext`: an insecure port, a shared secret checked per call (as before
  mutual TLS);
- `mtls`: the agent listener (control/api/host_auth.py): TLS 1.3 with client
  certificates, the peer certificate checked against the request per call.

Prints JSON: the first call on a fresh channel (connect + handshake + call)
and steady heartbeats on one channel (median, p95), in milliseconds. Starts its
own etcd and Redis (free ports); the servers run in this process.
"""

from __future__ import annotations

import hmac
import json
import shutil
import statistics
import sys
import tempfile
import time
from concurrent import futures
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import grpc  # noqa: E402
from cloudapi.v1 import agent_pb2, agent_pb2_grpc  # noqa: E402

from control import errors, pki  # noqa: E402
from control.api.agents import HostServicer  # noqa: E402
from control.api.host_auth import create_agent_server  # noqa: E402
from control.api.interceptors import ApiInterceptor  # noqa: E402
from control.config import ControlConfig  # noqa: E402
from control.plane import build_control_plane  # noqa: E402
from localcloud.cloud import LocalCloud, Ports  # noqa: E402

HOST = "bench-host"
SECRET = "s3cret"
FRESH = 40
STEADY = 1000
ROUNDS = 4


def ms(values: list[float]) -> dict:
    values = sorted(values)
    return {"median_ms": round(statistics.median(values) * 1000, 3),
            "p95_ms": round(values[int(len(values) * 0.95) - 1] * 1000, 3), "n": len(values)}


def plaintext_server(plane) -> tuple[grpc.Server, int]:
    def check_secret(method, request, context):
        presented = dict(context.invocation_metadata()).get("authorization", "")[len("Bearer "):]
        if not hmac.compare_digest(presented, SECRET):
            raise errors.Unauthenticated("host calls need the agents' secret")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), interceptors=[
        ApiInterceptor(plane.identity.authenticate, check_host=check_secret)])
    agent_pb2_grpc.add_HostServiceServicer_to_server(HostServicer(plane), server)
    return server, server.add_insecure_port("127.0.0.1:0")


def run() -> dict:
    root = Path(tempfile.mkdtemp(prefix="smallcloud-bench-mtls-"))
    cloud = LocalCloud(root, ports=Ports.free(), host_name=HOST)
    cloud.root.mkdir(exist_ok=True)
    try:
        cloud.start_etcd()
        cloud.start_redis()
        cloud.ensure_pki()
        config = ControlConfig(etcd_endpoints=[f"127.0.0.1:{cloud.ports.etcd}"],
                               redis_url=f"redis://127.0.0.1:{cloud.ports.redis}/0",
                               agent_listen="127.0.0.1:0", image_store_dir=str(root / "images"),
                               **cloud.tls_settings())
        plane = build_control_plane(config)
        tls_server, tls_port = create_agent_server(config, plane)
        plain_server, plain_port = plaintext_server(plane)
        tls_server.start()
        plain_server.start()
        host = pki.host_paths(cloud.pki_dir, HOST)
        creds = grpc.ssl_channel_credentials(*(p.read_bytes() for p in (
            pki.ca_paths(cloud.pki_dir).cert, host.key, host.cert)))
        # A private subchannel pool per channel, so every fresh channel connects anew.
        fresh = [("grpc.use_local_subchannel_pool", 1)]
        variants = {
            "plaintext": (lambda: grpc.insecure_channel(f"127.0.0.1:{plain_port}", options=fresh),
                          [("authorization", f"Bearer {SECRET}")]),
            "mtls": (lambda: grpc.secure_channel(f"127.0.0.1:{tls_port}", creds, options=[
                *fresh, ("grpc.ssl_target_name_override", pki.CONTROL_NAME)]), []),
        }
        register = agent_pb2.RegisterHostRequest(
            name=HOST, address="127.0.0.1:1", inventory=agent_pb2.HostInventory(
                vcpus=4, memory_mb=4096, disk_gb=40))
        beat = agent_pb2.HeartbeatRequest(name=HOST)
        with variants["mtls"][0]() as channel:
            agent_pb2_grpc.HostServiceStub(channel).RegisterHost(register, timeout=10)
        first: dict[str, list[float]] = {name: [] for name in variants}
        steady: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(ROUNDS):  # alternate, so neither gets the warmer etcd
            for name, (make, metadata) in variants.items():
                for _ in range(FRESH // ROUNDS):
                    t0 = time.perf_counter()
                    with make() as channel:
                        agent_pb2_grpc.HostServiceStub(channel).Heartbeat(beat, timeout=10,
                                                                          metadata=metadata)
                        first[name].append(time.perf_counter() - t0)
                with make() as channel:
                    stub = agent_pb2_grpc.HostServiceStub(channel)
                    for _ in range(20):
                        stub.Heartbeat(beat, timeout=10, metadata=metadata)  # warm
                    for _ in range(STEADY // ROUNDS):
                        t0 = time.perf_counter()
                        stub.Heartbeat(beat, timeout=10, metadata=metadata)
                        steady[name].append(time.perf_counter() - t0)
        result = {name: {"first_call": ms(first[name]), "heartbeat": ms(steady[name])}
                  for name in variants}
        tls_server.stop(0)
        plain_server.stop(0)
        plane.store.close()
        return result
    finally:
        cloud.destroy_everything()
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    print(json.dumps({"benchmark": "agent calls: plaintext + shared secret vs mutual TLS",
                      **run()}, indent=2))


if __name__ == "__main__":
    main()
