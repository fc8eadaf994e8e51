"""Does etcd stay bounded? AGENTS simulated hosts (bench/agents.py's swarm: the
agent's own Reporter, each with its own certificate and connection) register and
heartbeat to one control plane for SECONDS, and the etcd database is sampled
every SAMPLE seconds: its file size, what of it is in use, and the revision.

    python bench/soak.py [AGENTS] [--seconds S] [--history H]
      (default: 200 agents, 300 s, etcd history 60s)

etcd compacts history older than H (--auto-compaction-retention, periodic) and
the API's store maintenance defragments when worthwhile: the file must grow only
until the first compaction, then stay flat. Deployments keep 1h of history
(smallcloud_etcd_history): the same curve, its plateau reached after an hour;
the plateau is printed as predicted from the measured bytes per revision.

Prints JSON: revisions per second; the file's growth per hour before the first
compaction and after it (flat: ~0); its size at the end; and every sample.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "compute-agent"))

MiB = 2**20


def seconds_of(history: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(s|m|h)?", history)
    if not match:
        raise SystemExit(f"history like 60s, 5m or 1h, not {history!r}")
    return float(match[1]) * {"s": 1, "m": 60, "h": 3600, None: 3600}[match[2]]


def growth_per_hour(samples: list[dict], start: float, end: float) -> float | None:
    """MiB per hour of the file between the samples nearest `start` and `end` (s from the start)."""
    window = [s for s in samples if start <= s["t"] <= end]
    if len(window) < 2 or window[-1]["t"] == window[0]["t"]:
        return None
    grown = window[-1]["db_size"] - window[0]["db_size"]
    return round(grown / MiB / (window[-1]["t"] - window[0]["t"]) * 3600, 1)


def run(agents: int, seconds: float, history: str, sample_s: float) -> dict:
    from control import pki
    from control.store import keys
    from control.store.etcd import Store
    from localcloud.cloud import LocalCloud, Ports
    from localcloud.processes import wait_until

    root = Path(tempfile.mkdtemp(prefix="smallcloud-bench-soak-"))
    cloud = LocalCloud(root, ports=Ports.free(), host_name="bench-soak", etcd_history=history,
                       control_settings={"store_maintenance_interval_s": 10})
    swarm = None
    try:
        cloud.password("admin")
        cloud.ensure_pki()
        names = [f"soak-host-{i:04d}" for i in range(agents)]
        for name in names:
            pki.issue_host(cloud.pki_dir, name)
        cloud.write_config()
        cloud.start_etcd()
        cloud.start_redis()
        cloud.start_api()
        cloud.start_worker()
        spec = {"control_endpoint": cloud.agent_endpoint, "out": str(root / "swarm.json"),
                "agents": [{"host_name": n, **cloud.tls_settings(n)} for n in names]}
        (root / "swarm-spec.json").write_text(json.dumps(spec))
        store = Store([f"127.0.0.1:{cloud.ports.etcd}"], timeout_s=5)
        swarm = subprocess.Popen([sys.executable, str(REPO / "bench" / "agents.py"), "--swarm",
                                  str(root / "swarm-spec.json")], stdin=subprocess.PIPE)
        wait_until(lambda: len(store.list(keys.hosts())) >= agents, 180,
                   f"registration of {agents} hosts")

        samples: list[dict] = []
        started = time.monotonic()
        while (elapsed := time.monotonic() - started) <= seconds:
            [member] = store.member_statuses()
            samples.append({"t": round(elapsed, 1), "revision": member.revision,
                            "db_size": member.db_size, "in_use": member.db_size_in_use})
            time.sleep(sample_s)
        swarm.stdin.close()
        swarm.wait(60)
        first, last = samples[0], samples[-1]
        per_s = (last["revision"] - first["revision"]) / max(1e-9, last["t"] - first["t"])
        # The first compaction shows as data in use falling (pages freed for reuse).
        compacted_at = next((s["t"] for prev, s in zip(samples, samples[1:], strict=False)
                             if s["in_use"] < prev["in_use"]), None)
        before = growth_per_hour(samples, 0, compacted_at or seconds_of(history))
        bytes_per_revision = None
        if before and per_s:
            bytes_per_revision = round(before * MiB / 3600 / per_s)
        return {
            "agents": agents, "seconds": seconds, "etcd_history": history,
            "revisions_per_s": round(per_s, 1),
            "growth_mib_per_hour_before_first_compaction": before,
            "first_compaction_seen_at_s": compacted_at,
            "growth_mib_per_hour_after_first_compaction":
                growth_per_hour(samples, compacted_at, seconds) if compacted_at else None,
            "db_size_mib_end": round(last["db_size"] / MiB, 1),
            "db_in_use_mib_end": round(last["in_use"] / MiB, 1),
            "bytes_per_revision": bytes_per_revision,
            # With 1h of history the file plateaus at about an hour of revisions.
            "predicted_plateau_mib_with_1h_history": round(bytes_per_revision * per_s * 3600 / MiB, 1)
            if bytes_per_revision else None,
            "samples": [{"t": s["t"], "revision": s["revision"],
                         "db_size_mib": round(s["db_size"] / MiB, 2),
                         "in_use_mib": round(s["in_use"] / MiB, 2)} for s in samples],
            "loadavg_1m": round(os.getloadavg()[0], 2),
        }
    finally:
        if swarm and swarm.poll() is None:
            swarm.kill()
            swarm.wait()
        cloud.destroy_everything()
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("agents", nargs="?", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--history", default="60s")
    parser.add_argument("--sample", type=float, default=10.0)
    args = parser.parse_args()
    print(json.dumps({"benchmark": "etcd size under heartbeating hosts, compacted",
                      "cpus": os.cpu_count(),
                      **run(args.agents, args.seconds, args.history, args.sample)}, indent=2))


if __name__ == "__main__":
    main()
