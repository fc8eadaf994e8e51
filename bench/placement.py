"""Placement benchmark: schedule-and-claim throughput and latency at scale.

Fixed workload (comparable with other schedulers): HOSTS hosts, each VCPU total
16 ratio 4.0, MEMORY_MB total 65536 reserved 512 ratio 1.5, DISK_GB total 1000
ratio 1.0; each request VCPU 1, MEMORY_MB 512, DISK_GB 10; OPERATIONS
schedule-and-claim operations from CLIENTS concurrent clients, through the code
path the build task uses (Scheduler.schedule -> Placement claim in etcd), no driver.

    python bench/placement.py [HOSTS ...]     (default: 1000 5000)

Prints JSON per host count: claims per second, p50/p95/p99 of one operation,
conflicts retried, and whether any host ended over capacity.
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from control.config import ControlConfig  # noqa: E402
from control.models import Allocation, Host, Resources  # noqa: E402
from control.placement.allocations import InventoryItem, Placement, Provider  # noqa: E402
from control.placement.scheduler import Request, Scheduler  # noqa: E402
from control.store import keys  # noqa: E402
from control.store.etcd import Store, Txn  # noqa: E402
from localcloud.cloud import LocalCloud, Ports  # noqa: E402

OPERATIONS = 500
CLIENTS = 10
NEED = Resources(vcpus=1, memory_mb=512, disk_gb=10)
CONFIG = ControlConfig(host_down_after_s=3600)


def provider(name: str) -> Provider:
    return Provider(host=name, inventory={
        "VCPU": InventoryItem(total=16, allocation_ratio=4.0),
        "MEMORY_MB": InventoryItem(total=65536, reserved=512, allocation_ratio=1.5),
        "DISK_GB": InventoryItem(total=1000, allocation_ratio=1.0),
    })


def register_hosts(store: Store, count: int) -> None:
    names = [f"bench-{i:05d}" for i in range(count)]
    for start in range(0, count, 60):  # etcd allows 128 operations per transaction
        txn = Txn()
        for name in names[start:start + 60]:
            txn.put(keys.host(name), Host(name=name, address="127.0.0.1:1",
                                          inventory=Resources(vcpus=16, memory_mb=65536,
                                                              disk_gb=1000)).model_dump())
            txn.put(keys.provider(name), provider(name).model_dump())
        assert store.commit(txn)


def run(hosts: int) -> dict:
    root = Path(tempfile.mkdtemp(prefix="smallcloud-bench-placement-"))
    cloud = LocalCloud(root, ports=Ports.free())
    root.mkdir(exist_ok=True)
    cloud.start_etcd()
    try:
        store = Store([f"127.0.0.1:{cloud.ports.etcd}"], timeout_s=10)
        register_hosts(store, hosts)
        placement = Placement(store, CONFIG)
        scheduler = Scheduler(store, CONFIG, placement)
        t_load = time.monotonic()
        scheduler.table.start()
        load_s = time.monotonic() - t_load
        request = Request(need=NEED, what="the benchmark flavor")
        latencies: list[float] = []
        errors: list[str] = []
        per_client = OPERATIONS // CLIENTS
        barrier = threading.Barrier(CLIENTS + 1)

        def client() -> None:
            barrier.wait()
            for _ in range(per_client):
                allocation = Allocation(instance_id=str(uuid.uuid4()), project="bench", host="",
                                        resources=NEED)
                t0 = time.perf_counter()
                try:
                    scheduler.schedule(allocation, request)
                except Exception as exc:  # counted, not hidden
                    errors.append(repr(exc))
                latencies.append(time.perf_counter() - t0)

        threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
        for t in threads:
            t.start()
        barrier.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0

        over = [p.host for p in placement.providers()
                if any(p.usage.get(rc, 0) > p.capacity(rc) for rc in p.inventory)]
        allocations = placement.allocations()
        used = sum(sum(p.usage.get("MEMORY_MB", 0) for p in [q]) for q in placement.providers())
        q = statistics.quantiles(latencies, n=100)
        return {
            "hosts": hosts, "operations": OPERATIONS, "clients": CLIENTS,
            "claims_per_s": round(OPERATIONS / elapsed, 1),
            "p50_ms": round(q[49] * 1000, 2), "p95_ms": round(q[94] * 1000, 2),
            "p99_ms": round(q[98] * 1000, 2),
            "conflicts_retried": scheduler.conflicts, "errors": len(errors),
            "hosts_over_capacity": len(over),
            "allocations": len(allocations),
            "allocations_match_usage": used == len(allocations) * NEED.memory_mb,
            "table_load_s": round(load_s, 3),
        }
    finally:
        cloud.procs.stop("etcd")
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    counts = [int(a) for a in sys.argv[1:]] or [1000, 5000]
    print(json.dumps([run(n) for n in counts], indent=2))


if __name__ == "__main__":
    main()
