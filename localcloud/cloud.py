"""An all-in-one cloud: etcd, Redis, libvirtd, the API, a Celery worker and one
compute agent, all on this machine."""

from __future__ import annotations

import functools
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

from localcloud.processes import ProcessSet, free_port, port_open, wait_until

LIBVIRT_SOCKET = Path("/run/libvirt/libvirt-sock")
DEMO_PROJECT = "demo"
DEMO_USER = "demo"
# The name the sentinels give the Redis master they watch (redis_sentinel=True).
SENTINEL_MASTER = "smallcloud"


@dataclass
class Ports:
    etcd: int = 23790
    etcd_peer: int = 23800
    redis: int = 63790
    api: int = 50051
    agent: int = 50061
    dashboard: int = 8080
    # The control plane's agent listener (HostService, mutual TLS only).
    agent_api: int = 50052
    # High availability (LocalCloud etcd_members=3, api_replicas=2): the second
    # and third etcd members, and the second API replica's two listeners.
    etcd_2: int = 23791
    etcd_peer_2: int = 23801
    etcd_3: int = 23792
    etcd_peer_3: int = 23802
    api_2: int = 50053
    agent_api_2: int = 50054
    # Redis under Sentinel (LocalCloud redis_sentinel=True): the replica and 3 sentinels.
    redis_2: int = 63791
    sentinel: int = 63792
    sentinel_2: int = 63793
    sentinel_3: int = 63794

    @classmethod
    def free(cls) -> Ports:
        return cls(*(free_port() for _ in fields(cls)))


def tenant_network_settings(tag: str = "up", external_cidr: str = "100.64.0.0/24",
                            external_bridge: str = "cloud-ext", tunnel_address: str = "127.0.0.1",
                            vni_range: tuple[int, int] = (1, 65_535),
                            ) -> tuple[dict[str, object], dict[str, object]]:
    """The control plane's and the agent's settings for tenant networks on one
    machine: (control_settings, agent_settings).

    The tunnel (VXLAN underlay) is loopback: one host has no other to reach.
    The external network is a bridge on this machine carrying its gateway
    (external_host_gateway), so this machine reaches floating IPs as a user's
    laptop reaches a public address; external_cidr must be a range nothing
    routes off the machine (100.64.0.0/10 is carrier-grade NAT space, unused
    here). `tag` names the agent's bridges, VXLAN devices and router namespaces
    (tenant/l2.py), and clouds sharing this machine need different tags,
    external bridges, external ranges and VNI ranges: each agent removes the
    devices of its own naming that it does not want, and the kernel has one
    VXLAN device per VNI (and UDP port) in a namespace. `make up` takes VNIs
    below a million; the tests' clouds take theirs above."""
    control = {"tenant_networks": True, "external_cidr": external_cidr,
               "external_bridge": external_bridge, "vni_range": list(vni_range)}
    agent = {"networking": "tenant", "tunnel_address": tunnel_address, "device_tag": tag,
             "external_host_gateway": True}
    return control, agent


def _toml(value: object) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value)


