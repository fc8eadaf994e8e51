"""Live scale-up on a real guest under QEMU: the running guest sees more vCPUs,
memory (plugged by virtio-mem) and disk without a reboot (same boot id);
stop/start keep the disk and the new sizes."""

import re
import time

from cloudapi.v1 import compute_pb2 as pb

from tests.conftest import until

RESOURCES = re.compile(r"CLOUD-RESOURCES cpus=(\d+) mem_kb=(\d+) disk_bytes=(\d+) boot_id=(\S+)")
BOOT = re.compile(r"CLOUD-BOOT-OK instance_id=(\S+) boot_id=(\S+)")
# Bounds, measured here (a real guest under TCG, a loaded machine): an operation
# (scale, stop, start, cold resize) done in 0.2-4.7 s; a console line within 2-16 s
# of what it follows (the balloon's 512 MiB: 16 s after ACTIVE); a tiny instance
# out of BUILD in 1.4-2.1 s.
IDLE_S = 30
CONSOLE_S = 45
BUILD_S = 20


def console(api, instance_id: str) -> str:
    return api.instances.GetConsoleOutput(pb.GetConsoleOutputRequest(id_or_name=instance_id)).output


def wait_for(api, instance_id: str, check, what: str, timeout_s: float = CONSOLE_S):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        output = console(api, instance_id)
        found = check(output)
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"{what} not on the console after {timeout_s}s:\n{output[-2000:]}")


def resources(output: str) -> list[tuple[int, int, int, str]]:
    return [(int(c), int(m), int(d), b) for c, m, d, b in RESOURCES.findall(output)]


def idle(api, instance_id: str, timeout_s: float = IDLE_S):
    """The instance once no operation is in flight; fails after timeout_s."""
    def done():
        current = api.instances.GetInstance(pb.GetInstanceRequest(id_or_name=instance_id))
        return not current.task_state and current
    return until(done, timeout_s, f"instance {instance_id} idle", every_s=0.2)


def test_live_scale_up_then_stop_and_start(api):
    created = api.instances.CreateInstance(pb.CreateInstanceRequest(name="scale1", flavor="small"))
    try:
        active = api.wait_status(created.id, {"ACTIVE", "ERROR"})
        assert active.status == "ACTIVE", active.fault.message
        assert (active.max_vcpus, active.max_memory_mb) == (4, 2048)
        # The guest boots seeing its flavor's 512 MiB, never its 2 GiB maximum
        # (issue 20: it once booted with the maximum, hidden by a balloon it controls).
        settled = wait_for(api, created.id, resources, "the resources line")
        assert settled[0][1] < 512 * 1024, settled
        cpus, mem_kb, disk, boot_id = settled[-1]
        assert (cpus, disk) == (1, 2 * 2**30)

        api.instances.ScaleInstance(pb.ScaleInstanceRequest(
            id_or_name=created.id, vcpus=2, memory_mb=1024, disk_gb=3))
        scaled = idle(api, created.id)
        assert (scaled.vcpus, scaled.memory_mb, scaled.disk_gb, scaled.status) == (2, 1024, 3, "ACTIVE")
        assert not scaled.HasField("fault"), scaled.fault.message

        def grown(out):
            return [r for r in resources(out) if r[0] == 2 and r[2] == 3 * 2**30 and r[1] > mem_kb]
        cpus2, mem_kb2, _, boot_id2 = wait_for(api, created.id, grown, "the grown resources")[-1]
        assert boot_id2 == boot_id  # no reboot
        assert mem_kb2 - mem_kb > 300 * 1024
        assert BOOT.findall(console(api, created.id))[-1][1] == boot_id

        stats = api.instances.GetInstanceStats(pb.GetInstanceRequest(id_or_name=created.id))
        assert stats.power_state == "running" and stats.vcpus == 2 and stats.cpu_time_ns > 0
        assert stats.memory_actual_kb == 1024 * 1024  # 512 booted with, 512 plugged by virtio-mem
        assert stats.disk_read_bytes > 0

        api.instances.StopInstance(pb.InstanceOperationRequest(id_or_name=created.id))
        stopped = idle(api, created.id)
        assert (stopped.status, stopped.power_state) == ("SHUTOFF", "shutoff")
        api.instances.StartInstance(pb.InstanceOperationRequest(id_or_name=created.id))
        assert idle(api, created.id).status == "ACTIVE"

        def rebooted(out):
            return [r for r in resources(out) if r[3] != boot_id]
        cpus3, _, disk3, boot_id3 = wait_for(api, created.id, rebooted, "a new boot")[0]
        assert boot_id3 != boot_id
        assert (cpus3, disk3) == (2, 3 * 2**30)  # the new sizes were kept for the next boot
        actions = [(a.action, a.result) for a in api.instances.ListInstanceActions(
            pb.ListInstanceActionsRequest(id_or_name=created.id)).actions]
        assert actions == [("create", "success"), ("scale", "success"), ("stop", "success"),
                           ("start", "success")]
    finally:
        api.instances.DeleteInstance(pb.DeleteInstanceRequest(id_or_name=created.id))
        assert api.wait_gone(created.id)


def test_cold_resize_restarts_with_the_new_flavor(api):
    created = api.instances.CreateInstance(pb.CreateInstanceRequest(name="resize1", flavor="small"))
    try:
        assert api.wait_status(created.id, {"ACTIVE", "ERROR"}).status == "ACTIVE"
        # CLOUD-RESOURCES comes after the guest's acpid started: from then on the stop for
        # the resize is a clean ACPI one at the first press (waiting only for the boot
        # marker, the run took 81 s: the press was lost and the stop ran to its timeout).
        boot_id = wait_for(api, created.id, resources, "the resources line")[0][3]
        api.instances.ResizeInstance(pb.ResizeInstanceRequest(id_or_name=created.id, flavor="medium"))
        resized = idle(api, created.id)
        assert (resized.status, resized.flavor, resized.vcpus, resized.disk_gb) == ("ACTIVE", "medium", 2, 5)

        def new_boot(out):
            return [r for r in resources(out) if r[3] != boot_id and r[0] == 2]
        cpus, _, disk, _ = wait_for(api, created.id, new_boot, "a boot with the new flavor")[0]
        assert (cpus, disk) == (2, 5 * 2**30)
    finally:
        api.instances.DeleteInstance(pb.DeleteInstanceRequest(id_or_name=created.id))
        assert api.wait_gone(created.id)


def test_stats_of_a_building_instance_are_empty_not_an_error(api):
    """The agent has no guest to ask while it spawns: the answer is the power
    state alone, never INTERNAL (the dashboard asks from the first second)."""
    created = api.instances.CreateInstance(pb.CreateInstanceRequest(name="stats-early", flavor="tiny"))
    try:
        statuses = set()
        deadline = time.monotonic() + BUILD_S
        while True:
            current = api.instances.GetInstance(pb.GetInstanceRequest(id_or_name=created.id))
            statuses.add(current.status)
            api.instances.GetInstanceStats(pb.GetInstanceRequest(id_or_name=created.id))  # no error
            if current.status != "BUILD":
                break
            assert time.monotonic() < deadline, f"still BUILD after {BUILD_S} s"
            time.sleep(0.02)
        assert "BUILD" in statuses and current.status == "ACTIVE", current.fault.message
    finally:
        api.instances.DeleteInstance(pb.DeleteInstanceRequest(id_or_name=created.id))
        assert api.wait_gone(created.id)
