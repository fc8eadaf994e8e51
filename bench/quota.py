"""Quota benchmark: parallel creates against a project quota (fake driver).

Prints JSON: accepted and rejected counts (accepted must equal the quota) and
requests per second, for a burst of CREATES creates from CLIENTS threads.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cloudapi.v1 import compute_pb2 as pb  # noqa: E402

from tests.conftest import login, start_cloud, stop_cloud  # noqa: E402
from tests.control.test_quota import delete_all, fire, new_tenant  # noqa: E402

CREATES = 200
QUOTA = 25  # below the fake host's capacity (32 vCPUs), so no build fails and frees quota
ROUNDS = 3


def main() -> None:
    cloud, _ = start_cloud("bench-quota", agent_settings={"driver": "fake"})
    rounds = []
    try:
        admin = login(cloud, "admin")
        for _ in range(ROUNDS):
            _, client = new_tenant(cloud, admin, instances=QUOTA, vcpus=-1, memory_mb=-1, disk_gb=-1)
            t0 = time.monotonic()
            accepted, codes, _ = fire(client, ["tiny"] * CREATES)
            elapsed = time.monotonic() - t0
            rounds.append({"accepted": codes["OK"], "rejected": codes["RESOURCE_EXHAUSTED"],
                           "other_errors": sum(n for c, n in codes.items()
                                               if c not in ("OK", "RESOURCE_EXHAUSTED")),
                           "seconds": round(elapsed, 3),
                           "requests_per_s": round(CREATES / elapsed, 1)})
            for instance in accepted:
                client.wait_status(instance.id, {"ACTIVE", "ERROR"})
            delete_all(client, accepted)
            assert client.instances.ListInstances(pb.ListInstancesRequest()).instances == []
    finally:
        stop_cloud(cloud, "bench-quota")
    print(json.dumps({
        "creates": CREATES, "quota_instances": QUOTA, "rounds": rounds,
        "median_requests_per_s": statistics.median(r["requests_per_s"] for r in rounds),
    }, indent=2))


if __name__ == "__main__":
    main()