@dataclass
class LocalCloud:
    root: Path
    ports: Ports = field(default_factory=Ports)
    host_name: str = field(default_factory=socket.gethostname)
    image_dirs: list[str] = field(default_factory=list)
    control_settings: dict[str, object] = field(default_factory=dict)
    agent_settings: dict[str, object] = field(default_factory=dict)
    python: str = sys.executable
    # `make up` serves the web dashboard too; test clouds start it when a test wants it.
    dashboard: bool = False
    # The address the control plane's agent listener binds and agents dial: loopback,
    # or (tests/multihost) a bridge address that agents in network namespaces reach.
    agent_api_host: str = "127.0.0.1"
    # High availability: an etcd cluster of 3 members (all on loopback), 2 API
    # replicas (each with its own listeners; clients and agents get both), and
    # several Celery workers. The defaults are the small all-in-one cloud.
    etcd_members: int = 1
    api_replicas: int = 1
    workers: int = 1
    # Redis under Sentinel: a master, one replica and 3 sentinels (loopback, each
    # with its own directory), all with a password; redis_url lists the sentinels.
    redis_sentinel: bool = False
    # etcd keeps this much history (--auto-compaction-retention: event streams
    # resume from any revision within it) and refuses writes past this size
    # (--quota-backend-bytes; control/store/maintenance.py frees space).
    etcd_history: str = "1h"
    etcd_quota_bytes: int = 2 * 2**30

    def __post_init__(self) -> None:
        if self.etcd_members not in (1, 3) or self.api_replicas not in (1, 2) or self.workers < 1:
            raise ValueError("etcd_members is 1 or 3, api_replicas 1 or 2, workers at least 1")
        self.root = Path(self.root).resolve()
        self.procs = ProcessSet(self.root)
        self.config_path = self.root / "cloud.toml"

    @property
    def endpoint(self) -> str:
        """The public API: its replicas, comma-separated (what clients fail over between)."""
        return ",".join(f"127.0.0.1:{api}" for _, api, _ in self.api_replica_ports())

    @property
    def agent_endpoint(self) -> str:
        """Where agents reach the control plane (mutual TLS), apart from the public
        API: every replica's agent listener, comma-separated."""
        return ",".join(f"{self.agent_api_host}:{agent}" for _, _, agent in self.api_replica_ports())

    def etcd_member_ports(self) -> list[tuple[str, int, int]]:
        """(process name, client port, peer port) of each etcd member."""
        p = self.ports
        return [("etcd", p.etcd, p.etcd_peer), ("etcd-2", p.etcd_2, p.etcd_peer_2),
                ("etcd-3", p.etcd_3, p.etcd_peer_3)][:self.etcd_members]

    @property
    def etcd_endpoints(self) -> list[str]:
        return [f"127.0.0.1:{client}" for _, client, _ in self.etcd_member_ports()]

    def api_replica_ports(self) -> list[tuple[str, int, int]]:
        """(process name, API port, agent listener port) of each API replica."""
        p = self.ports
        return [("api", p.api, p.agent_api), ("api-2", p.api_2, p.agent_api_2)][:self.api_replicas]

    def redis_server_ports(self) -> list[tuple[str, int]]:
        """(process name, port) of each Redis server: the first master, then
        (under Sentinel) its replica."""
        return [("redis", self.ports.redis), ("redis-2", self.ports.redis_2)][
            :2 if self.redis_sentinel else 1]

    def sentinel_ports(self) -> list[tuple[str, int]]:
        """(process name, port) of each sentinel; none without redis_sentinel."""
        p = self.ports
        return [("sentinel", p.sentinel), ("sentinel-2", p.sentinel_2),
                ("sentinel-3", p.sentinel_3)] if self.redis_sentinel else []

    @property
    def redis_url(self) -> str:
        """The control plane's redis_url: the one Redis, or the sentinels (with the password)."""
        if not self.redis_sentinel:
            return f"redis://127.0.0.1:{self.ports.redis}/0"
        password = self.password("redis")
        return ";".join(f"sentinel://:{password}@127.0.0.1:{port}/0"
                        for _, port in self.sentinel_ports())

    def worker_names(self) -> list[str]:
        return ["worker", *(f"worker-{n}" for n in range(2, self.workers + 1))]

    @property
    def pki_dir(self) -> Path:
        return self.root / "pki"

    def ensure_pki(self, host_names: tuple[str, ...] = ()) -> None:
        """The cloud's CA and the control plane's certificate, and one certificate
        per host (the same as `python -m control.pki init` / `issue-host`); all
        kept when they exist."""
        from control import pki

        pki.init(self.pki_dir)
        for name in host_names or (self.host_name,):
            pki.issue_host(self.pki_dir, name)

    def tls_settings(self, host_name: str = "") -> dict[str, str]:
        """The tls_* settings of the control plane, or (with host_name) of that host's agent."""
        from control import pki

        paths = pki.host_paths(self.pki_dir, host_name) if host_name \
            else pki.control_paths(self.pki_dir)
        return {"tls_ca_file": str(pki.ca_paths(self.pki_dir).cert),
                "tls_cert_file": str(paths.cert), "tls_key_file": str(paths.key)}

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.dashboard}/"

    # ---------------------------------------------------------------- credentials

    def secret_path(self, user: str) -> Path:
        return self.root / "secrets" / f"{user}-password"

    def password(self, user: str) -> str:
        """The user's password, generated on first use and kept (owner-only) under root."""
        path = self.secret_path(user)
        if not path.exists():
            path.parent.mkdir(mode=0o700, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(15))
        return path.read_text().strip()

    def client(self, user: str = DEMO_USER, project: str = ""):
        """A CloudClient logged in as `user` (admin or the demo user)."""
        from cloudclient.client import CloudClient

        client = CloudClient(self.endpoint)
        client.login(user, self.password(user), project)
        return client

    def create_demo_tenant(self) -> None:
        """The demo project and its member user; kept if they exist already."""
        import grpc
        from cloudapi.v1 import identity_pb2 as ipb

        admin = self.client("admin")
        for call, request in [
            (admin.identity.CreateProject,
             ipb.CreateProjectRequest(name=DEMO_PROJECT, description="demo tenant")),
            (admin.identity.CreateUser, ipb.CreateUserRequest(
                name=DEMO_USER, password=self.password(DEMO_USER), project=DEMO_PROJECT,
                role="member")),
        ]:
            try:
                call(request, timeout=30)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
                    raise

    def agent_config(self, **overrides: object) -> dict[str, object]:
        host_name = str(overrides.get("host_name", self.host_name))
        return {
            "host_name": host_name,
            "listen": f"127.0.0.1:{self.ports.agent}",
            "control_endpoint": self.agent_endpoint,
            **self.tls_settings(host_name),
            "state_dir": str(self.root / "agent"),
            **self.agent_settings,
            **overrides,
        }

    def write_config(self) -> None:
        control = {
            "admin_password_file": str(self.secret_path("admin")),
            "etcd_endpoints": self.etcd_endpoints,
            "redis_url": self.redis_url,
            **({"redis_sentinel_master": SENTINEL_MASTER} if self.redis_sentinel else {}),
            "listen": f"127.0.0.1:{self.ports.api}",
            "agent_listen": f"{self.agent_api_host}:{self.ports.agent_api}",
            **self.tls_settings(),
            "image_dirs": self.image_dirs,
            "image_store_dir": str(self.root / "images"),
            "etcd_quota_bytes": self.etcd_quota_bytes,
            "etcd_history": self.etcd_history,
            **self.control_settings,
        }
        _write_toml(self.config_path, control, self.agent_config())
        # Further API replicas: the same settings but their own listeners.
        for name, api, agent_api in self.api_replica_ports()[1:]:
            _write_toml(self.root / f"cloud-{name}.toml",
                        {**control, "listen": f"127.0.0.1:{api}",
                         "agent_listen": f"{self.agent_api_host}:{agent_api}"}, self.agent_config())

    # ---------------------------------------------------------------- services

    def start_etcd(self) -> None:
        """etcd: one member, or the members of a cluster, all started together (a
        new cluster needs a quorum of its members to answer). A member that is not
        running is started again: with its data directory kept, it rejoins."""
        members = self.etcd_member_ports()
        cluster = ",".join(f"{_etcd_name(name)}=http://127.0.0.1:{peer}"
                           for name, _, peer in members)
        for name, client, peer in members:
            self.procs.start(name, [
                "etcd", "--name", _etcd_name(name), "--data-dir", str(self.root / name),
                "--listen-client-urls", f"http://127.0.0.1:{client}",
                "--advertise-client-urls", f"http://127.0.0.1:{client}",
                "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                "--initial-cluster", cluster, "--initial-cluster-state", "new",
                "--auto-compaction-mode", "periodic", "--auto-compaction-retention", self.etcd_history,
                "--quota-backend-bytes", str(self.etcd_quota_bytes),
                "--logger", "zap", "--log-level", "warn"])
        for _, client, _ in members:
            wait_until(functools.partial(self._etcd_answers, client), 30, "etcd")

    def _etcd_answers(self, port: int = 0) -> bool:
        """Whether the member at `port` answers a linearizable read (it has a leader)."""
        from control.store.etcd import Store  # the venv's client, only once etcd is wanted

        store = Store([f"127.0.0.1:{port or self.ports.etcd}"], timeout_s=1)
        try:
            store.revision()
            return True
        finally:
            store.close()

    def start_redis(self) -> None:
        if self.redis_sentinel:
            self.start_redis_sentinel()
            return
        (self.root / "redis").mkdir(exist_ok=True)
        self.procs.start("redis", [
            "redis-server", "--port", str(self.ports.redis), "--bind", "127.0.0.1",
            "--dir", str(self.root / "redis"), "--save", "", "--appendonly", "yes",
            "--daemonize", "no"])
        wait_until(lambda: port_open(self.ports.redis), 30, "redis")

    def start_redis_sentinel(self) -> None:
        """The Redis servers (the first a master, the second its replica) and 3
        sentinels watching them, those that are not running. Their config files
        are written only when absent: Redis and Sentinel rewrite them when a
        failover changes who is master, and a restart keeps that."""
        master_port = self.ports.redis
        for name, port in self.redis_server_ports():
            replica_of = f"replicaof 127.0.0.1 {master_port}" if name != "redis" else ""
            conf = self._config_once(name, "redis.conf", [
                f"port {port}", "bind 127.0.0.1", f"dir {self.root / name}", 'save ""',
                "appendonly yes", "daemonize no", *self._redis_auth(), replica_of,
                # A replica (re)joining is synced at once, not after the usual 5 s.
                "repl-diskless-sync-delay 0"])
            self.procs.start(name, ["redis-server", str(conf)])
        for _, port in self.redis_server_ports():
            wait_until(functools.partial(port_open, port), 30, "redis")
        for name, port in self.sentinel_ports():
            conf = self._config_once(name, "sentinel.conf", [
                f"port {port}", "bind 127.0.0.1", f"dir {self.root / name}", "daemonize no",
                f"requirepass {self.password('redis')}",
                # Quorum 2 of 3; a master silent for 3 s is down: short, for a quick
                # failover, yet 3 times the 1 s that let a busy 2-core machine's live
                # master be judged down (failover measured in tests/ha/test_redis_sentinel.py).
                f"sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {master_port} 2",
                f"sentinel auth-pass {SENTINEL_MASTER} {self.password('redis')}",
                f"sentinel down-after-milliseconds {SENTINEL_MASTER} 3000",
                f"sentinel failover-timeout {SENTINEL_MASTER} 3000",
                f"sentinel parallel-syncs {SENTINEL_MASTER} 1"])
            self.procs.start(name, ["redis-server", str(conf), "--sentinel"])
        # A master back after a failover is made a replica on Sentinel's second
        # look (they come 10 s apart), and seen linked on the next: about 20 s.
        wait_until(self._sentinels_ready, 60, "the Redis sentinels")

    def _redis_auth(self) -> list[str]:
        password = self.password("redis")
        return [f"requirepass {password}", f"masterauth {password}"]

    def _config_once(self, name: str, file: str, lines: list[str]) -> Path:
        """root/name/file with these lines, unless it exists. It holds the
        password: its directory is owner-only (a rewrite makes a new file 0644)."""
        directory = self.root / name
        directory.mkdir(exist_ok=True)
        directory.chmod(0o700)
        path = directory / file
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write("# Written once by localcloud; Redis/Sentinel rewrite it.\n"
                        + "".join(f"{line}\n" for line in lines if line))
        return path

    def _sentinels_ready(self) -> bool:
        """Every sentinel sees the master up, its replica linked, and the 2
        other sentinels (without which no failover can be agreed)."""
        import redis  # the venv's client, only once Redis is wanted

        for _, port in self.sentinel_ports():
            client = redis.Redis(port=port, password=self.password("redis"), socket_timeout=1)
            try:
                master: dict = client.sentinel_master(SENTINEL_MASTER)  # type: ignore[assignment]
                replicas: list[dict] = client.sentinel_slaves(SENTINEL_MASTER)  # type: ignore[assignment]
            finally:
                client.close()
            if not master["is_master"] or master["is_sdown"] or \
                    master["num-other-sentinels"] < 2 or \
                    not any(r["master-link-status"] == "ok" and not r["is_sdown"] for r in replicas):
                return False
        return True

    def ensure_libvirtd(self) -> None:
        """Use the host's libvirtd if it runs; otherwise start virtlogd and libvirtd
        as the machine's services (there is no systemd here to do it).

        They are not this cloud's: every cloud, test run and guest on the machine
        shares them, so nothing here stops them. A run that once stopped "its"
        libvirtd at the end killed the guests of another run that had found it
        running (CI: 47 tests failed, "Failed to connect socket")."""
        prepare_kvm_device()
        if _libvirt_answers():
            return
        # --daemon: detached, with their pid files in /run (a second start while
        # one runs exits at once on that file's lock).
        subprocess.run(["virtlogd", "--daemon"], check=False, capture_output=True)
        subprocess.run(["libvirtd", "--daemon"], check=False, capture_output=True)
        wait_until(_libvirt_answers, 60, "libvirtd")

    def start_api(self) -> None:
        """The API replicas that are not running, one after the other (the first
        seeds a new cloud)."""
        for name, api, agent_api in self.api_replica_ports():
            config = self.config_path if name == "api" else self.root / f"cloud-{name}.toml"
            pid = self.procs.start(name, [self.python, "-m", "control.api.server",
                                          "--config", str(config)])
            wait_until(functools.partial(self._api_answers, api, agent_api), 60,
                       f"the API server ({name})", pid=pid)

    def _api_answers(self, api: int, agent_api: int) -> bool:
        return port_open(api) and port_open(agent_api, self.agent_api_host)

    def start_worker(self) -> None:
        """The Celery workers that are not running."""
        for name in self.worker_names():
            self.procs.start(name, [self.python, "-m", "control.worker",
                                    "--config", str(self.config_path),
                                    "--name", f"{name}@{self.host_name}"])

    def start_agent(self) -> None:
        pid = self.procs.start("agent", [self.python, "-m", "compute_agent.server",
                                         "--config", str(self.config_path)])
        wait_until(lambda: port_open(self.ports.agent), 60, "the compute agent", pid=pid)

    @property
    def dashboard_socket(self) -> Path:
        """Where gunicorn listens, behind the proxy."""
        return self.root / "dashboard" / "gunicorn.sock"

    def start_dashboard(self) -> None:
        """The web dashboard: gunicorn on a unix socket, and nginx in front of it
        on the dashboard's port (dashboard/proxy.py: it holds slow clients and
        buffers whole requests, issue 15). A client of the API like cloudctl;
        its sessions and cookie-signing key are its own, under root."""
        from dashboard import proxy
        from dashboard.config import load_settings

        path = self.root / "dashboard.toml"
        settings = {
            "listen": f"127.0.0.1:{self.ports.dashboard}",
            "app_listen": f"unix:{self.dashboard_socket}",
            "api_endpoint": self.endpoint,
            "secret_key_file": str(self.secret_path("dashboard-key")),
            "session_dir": str(self.root / "dashboard" / "sessions"),
            "proxy_dir": str(self.root / "dashboard" / "proxy"),
            "proxy_access_log": str(self.procs.logs / "dashboard-proxy-access.log"),
        }
        path.write_text("# Written by localcloud; regenerated on every `make up`.\n[dashboard]\n"
                        + "".join(f"{k} = {_toml(v)}\n" for k, v in settings.items()))
        self.dashboard_socket.parent.mkdir(exist_ok=True)
        self.procs.start("dashboard", [self.python, "-m", "dashboard", "--config", str(path)])
        wait_until(functools.partial(_unix_socket_answers, self.dashboard_socket), 60,
                   "the dashboard (gunicorn)")
        settings = load_settings(path)
        config = self.root / "dashboard" / "nginx.conf"
        proxy.write(settings, config)
        self.procs.start("dashboard-proxy", proxy.command(config))
        wait_until(lambda: _http_ok(self.dashboard_url + "healthz"), 60,
                   "the dashboard, through its proxy (nginx)")

    def stop_dashboard(self) -> list[str]:
        """Stop the proxy, then gunicorn; the names of those that were running."""
        return [name for name in ("dashboard-proxy", "dashboard") if self.procs.stop(name)]

    def add_agent(self, host_name: str, netns: str = "", address: str = "127.0.0.1",
                  **settings: object) -> None:
        """Another compute agent (another host) for this cloud, e.g. with the fake
        driver to test scheduling across hosts. With netns, it runs in that network
        namespace, listening on `address` there."""
        port = free_port()
        self.ensure_pki((host_name,))
        path = self.root / f"agent-{host_name}.toml"
        _write_toml(path, {}, self.agent_config(
            host_name=host_name, listen=f"{address}:{port}",
            state_dir=str(self.root / f"agent-{host_name}"), **settings))
        self.start_added_agent(host_name, netns)

    def start_added_agent(self, host_name: str, netns: str = "") -> None:
        """Start (again: after a kill, say) an agent add_agent made, with the
        settings it wrote, on the same address and port."""
        import tomllib

        path = self.root / f"agent-{host_name}.toml"
        with open(path, "rb") as f:
            address, port = tomllib.load(f)["agent"]["listen"].rsplit(":", 1)
        # nsenter, not `ip netns exec`: that gives the agent a mount namespace of
        # its own, slave to this one, so the router namespaces it makes (`ip netns
        # add`: a bind mount under /run/netns) would exist only for it: neither
        # this machine's tools nor the agent's next run could enter them.
        prefix: list[str] = []
        if netns:
            prefix = ["nsenter", f"--net=/run/netns/{netns}"]
        pid = self.procs.start(f"agent-{host_name}", [*prefix, self.python, "-m",
                                                      "compute_agent.server", "--config", str(path)])
        wait_until(lambda: port_open(int(port), address), 60, f"the compute agent of {host_name}",
                   pid=pid)

    def up(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)  # qemu, running unprivileged, reads guest disks below
        self.password("admin")
        self.ensure_pki()
        self.write_config()
        self.start_etcd()
        self.start_redis()
        self.ensure_libvirtd()
        self.start_api()
        self.create_demo_tenant()
        self.start_worker()
        self.start_agent()
        if self.dashboard:
            self.start_dashboard()

    def down(self, remove_guests: bool = False) -> list[str]:
        """Stop what `up` started, newest first. Guests of our agents are powered
        off (their records stay), or with remove_guests, deleted with their disks."""
        running = self.procs.running()
        workers = [n for n in running if re.fullmatch(r"worker(-\d+)?", n)]
        apis = [n for n in running if re.fullmatch(r"api(-\d+)?", n)]
        etcds = [n for n in running if re.fullmatch(r"etcd(-\d+)?", n)]
        # Sentinels first (none fails over while the servers stop), replicas before "redis".
        redises = [n for n in running if re.fullmatch(r"sentinel(-\d+)?", n)] + \
            sorted((n for n in running if re.fullmatch(r"redis(-\d+)?", n)), reverse=True)
        stopped = self.stop_dashboard()
        stopped += [n for n in [*self._extra_agents(), "agent", *workers, *apis] if self.procs.stop(n)]
        self._stop_guests(remove_guests)
        self._remove_tenant_networks()
        stopped += [n for n in (*redises, *etcds) if self.procs.stop(n)]
        return stopped

    def _extra_agents(self) -> list[str]:
        return [name for name in self.procs.running() if name.startswith("agent-")]

    def _stop_guests(self, remove: bool) -> None:
        if not _libvirt_answers():
            return
        from compute_agent.libvirt_driver import LibvirtDriver  # only when libvirt is there
        driver = LibvirtDriver("qemu:///system", str(self.root / "agent"), self.host_name)
        for observation in driver.list_instances():
            if remove:
                driver.destroy(observation.instance_id)
            elif observation.power_state == "running":
                driver.conn.lookupByUUIDString(observation.instance_id).destroy()

    def _remove_tenant_networks(self) -> None:
        """With its agent in tenant mode, remove what it made on this machine of
        the cloud's networks once the agent and the guests are stopped: its
        routers (namespaces with their NAT tables, dnsmasq, veths), its bridges
        and VXLAN devices (by its device tag: no other agent's), its firewall's
        tables, and the external bridge. An agent's stop leaves them (the data plane outlives the agent);
        a stopped cloud should not. The next `up` makes them again: the agent
        converges at its start."""
        import tomllib

        if not self.config_path.exists():
            return
        from compute_agent.config import AgentConfig
        from compute_agent.tenant.firewall import Firewall
        from compute_agent.tenant.l2 import L2
        from compute_agent.tenant.router import Router, run_dir

        with open(self.config_path, "rb") as f:
            written = tomllib.load(f)
        agent = AgentConfig(**written.get("agent", {}))
        if agent.networking != "tenant":
            return
        runs = run_dir(agent.host_name, agent.device_tag)
        try:
            Router(runs, prefix=agent.router_prefix()).remove_absent(set())
            runs.rmdir()  # emptied by remove_absent
            L2(agent.tunnel_address, agent.device_tag).converge([])
            Firewall(agent.tunnel_address, agent.device_tag).remove()
        except Exception as exc:  # the rest of the cloud is stopped all the same
            print(f"removing the tenant networks' devices: {exc}", file=sys.stderr)
        bridge = str(written.get("control", {}).get("external_bridge", "cloud-ext"))
        if agent.external_host_gateway:
            subprocess.run(["ip", "link", "del", "dev", bridge], capture_output=True)

    def destroy_everything(self) -> None:
        """For tests: stop all and delete the guests and files this cloud made."""
        self.down(remove_guests=True)
        shutil.rmtree(self.root, ignore_errors=True)


