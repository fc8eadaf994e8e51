"""Wiring: every part of the control plane, built from one ControlConfig.

The API server and the Celery worker both start from `build_control_plane`,
so tests can build either against their own etcd and Redis.
"""

from __future__ import annotations

from dataclasses import dataclass

from celery import Celery

from control.autoscaling.groups import ScalingGroups
from control.celery_app import create_celery_app
from control.compute.agent_client import AgentClient, channel_credentials, host_at
from control.compute.flavors import Catalog
from control.compute.instances import Instances
from control.compute.keypairs import Keypairs
from control.compute.lifecycle import Lifecycle
from control.compute.scale_out import ScaleOut
from control.compute.server_groups import ServerGroups
from control.config import ControlConfig
from control.identity.accounts import Identity
from control.identity.quotas import Quotas, QuotaValues
from control.images.catalog import Images
from control.images.files import ImageStore
from control.metering.metrics import Metrics
from control.network.floating_ips import FloatingIps
from control.network.networks import Networks
from control.network.security_groups import SecurityGroups
from control.placement.aggregates import Aggregates
from control.placement.allocations import Placement
from control.placement.hosts import Hosts
from control.placement.scheduler import Scheduler
from control.queue import TaskQueue
from control.store.etcd import EtcdTls, Store


@dataclass
class ControlPlane:
    config: ControlConfig
    store: Store
    celery: Celery
    queue: TaskQueue
    catalog: Catalog
    images: Images
    instances: Instances
    hosts: Hosts
    placement: Placement
    agents: AgentClient
    identity: Identity
    quotas: Quotas
    scheduler: Scheduler
    groups: ServerGroups
    aggregates: Aggregates
    lifecycle: Lifecycle
    scale_out: ScaleOut
    keypairs: Keypairs
    metrics: Metrics
    scaling: ScalingGroups
    networks: Networks
    floating_ips: FloatingIps
    security_groups: SecurityGroups


def build_control_plane(config: ControlConfig) -> ControlPlane:
    store = Store(config.etcd_endpoints, config.etcd_timeout_s, EtcdTls.of(config))
    celery = create_celery_app(config)
    queue = TaskQueue(celery, config.enqueue_retry_s)
    catalog = Catalog(store)
    images = Images(store, ImageStore(config.image_store_dir, config.image_max_bytes))
    quotas = Quotas(store, QuotaValues(**config.quota_defaults()))
    placement = Placement(store, config)
    groups = ServerGroups(store)
    keypairs = Keypairs(store)
    networks = Networks(store, quotas, config)
    security_groups = SecurityGroups(store, quotas)
    instances = Instances(store, queue, catalog, images, quotas, groups, config, keypairs, networks,
                          security_groups)
    scheduler = Scheduler(store, config, placement)
    hosts = Hosts(store)
    agents = AgentClient(credentials=channel_credentials(config), name_of=host_at(hosts))
    networks.nudge = lambda host: agents.sync_networks(hosts.get(host).address)
    security_groups.nudge = lambda host: agents.sync_networks(hosts.get(host).address,
                                                              firewall_only=True)
    metrics = Metrics(config.redis_url, config.metrics_retention_s, config.metrics_window_s,
                      stale_after_s=max(5.0, 3.0 * config.metrics_interval_s),
                      sentinel_master=config.redis_sentinel_master)
    return ControlPlane(
        config=config, store=store, celery=celery, queue=queue, catalog=catalog, images=images,
        instances=instances, lifecycle=Lifecycle(store, queue, instances, quotas, placement),
        scale_out=ScaleOut(store, queue, instances, quotas, scheduler), keypairs=keypairs,
        hosts=hosts, placement=placement,
        agents=agents,
        identity=Identity(store, config.token_ttl_s), quotas=quotas,
        scheduler=scheduler, groups=groups,
        aggregates=Aggregates(store), metrics=metrics,
        scaling=ScalingGroups(store, instances, catalog, scheduler, metrics, config),
        networks=networks,
        floating_ips=FloatingIps(store, quotas, networks, instances, config,
                                 nudge=lambda host: agents.sync_networks(hosts.get(host).address)),
        security_groups=security_groups,
    )
