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
    # etcd client endpoints, "host:port"; the first that answers is used.
    etcd_endpoints: list[str] = Field(default_factory=lambda: ["127.0.0.1:2379"])
    etcd_timeout_s: float = 3.0
    redis_url: str = "redis://127.0.0.1:6379/0"
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
    # A file holding the secret compute agents present to register and heartbeat.
    agent_secret_file: str = ""
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
    # Quota of a project that has no overrides; -1 is unlimited.
    default_quota: dict[str, int] = Field(default_factory=lambda: {
        "instances": 10, "vcpus": 20, "memory_mb": 51200, "disk_gb": 1000})


def load_config(path: str | Path) -> ControlConfig:
    with open(path, "rb") as f:
        data = tomllib.load(f)
    return ControlConfig(**data.get("control", {}))