def prepare_kvm_device() -> None:
    """Give /dev/kvm the owner and mode Debian's udev rule gives it (root:kvm 0660).

    Without udev it stays root-only. libvirt then finds KVM "unusable" for the
    qemu user while its cached QEMU capabilities say KVM works, so it throws the
    cache away and re-probes QEMU on every domain define: about 80 s each
    under emulation, instead of 0.5 s.
    """
    kvm = Path("/dev/kvm")
    if not kvm.exists():
        return
    try:
        shutil.chown(kvm, group="kvm")
        kvm.chmod(0o660)
    except (LookupError, PermissionError, OSError):
        pass  # no kvm group or not root: leave the host as it is


def _etcd_name(process: str) -> str:
    """An etcd member's name: "local" (as a one-member cloud always had), "local-2", ..."""
    return "local" + process.removeprefix("etcd")


def _write_toml(path: Path, control: dict[str, object], agent: dict[str, object]) -> None:
    lines = ["# Written by localcloud; regenerated on every `make up`.", "[control]"]
    lines += [f"{k} = {_toml(v)}" for k, v in control.items()]
    lines += ["", "[agent]"] + [f"{k} = {_toml(v)}" for k, v in agent.items()]
    path.write_text("\n".join(lines) + "\n")


def _http_ok(url: str) -> bool:
    import urllib.request

    with urllib.request.urlopen(url, timeout=2) as response:
        return response.status == 200


def _unix_socket_answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex(str(path)) == 0


def _libvirt_answers() -> bool:
    if not LIBVIRT_SOCKET.exists():
        return False
    result = subprocess.run(["virsh", "-c", "qemu:///system", "version"],
                            capture_output=True, timeout=10)
    return result.returncode == 0
