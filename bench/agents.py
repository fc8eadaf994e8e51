"""Many hosts, one control plane: AGENTS compute agents (fake driver) register
and heartbeat to one API server + Celery worker + etcd + Redis on this machine.
What does the control plane spend on them?

    python bench/agents.py [AGENTS] [--seconds S]      (default: 200 agents, 60 s)

The agents are a swarm: one process running AGENTS of the agent's own Reporter
(compute_agent/server.py: registration, a heartbeat every heartbeat_interval_s,
an (empty) metrics report every metrics_interval_s), each with its own host
name, its own certificate (issued by control/pki.py as for any host) and its own
mutual-TLS channel (a private subchannel pool: one TCP connection each). So the
control plane sees AGENTS independent hosts; only the agents' own gRPC servers
are left out (no instance is placed in this run, so nothing would call them).
One agent process per host would cost ~100 MB RSS each (20 GB for 200).

Prints JSON: the cost of issuing the certificates; how long until all had
registered; CPU% (of one core) and RSS of the API server, the worker, etcd,
Redis and the swarm, idle (no agent) and with all agents heartbeating; the
heartbeats' latency seen by the agents (p50/p90/p99/max); and whether every host
stayed up (the reconciler marked none down; the largest heartbeat age seen).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "compute-agent"))

TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
SAMPLE_S = 5.0


# ------------------------------------------------------------------ /proc

def _tree(pid: int) -> list[int]:
    """pid and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo += children.get(p, [])
    return found


def usage(pid: int) -> tuple[float, int]:
    """(CPU seconds, RSS bytes) of a process and its descendants."""
    cpu, rss = 0.0, 0
    for p in _tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            cpu += (int(fields[11]) + int(fields[12])) / TICK  # utime + stime
            rss += int(fields[21]) * PAGE
        except (OSError, ValueError, IndexError):
            continue
    return cpu, rss


def connections_to(port: int) -> int:
    """Established TCP connections (this network namespace) to a local port, as
    their clients see them (gRPC's sockets may be IPv6 with v4-mapped addresses)."""
    rows = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            rows += [line.split() for line in f.readlines()[1:]]
    return sum(1 for r in rows if r[3] == "01" and int(r[2].rsplit(":", 1)[1], 16) == port)


def measure(pids: dict[str, int], seconds: float, each=None) -> dict:
    """CPU% (100 = one core) over `seconds` and peak RSS (MiB) of each process;
    each() is called every SAMPLE_S."""
    start = {name: usage(pid)[0] for name, pid in pids.items()}
    peak = {name: usage(pid)[1] for name, pid in pids.items()}
    t0 = time.monotonic()
    while (left := seconds - (time.monotonic() - t0)) > 0:
        time.sleep(min(SAMPLE_S, left))
        for name, pid in pids.items():
            peak[name] = max(peak[name], usage(pid)[1])
        if each:
            each()
    wall = time.monotonic() - t0
    return {name: {"cpu_percent": round((usage(pid)[0] - start[name]) / wall * 100, 1),
                   "rss_mib": round(peak[name] / 2**20, 1)} for name, pid in pids.items()}


# ------------------------------------------------------------------ the swarm

def swarm(spec_path: str) -> None:
    """Run the agents of spec (JSON) until stdin closes; then write their
    heartbeat latencies to spec["out"]."""
    import grpc
    from compute_agent.config import AgentConfig
    from compute_agent.fake_driver import FakeDriver
    from compute_agent.server import Reporter
    from compute_agent.tls import CHANNEL_OPTIONS
    from compute_agent.tls import load as load_tls

    spec = json.loads(Path(spec_path).read_text())
    latencies: list[tuple[float, float]] = []  # (when, seconds)
    errors = []
    lock = threading.Lock()

    class TimedReporter(Reporter):
        def heartbeat(self) -> None:
            t0 = time.perf_counter()
            try:
                super().heartbeat()
            except Exception as exc:
                with lock:
                    errors.append(f"{self.config.host_name}: {exc}")
                raise
            with lock:
                latencies.append((time.time(), time.perf_counter() - t0))

    reporters = []
    for i, agent in enumerate(spec["agents"]):
        config = AgentConfig(driver="fake", control_endpoint=spec["control_endpoint"], **agent)
        tls = load_tls(config)
        # As compute_agent.tls.control_channel, with a private subchannel pool so
        # that every agent has its own connection, as separate hosts would.
        channel = grpc.secure_channel(
            config.control_endpoint, grpc.ssl_channel_credentials(tls.ca, tls.key, tls.cert),
            options=[*CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", config.control_name),
                     ("grpc.use_local_subchannel_pool", 1)])
        # Nothing listens there: no instance is placed on these hosts.
        reporters.append(TimedReporter(config, FakeDriver(), f"127.0.0.1:{20000 + i}", channel))
    for reporter in reporters:
        reporter.start()
    sys.stdin.read()  # until the bench closes it
    for reporter in reporters:
        reporter._stop.set()
    for reporter in reporters:
        reporter.stop()
    Path(spec["out"]).write_text(json.dumps({"latencies": latencies, "errors": errors[:20],
                                             "error_count": len(errors)}))


# ------------------------------------------------------------------ the bench

