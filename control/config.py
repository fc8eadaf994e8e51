"""Control-plane settings, read from one TOML file (the `[control]` table).

Every process of the control plane (API server, Celery worker) is built from a
ControlConfig, so tests can start them on free ports with temporary settings.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field


class ControlConfig(BaseModel):
    # etcd client endpoints, "host:port": one, or every member of a cluster (one
    # is used; when it fails, the next: control/store.py).
    etcd_endpoints: list[str] = Field(default_factory=lambda: ["127.0.0.1:2379"])
    etcd_timeout_s: float = 3.0
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Redis under Sentinel (high availability): redis_url lists the sentinels,
    # "sentinel://10.0.0.1:26379/0;sentinel://10.0.0.2:26379/0", and this names
    # the master they watch. Celery and the metrics follow the master they report.
    redis_sentinel_master: str = "mymaster"
    listen: str = "127.0.0.1:50051"
    # A host whose last heartbeat is older than this is not given new instances.
    host_down_after_s: float = 30.0
    heartbeat_interval_s: int = 2
    # Event streams (EventService.Watch) one API server keeps open at once; each
    # holds one of the server's 32 worker threads while it is open.
    event_max_streams: int = 16
    # Overcommit: capacity = (total - reserved) * ratio.
    cpu_allocation_ratio: float = 4.0
    ram_allocation_ratio: float = 1.0
    disk_allocation_ratio: float = 1.0
    reserved_host_memory_mb: int = 512
    reserved_host_disk_gb: int = 0
    # spread: most free capacity first; pack: fill hosts already in use first.
    scheduler_weigher: Literal["spread", "pack"] = "spread"
    # Live scale-up headroom of instances whose flavor sets none: the domain's
    # maximum vCPUs and memory (never below the flavor's own sizes).
    default_max_vcpus: int = 4
    default_max_memory_mb: int = 2048
    # Seconds a guest gets to shut down cleanly before it is powered off.
    stop_timeout_s: int = 60
    # Hosts tried for one instance before its build fails (reschedule on spawn failure).
    max_build_attempts: int = 3
    # Seconds allowed for the agent to spawn a guest before the build fails.
    spawn_timeout_s: float = 120.0
    celery_worker_concurrency: int = 4
    # Image used when a create names none, and image directories registered at start.
    default_image: str = "debian-busybox"
    image_dirs: list[str] = Field(default_factory=list)
    # Where the API server keeps image files (agents fetch them from it), and
    # the largest file of an image it accepts.
    image_store_dir: str = "/var/lib/smallcloud/images"
    image_max_bytes: int = 20 * 2**30
    # Identity: how long tokens live, and a file holding the password the admin
    # user gets when the cloud is first started.
    token_ttl_s: float = 3600
    admin_password_file: str = ""
    # Mutual TLS with the compute agents (control/pki.py makes the files). The
    # agents' HostService is served on agent_listen only, never on the public
    # `listen`: a client must present a certificate of the cloud's CA, and a
    # host's certificate may report for that host only. The same certificate
    # (CN smallcloud-control) is what workers present when they call agents.
    agent_listen: str = "127.0.0.1:50052"
    tls_ca_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""
    # Metrics (control/metrics.py, kept in Redis): agents report their instances'
    # counters every metrics_interval_s (0: not at all); series are kept
    # metrics_retention_s; averages default to the last metrics_window_s.
    metrics_interval_s: int = 10
    metrics_window_s: int = 60
    metrics_retention_s: int = 600
    # Scaling groups (control/scaling.py): the API server converges them every
    # scaling_interval_s, in one replica at a time (control/leader.py).
    scaling_enabled: bool = True
    scaling_interval_s: float = 5.0
    # The reconciler (control/reconciler.py): compares desired and observed state
    # every reconcile_interval_s (and at start), in one API replica at a time.
    reconciler_enabled: bool = True
    reconcile_interval_s: float = 10.0
    # Phase deadlines, from an instance's last change: a build (0: spawn_timeout_s
    # plus the agent retries' backoff plus a margin), a delete, and an operation
    # (stop, start, reboot, scale, resize; 0: 2 x stop_timeout_s plus a margin).
    build_deadline_s: float = 0.0
    # A build with no progress for this long (below the build deadline) has its
    # task sent again, once: a task held by a worker killed (-9) comes back from
    # Redis only after the visibility timeout. 0: never (the build fails at its
    # deadline). Worth setting with several workers (high availability).
    build_redrive_after_s: float = 0.0
    delete_deadline_s: float = 120.0
    operation_deadline_s: float = 0.0
    # A domain on a host that no instance owns is destroyed this long after it
    # was first reported.
    orphan_grace_s: float = 60.0

    def build_deadline(self) -> float:
        return self.build_deadline_s or self.spawn_timeout_s + 60.0

    def operation_deadline(self) -> float:
        return self.operation_deadline_s or 2 * self.stop_timeout_s + 120.0

    def longest_task_s(self) -> float:
        """The longest one task message can take: waiting for its retry's
        countdown (up to 30 s), then every build attempt's spawn, or a resize's
        stop, redefine and start. Redis's visibility timeout must be above it."""
        return 30.0 + max(self.spawn_timeout_s * self.max_build_attempts,
                          self.stop_timeout_s + 3 * 30.0)

    # Quota of a project that has no overrides; -1 is unlimited.
    default_quota: dict[str, int] = Field(default_factory=lambda: {
        "instances": 10, "vcpus": 20, "memory_mb": 51200, "disk_gb": 1000})


def load_config(path: str | Path) -> ControlConfig:
    with open(path, "rb") as f:
        data = tomllib.load(f)
    return ControlConfig(**data.get("control", {}))
