"""Control-plane settings, read from one TOML file (the `[control]` table).

Every process of the control plane (API server, Celery worker) is built from a
ControlConfig, so tests can start them on free ports with temporary settings.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, Field, model_validator

VXLAN_OVERHEAD = 50  # bytes a VXLAN packet adds: outer Ethernet 14, IPv4 20, UDP 8, VXLAN 8
MAX_NETWORK_VNIS = 65535  # networks per cloud: a host's conntrack zones are 16 bits (firewall.zone)


class ControlConfig(BaseModel):
    # etcd client endpoints, "host:port": one, or every member of a cluster (one
    # is used; when it fails, the next: control/store/etcd.py).
    etcd_endpoints: list[str] = Field(default_factory=lambda: ["127.0.0.1:2379"])
    etcd_timeout_s: float = 3.0
    # Mutual TLS to etcd (all three, or none): the CA of the members'
    # certificates (control/pki.py's etcd CA) and the client certificate and key
    # presented to them. Set, every endpoint is reached over TLS (write them
    # "https://host:port" or "host:port"); unset, in plain text ("http://" or bare).
    etcd_ca_file: str | None = None
    etcd_cert_file: str | None = None
    etcd_key_file: str | None = None

    @model_validator(mode="after")
    def _etcd_tls_whole(self) -> ControlConfig:
        files = (self.etcd_ca_file, self.etcd_cert_file, self.etcd_key_file)
        if any(files) and not all(files):
            raise ValueError("etcd_ca_file, etcd_cert_file and etcd_key_file go together")
        scheme = "http://" if all(files) else "https://"
        if wrong := [e for e in self.etcd_endpoints if e.startswith(scheme)]:
            raise ValueError(f"etcd endpoint(s) {', '.join(wrong)}: "
                             + ("plain text, but etcd TLS files are set" if all(files) else
                                "https, but etcd_ca_file/etcd_cert_file/etcd_key_file are unset"))
        return self
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Redis under Sentinel (high availability): redis_url lists the sentinels,
    # "sentinel://10.0.0.1:26379/0;sentinel://10.0.0.2:26379/0", and this names
    # the master they watch. Celery and the metrics follow the master they report.
    # A password goes in the URLs: redis://:PASSWORD@host:6379/0, and under
    # Sentinel sentinel://:PASSWORD@host:26379/0 (the sentinels take the same).
    redis_sentinel_master: str = "mymaster"
    # An API call whose task cannot be queued (Redis restarting, or failing
    # over) tries again for up to this long, at most half its remaining
    # deadline, before it is refused UNAVAILABLE; 0: refused at once.
    enqueue_retry_s: float = 10.0
    listen: str = "127.0.0.1:50051"
    # A host whose last heartbeat is older than this is not given new instances.
    host_down_after_s: float = 30.0
    heartbeat_interval_s: int = 2
    # The API server's worker threads: how many calls it serves at once; and how
    # many calls it holds at once, served or waiting for a thread (a burst of
    # creates waits its turn): one more is refused RESOURCE_EXHAUSTED at once.
    # Streams never take more than half the threads, so waiting calls move on.
    api_threads: int = Field(default=64, ge=8)
    api_max_calls: int = Field(default=256, ge=8)
    # Streaming calls (event Watch, image uploads, reflection, health Watch)
    # hold a thread each while open (control/api/streams.py): all together at
    # most half of api_threads, so unary calls always have the other half; a
    # project's and a user's at most these; calls without a login (reflection,
    # health Watch) at most stream_max_anonymous together and
    # stream_max_per_address from one address. A stream that waits on its client
    # (reflection, an upload) and receives nothing for stream_idle_timeout_s is
    # cancelled.
    stream_max_per_project: int = 8
    stream_max_per_user: int = 8
    stream_max_anonymous: int = 4
    stream_max_per_address: int = 2
    stream_idle_timeout_s: float = 30.0
    # Event streams (EventService.Watch) one API server keeps open at once, of
    # all projects together (each holds one etcd watch, and a thread).
    event_max_streams: int = 16
    # gRPC server reflection (lets grpcurl and the like list the API without
    # the protos); the Ansible roles turn it off.
    reflection_enabled: bool = True

    def stream_limits(self):
        from control.api.streams import StreamLimits

        return StreamLimits(total=self.api_threads // 2, per_project=self.stream_max_per_project,
                            per_user=self.stream_max_per_user, anonymous=self.stream_max_anonymous,
                            per_address=self.stream_max_per_address,
                            idle_timeout_s=self.stream_idle_timeout_s)
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
    # Metrics (control/metering/metrics.py, kept in Redis): agents report their instances'
    # counters every metrics_interval_s (0: not at all); series are kept
    # metrics_retention_s; averages default to the last metrics_window_s.
    metrics_interval_s: int = 10
    metrics_window_s: int = 60
    metrics_retention_s: int = 600
    # Scaling groups (control/autoscaling/groups.py): the API server converges them every
    # scaling_interval_s, in one replica at a time (control/store/leader.py).
    scaling_enabled: bool = True
    scaling_interval_s: float = 5.0
    # The reconciler (control/reconcile/reconciler.py): compares desired and observed state
    # every reconcile_interval_s (and at start), in one API replica at a time.
    reconciler_enabled: bool = True
    reconcile_interval_s: float = 10.0
    # The periodic jobs' etcd lease locks (control/store/leader.py): a replica that
    # dies holding one is replaced within this (at least 3 intervals of its job)
    # plus one interval. Shorter: faster takeover, more lease renewals.
    leader_lease_s: float = Field(default=10.0, ge=2.0)
    # Phase deadlines, from an instance's last change: a build (0: spawn_timeout_s
    # plus the agent retries' backoff plus a margin), a delete, and an operation
    # (stop, start, reboot, scale, resize; 0: 2 x stop_timeout_s plus a margin).
    build_deadline_s: float = 0.0
    # A build with no progress for this long has its task sent again, and again
    # every as long while it makes none, until its deadline: its task may be
    # lost with Redis, or held by a worker killed (-9) (Redis gives that back
    # only after the visibility timeout). Copies are safe (control/compute/tasks.py).
    # Unset: a sixth of the build deadline (30 s by default; a build's steps
    # are seconds apart). 0: never (the build fails at its deadline).
    build_redrive_after_s: float | None = None
    delete_deadline_s: float = 120.0
    operation_deadline_s: float = 0.0
    # A domain on a host that no instance owns is destroyed this long after it
    # was first reported.
    orphan_grace_s: float = 60.0
    # etcd's size (control/store/maintenance.py): its --quota-backend-bytes (the
    # same value as etcd's flag: the API shows use against it), how much free
    # space makes a defragmentation worthwhile, and how often that is checked
    # (and the NOSPACE alarm, which any replica then clears once space is freed).
    etcd_quota_bytes: int = 2 * 2**30
    etcd_history: str = "1h"  # etcd's --auto-compaction-retention, as shown to admins
    etcd_defrag_min_free_mb: int = 64
    store_maintenance_interval_s: float = 60.0
    store_maintenance_enabled: bool = True

    def build_deadline(self) -> float:
        return self.build_deadline_s or self.spawn_timeout_s + 60.0

    def build_redrive_after(self) -> float:
        if self.build_redrive_after_s is None:
            return self.build_deadline() / 6
        return self.build_redrive_after_s

    @model_validator(mode="after")
    def _redrive_before_deadline(self) -> ControlConfig:
        after, deadline = self.build_redrive_after(), self.build_deadline()
        if after < 0 or (after > 0 and after >= deadline):
            raise ValueError(f"build_redrive_after_s ({after:g}) must be 0 (off) or below "
                             f"the build deadline ({deadline:g} s)")
        return self

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

    # Tenant networks (control/network/). Off: instances get no NICs of the
    # cloud's choosing and agents put guests on their host's NAT network, as
    # before networks existed. On: every instance gets a NIC on each network it
    # names (or on its project's "default" network), with a fixed IP and a MAC
    # chosen in its create transaction.
    tenant_networks: bool = False
    # The hosts' underlay MTU; guests get it less VXLAN's 50 bytes of headers.
    underlay_mtu: int = Field(default=1500, ge=1280)
    # The external network: routers SNAT to it, floating IPs come from it (its
    # first address is its gateway). A range nothing routes off the machine.
    external_cidr: str = "100.64.0.0/24"
    external_bridge: str = "cloud-ext"  # the host bridge routers' external side plugs into
    # The VNIs networks get (inclusive, at random within). VXLAN devices with one
    # VNI and UDP port cannot coexist in one network namespace, so clouds sharing
    # a machine (`make up`'s and a test's) are given disjoint ranges. At most
    # 65535 of them: a host's firewall keeps each network's connections in the
    # conntrack zone VNI % 65535 + 1 (16 bits), which must not be another's.
    vni_range: tuple[int, int] = (1, MAX_NETWORK_VNIS)
    # The network, floating IP and security group quotas of a project without
    # overrides, with tenant networks on (a project's "default" network is not
    # counted; its "default" security group is: Neutron's defaults, 10 and 100).
    default_network_quota: dict[str, int] = Field(default_factory=lambda: {
        "networks": 10, "floating_ips": 10, "security_groups": 10, "security_group_rules": 100})

    @model_validator(mode="after")
    def _vni_range_in_vxlan(self) -> ControlConfig:
        low, high = self.vni_range
        if not 1 <= low <= high <= 2**24 - 1:
            raise ValueError(f"vni_range {list(self.vni_range)} must be within 1..{2**24 - 1}, low first")
        if high - low + 1 > MAX_NETWORK_VNIS:
            raise ValueError(f"vni_range {list(self.vni_range)} holds {high - low + 1} VNIs; at most "
                             f"{MAX_NETWORK_VNIS} (each network's conntrack zone on a host is its "
                             f"VNI modulo {MAX_NETWORK_VNIS})")
        return self

    def network_mtu(self) -> int:
        """The guests' MTU on tenant networks: the underlay's less VXLAN's headers."""
        return self.underlay_mtu - VXLAN_OVERHEAD

    def quota_defaults(self) -> dict[str, int]:
        """default_quota, with the network quotas when tenant networks are on (off, a
        project's quota shows no network quotas, as before networks existed)."""
        if not self.tenant_networks:
            return dict(self.default_quota)
        return {**self.default_network_quota, **self.default_quota}


def url_password(url: str) -> str | None:
    """The password of a redis:// URL, or of a list of sentinel:// URLs (the
    first that has one), percent-decoded; None if there is none."""
    for part in url.split(";"):
        if password := urlsplit(part.strip()).password:
            return unquote(password)
    return None


def load_config(path: str | Path) -> ControlConfig:
    with open(path, "rb") as f:
        data = tomllib.load(f)
    return ControlConfig(**data.get("control", {}))
