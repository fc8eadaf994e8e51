"""`cloud-api --config FILE`: the control plane's gRPC server."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from concurrent import futures
from pathlib import Path

import grpc
from cloudapi.v1 import (
    compute_pb2,
    compute_pb2_grpc,
    events_pb2,
    events_pb2_grpc,
    identity_pb2,
    identity_pb2_grpc,
    network_pb2,
    network_pb2_grpc,
    scaling_pb2,
    scaling_pb2_grpc,
    security_group_pb2,
    security_group_pb2_grpc,
    usage_pb2,
    usage_pb2_grpc,
)
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from tenacity import retry, retry_if_exception_type, stop_after_delay, wait_fixed

from control.api.events import EventServicer
from control.api.flavors import FlavorServicer
from control.api.host_auth import create_agent_server
from control.api.hosts import HostAdminServicer
from control.api.identity import IdentityServicer
from control.api.images import ImageServicer
from control.api.instances import InstanceServicer
from control.api.interceptors import ApiInterceptor
from control.api.keypairs import KeypairServicer
from control.api.limits import LimitsInterceptor, public_services, server_options
from control.api.networks import NetworkServicer
from control.api.quotas import QuotaServicer
from control.api.scaling import MetricsServicer, ScalingGroupServicer
from control.api.security_groups import SecurityGroupServicer
from control.api.server_groups import ServerGroupServicer
from control.api.streams import StreamGuard
from control.api.usage import UsageServicer
from control.autoscaling.groups import start_controller
from control.config import ControlConfig, load_config
from control.errors import Unavailable
from control.plane import ControlPlane, build_control_plane
from control.reconcile.reconciler import start_reconciler
from control.store.maintenance import start_store_maintenance
from control.store.schema import SchemaTooNew, migrate_at_start

log = logging.getLogger(__name__)


def _service_names() -> list[str]:
    compute = compute_pb2.DESCRIPTOR.services_by_name
    identity = identity_pb2.DESCRIPTOR.services_by_name
    return ([compute[n].full_name for n in ("InstanceService", "FlavorService", "ImageService",
                                              "HostAdminService", "ServerGroupService",
                                              "KeypairService")]
            + [identity[n].full_name for n in ("IdentityService", "QuotaService")]
            + [scaling_pb2.DESCRIPTOR.services_by_name[n].full_name
               for n in ("MetricsService", "ScalingGroupService")]
            + [events_pb2.DESCRIPTOR.services_by_name["EventService"].full_name]
            + [usage_pb2.DESCRIPTOR.services_by_name["UsageService"].full_name]
            + [network_pb2.DESCRIPTOR.services_by_name["NetworkService"].full_name]
            + [security_group_pb2.DESCRIPTOR.services_by_name["SecurityGroupService"].full_name])


def create_server(config: ControlConfig, plane: ControlPlane | None = None,
                  ) -> tuple[grpc.Server, int, ControlPlane]:
    """Build the API server on config.listen (port 0 picks a free port).
    Returns the unstarted server, its port, and the control plane it serves.
    The agents' HostService is not on it: create_agent_server (mutual TLS)."""
    plane = plane or build_control_plane(config)
    # A bounded number of calls, served or waiting: one more is refused
    # RESOURCE_EXHAUSTED at once instead of waiting in an endless queue; streams
    # take at most half the threads (the guard), so waiting calls move on.
    guard = StreamGuard(config.stream_limits())
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=config.api_threads),
                         maximum_concurrent_rpcs=config.api_max_calls,
                         # Request sizes: control/api/limits.py (checked inside ApiInterceptor,
                         # which maps their InvalidArgument to INVALID_ARGUMENT).
                         options=server_options(public_services()),
                         interceptors=[ApiInterceptor(plane.identity.authenticate, guard=guard),
                                       LimitsInterceptor(public_services())])
    compute_pb2_grpc.add_InstanceServiceServicer_to_server(InstanceServicer(plane), server)
    compute_pb2_grpc.add_FlavorServiceServicer_to_server(FlavorServicer(plane), server)
    compute_pb2_grpc.add_ImageServiceServicer_to_server(ImageServicer(plane), server)
    compute_pb2_grpc.add_HostAdminServiceServicer_to_server(HostAdminServicer(plane), server)
    compute_pb2_grpc.add_ServerGroupServiceServicer_to_server(ServerGroupServicer(plane), server)
    compute_pb2_grpc.add_KeypairServiceServicer_to_server(KeypairServicer(plane), server)
    identity_pb2_grpc.add_IdentityServiceServicer_to_server(IdentityServicer(plane), server)
    identity_pb2_grpc.add_QuotaServiceServicer_to_server(QuotaServicer(plane), server)
    scaling_pb2_grpc.add_MetricsServiceServicer_to_server(MetricsServicer(plane), server)
    scaling_pb2_grpc.add_ScalingGroupServiceServicer_to_server(ScalingGroupServicer(plane), server)
    events_pb2_grpc.add_EventServiceServicer_to_server(EventServicer(plane), server)
    usage_pb2_grpc.add_UsageServiceServicer_to_server(UsageServicer(plane), server)
    network_pb2_grpc.add_NetworkServiceServicer_to_server(NetworkServicer(plane), server)
    security_group_pb2_grpc.add_SecurityGroupServiceServicer_to_server(SecurityGroupServicer(plane),
                                                                       server)

    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in [*_service_names(), ""]:
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    if config.reflection_enabled:
        reflection.enable_server_reflection(
            [*_service_names(), health.SERVICE_NAME, reflection.SERVICE_NAME], server)

    port = server.add_insecure_port(config.listen)
    return server, port, plane


