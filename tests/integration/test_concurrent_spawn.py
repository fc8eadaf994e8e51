"""Two copies of one build task spawning the same instance at once (a stalled
build re-sent by the reconciler while the original is slow, not dead): the
agent runs one spawn of an instance at a time, so the second finds the guest
running and returns its power state; neither fails, and the guest runs on.
Real agent, libvirt and QEMU."""

from __future__ import annotations

import subprocess
import uuid
from concurrent.futures import ThreadPoolExecutor

from control.config import load_config
from control.models import Image, Instance, Resources
from control.plane import build_control_plane
from control.store import keys


def domain_state(instance_id: str) -> str:
    done = subprocess.run(["virsh", "-c", "qemu:///system", "domstate", instance_id],
                          capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else "none"


def test_concurrent_spawns_of_one_instance_both_succeed_and_it_runs(cloud, store):
    plane = build_control_plane(load_config(cloud.config_path))
    address = plane.hosts.get(cloud.host_name).address
    image = next(Image(**r.value) for r in store.list(keys.images())
                 if r.value["name"] == "debian-busybox")
    instance = Instance(id=str(uuid.uuid4()), project="demo", name="twice", flavor="tiny",
                        resources=Resources(vcpus=1, memory_mb=128, disk_gb=1), image=image.id)
    try:
        with ThreadPoolExecutor(3) as pool:
            results = list(pool.map(lambda _: plane.agents.spawn(address, instance, image, 60),
                                    range(3)))
        assert results == ["running"] * 3
        assert domain_state(instance.id) == "running"
    finally:
        plane.agents.destroy(address, instance.id)
    assert domain_state(instance.id) == "none"