def percentiles(values: list[float]) -> dict:
    values = sorted(values)
    if not values:
        return {"n": 0}

    def at(q: float) -> float:
        return round(values[min(len(values) - 1, int(len(values) * q))] * 1000, 2)
    return {"n": len(values), "p50_ms": at(0.5), "p90_ms": at(0.9), "p99_ms": at(0.99),
            "max_ms": round(values[-1] * 1000, 2), "mean_ms": round(statistics.mean(values) * 1000, 2)}


def run(agents: int, seconds: float) -> dict:
    import subprocess

    from control import pki
    from control.models import Host
    from control.store import keys
    from control.store.etcd import Store
    from localcloud.cloud import LocalCloud, Ports
    from localcloud.processes import wait_until

    root = Path(tempfile.mkdtemp(prefix="smallcloud-bench-agents-"))
    cloud = LocalCloud(root, ports=Ports.free(), host_name="bench-agents")
    result: dict = {"agents": agents, "seconds": seconds}
    swarm_proc = None
    try:
        root.mkdir(exist_ok=True)
        cloud.password("admin")
        cloud.ensure_pki()
        names = [f"bench-host-{i:04d}" for i in range(agents)]
        t0 = time.perf_counter()
        for name in names:
            pki.issue_host(cloud.pki_dir, name)
        took = time.perf_counter() - t0
        result["certificates"] = {"issued": agents, "seconds": round(took, 2),
                                  "ms_each": round(took / agents * 1000, 2)}
        cloud.write_config()
        cloud.start_etcd()
        cloud.start_redis()
        cloud.start_api()
        cloud.start_worker()
        from control.config import load_config
        config = load_config(cloud.config_path)
        result["settings"] = {k: getattr(config, k) for k in (
            "heartbeat_interval_s", "host_down_after_s", "reconcile_interval_s",
            "metrics_interval_s")}
        pids = {name: cloud.procs.pid(name) for name in ("api", "worker", "etcd", "redis")}
        time.sleep(5)  # past start-up
        result["idle"] = measure(pids, min(15.0, seconds / 2))

        spec = {"control_endpoint": cloud.agent_endpoint, "out": str(root / "swarm.json"),
                "agents": [{"host_name": n, **cloud.tls_settings(n)} for n in names]}
        (root / "swarm-spec.json").write_text(json.dumps(spec))
        store = Store([f"127.0.0.1:{cloud.ports.etcd}"], timeout_s=5)
        started = time.monotonic()
        swarm_proc = subprocess.Popen([sys.executable, __file__, "--swarm",
                                       str(root / "swarm-spec.json")], stdin=subprocess.PIPE)
        wait_until(lambda: len(store.list(keys.hosts())) >= agents, 120,
                   f"registration of {agents} hosts")
        result["all_registered_after_s"] = round(time.monotonic() - started, 2)
        time.sleep(2 * config.heartbeat_interval_s)  # the registration burst is over
        steady_from = time.time()
        seen = {"down": set(), "max_age_s": 0.0, "min_up": agents, "connections": 0}

        def check_hosts() -> None:
            now = time.time()
            hosts = [Host(**r.value) for r in store.list(keys.hosts())]
            seen["down"] |= {h.name for h in hosts if not h.up}
            seen["min_up"] = min(seen["min_up"], sum(h.up for h in hosts))
            seen["max_age_s"] = max(seen["max_age_s"], *(now - h.last_heartbeat for h in hosts))
            seen["connections"] = max(seen["connections"], connections_to(cloud.ports.agent_api))

        result["with_agents"] = measure({**pids, "swarm": swarm_proc.pid}, seconds, check_hosts)
        steady_to = time.time()
        swarm_proc.stdin.close()
        swarm_proc.wait(60)
        out = json.loads((root / "swarm.json").read_text())
        steady = [d for when, d in out["latencies"] if steady_from <= when <= steady_to]
        result["heartbeats"] = {**percentiles(steady),
                                "per_second": round(len(steady) / (steady_to - steady_from), 1),
                                "errors": out["error_count"], "first_errors": out["errors"][:3]}
        result["hosts"] = {"registered": len(store.list(keys.hosts())),
                           "ever_marked_down": sorted(seen["down"]),
                           "min_up_at_a_sample": seen["min_up"],
                           "largest_heartbeat_age_s": round(seen["max_age_s"], 2),
                           "tls_connections_to_agent_listener": seen["connections"]}
        log = (root / "logs" / "api.log").read_text(errors="replace")
        result["hosts"]["down_in_api_log"] = log.count("is down: no heartbeat")
        # Other work on the machine skews the figures: the load at the end of the run.
        result["loadavg_1m"] = round(os.getloadavg()[0], 2)
        store.close()
        return result
    finally:
        if swarm_proc and swarm_proc.poll() is None:
            swarm_proc.kill()
            swarm_proc.wait()
        cloud.destroy_everything()
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--swarm":
        swarm(sys.argv[2])
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("agents", nargs="?", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    print(json.dumps({"benchmark": "many agents heartbeating to one control plane",
                      "cpus": os.cpu_count(), **run(args.agents, args.seconds)}, indent=2))


if __name__ == "__main__":
    main()
