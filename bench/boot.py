"""Boot benchmark: the control plane's overhead on top of libvirt.

Prints JSON with, measured in the same run on the same image:
  - create RPC -> ACTIVE, and create RPC -> the guest's boot marker, through the
    whole control plane (API, etcd, Redis, Celery, agent, libvirt);
  - the same image booted by libvirt directly (the driver, no control plane):
    spawn call -> spawn returned, and spawn call -> boot marker.
Runs are interleaved (control plane, direct, control plane, ...) so both see the
same machine load.
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cloudapi.v1 import compute_pb2 as pb  # noqa: E402
from compute_agent.driver import ImageFiles, InstanceSpec  # noqa: E402
from compute_agent.libvirt_driver import LibvirtDriver  # noqa: E402

from tests.conftest import ApiClient, cached_image, login, start_cloud, stop_cloud  # noqa: E402

RUNS = 5
MARKER = "CLOUD-BOOT-OK instance_id={}"


def wait_for(check, timeout_s=180.0, interval=0.02):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return time.monotonic()
        time.sleep(interval)
    raise TimeoutError


def through_control_plane(api: ApiClient, run: int) -> tuple[float, float]:
    t0 = time.monotonic()
    created = api.instances.CreateInstance(pb.CreateInstanceRequest(
        name=f"bench-{run}", flavor="tiny"))
    get = pb.GetInstanceRequest(id_or_name=created.id)
    t_active = wait_for(lambda: api.instances.GetInstance(get).status in ("ACTIVE", "ERROR"))
    console = pb.GetConsoleOutputRequest(id_or_name=created.id, max_bytes=4096)
    marker = MARKER.format(created.id)
    t_marker = wait_for(lambda: marker in api.instances.GetConsoleOutput(console).output,
                        interval=0.05)
    api.instances.DeleteInstance(pb.DeleteInstanceRequest(id_or_name=created.id))
    api.wait_gone(created.id)
    return t_active - t0, t_marker - t0


def direct(driver: LibvirtDriver, image: ImageFiles) -> tuple[float, float]:
    instance_id = str(uuid.uuid4())
    spec = InstanceSpec(instance_id=instance_id, name="bench-direct", vcpus=1, memory_mb=256,
                        disk_gb=1, image=image)
    t0 = time.monotonic()
    driver.spawn(spec)
    t_running = time.monotonic()
    marker = MARKER.format(instance_id).encode()
    t_marker = wait_for(lambda: marker in driver.console_output(instance_id, 4096), interval=0.05)
    driver.destroy(instance_id)
    return t_running - t0, t_marker - t0


def main() -> None:
    cloud, store = start_cloud("bench")
    direct_dir = Path(tempfile.mkdtemp(prefix="smallcloud-bench-direct-"))
    direct_dir.chmod(0o755)
    try:
        api = login(cloud)
        files = cached_image(direct_dir / "_base")
        driver = LibvirtDriver("qemu:///system", str(direct_dir), "bench-direct")
        driver.init_host()
        # Warm both paths once (image fetch into the cache, first connections).
        through_control_plane(api, 0)
        direct(driver, files)
        cp_active, cp_marker, d_running, d_marker = [], [], [], []
        for run in range(1, RUNS + 1):
            a, m = through_control_plane(api, run)
            cp_active.append(a)
            cp_marker.append(m)
            r, m = direct(driver, files)
            d_running.append(r)
            d_marker.append(m)
    finally:
        stop_cloud(cloud, "bench")
        shutil.rmtree(direct_dir, ignore_errors=True)

    med = statistics.median
    print(json.dumps({
        "runs": RUNS,
        "control_plane": {"create_to_active_s": round(med(cp_active), 3),
                          "create_to_boot_marker_s": round(med(cp_marker), 3)},
        "libvirt_direct": {"spawn_to_running_s": round(med(d_running), 3),
                           "spawn_to_boot_marker_s": round(med(d_marker), 3)},
        "overhead_s": {
            "to_active_vs_running": round(med(cp_active) - med(d_running), 3),
            "to_boot_marker": round(med(cp_marker) - med(d_marker), 3)},
        "samples": {"cp_active": [round(x, 3) for x in cp_active],
                    "cp_marker": [round(x, 3) for x in cp_marker],
                    "direct_running": [round(x, 3) for x in d_running],
                    "direct_marker": [round(x, 3) for x in d_marker]},
    }, indent=2))


if __name__ == "__main__":
    main()