@retry(retry=retry_if_exception_type(Unavailable), wait=wait_fixed(1), stop=stop_after_delay(60),
       reraise=True)
def read_secret(path: str) -> str:
    return Path(path).read_text().strip() if path else ""


def seed(plane: ControlPlane) -> None:
    """Seed data of a new cloud; safe on every start. Waits for etcd to answer."""
    plane.catalog.seed_flavors()
    if plane.config.admin_password_file:
        plane.identity.bootstrap_admin(read_secret(plane.config.admin_password_file))
    for directory in plane.config.image_dirs:
        image = plane.images.register_image_dir(directory)
        log.info("image %s (%s) registered", image.name, image.id)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="cloud-api")
    parser.add_argument("--config", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    config = load_config(args.config)
    server, port, plane = create_server(config)
    agent_server, agent_port = create_agent_server(config, plane)
    # Stored records in this release's shapes before anything reads or writes them.
    try:
        migrate_at_start(plane.store)
    except SchemaTooNew as exc:
        raise SystemExit(f"cloud-api: not starting: {exc}") from None
    seed(plane)
    server.start()
    agent_server.start()
    log.info("API listening on port %d; agents (mutual TLS) on port %d", port, agent_port)
    # Scaling groups are converged here, in one replica at a time (not in
    # create_server: servers built in-process by tests run no controller).
    scaling = start_controller(plane.scaling, plane.store, config.scaling_interval_s,
                               config.leader_lease_s) \
        if config.scaling_enabled else None
    # The reconciler likewise (control/reconcile/reconciler.py): its first pass runs now.
    reconciler = start_reconciler(plane) if config.reconciler_enabled else None
    # etcd's defragmentation and recovery from a full store (control/store/maintenance.py).
    maintenance = start_store_maintenance(plane.store, config) \
        if config.store_maintenance_enabled else None

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    log.info("shutting down: finishing calls in flight")
    # The loops give their locks up, so another replica takes over at once.
    for loop in (scaling, reconciler, maintenance):
        if loop is not None:
            loop.stop()
    agent_stopped = agent_server.stop(grace=10)
    server.stop(grace=10).wait()
    agent_stopped.wait()


if __name__ == "__main__":
    main()
