"""Lifecycle on real guests (libvirt + QEMU under TCG), for what the fake driver
cannot show: a scale-down the guest sees (memory live, vCPUs while stopped;
vCPUs live is an expected failure, see its test); a delete in the middle of a
cold resize that leaves nothing behind; a guest that powers itself off; a soft
reboot; a stop while the guest boots; a guest that ignores the power button,
powered off after the stop timeout; and the agent registering again after the
control plane forgot its host, its guests running on.

One private cloud for the module: a short stop timeout (the forced power-off is
timed against it) and the reconciler every second (it turns a guest's own
power-off into SHUTOFF). Two guests are shared: `plain` (no user data) and
`deaf` (its user data makes the power button do nothing); each test that uses
one brings it to the state it needs first."""

from __future__ import annotations

import re
import subprocess
import time

import libvirt
import pytest
from cloudapi.v1 import compute_pb2 as pb
from cloudapi.v1 import identity_pb2 as ipb

from control.compute.actions import history as action_history
from control.models import Host
from control.placement.allocations import Placement
from control.store import keys
from control.store.etcd import Txn
from tests.conftest import login, start_cloud, stop_cloud, until
from tests.guest_console import GuestConsole

# Long enough for a guest stopped as it starts to boot and hear the power
# button (measured 9.4-9.6 s, 20 s under a load average of 4 on the 2 cores).
STOP_TIMEOUT_S = 30

# Waits, with what they took here (2 cores shared, load average 3-5):
ACTIVE_S = 8      # create to ACTIVE: measured 0.5-2.6 s
BOOT_S = 30       # start or create to a console marker of the boot (up to the user data's
                  # end, the balloon settled): measured 2-13 s, 18 s under heavier load
OPERATION_S = 10  # an operation to done (start, scale, a clean stop or reboot): 0.1-3.4 s
GONE_S = 8        # delete to gone: measured 0.1-2.5 s
QUICK_S = 5       # what follows in a second or two (a marker after an action, a
                  # heartbeat, the balloon at its target): measured 0-3.0 s

BOOT = re.compile(r"CLOUD-BOOT-OK instance_id=(\S+) boot_id=(\S+)")
RESOURCES = re.compile(r"CLOUD-RESOURCES cpus=(\d+) mem_kb=(\d+) disk_bytes=(\d+) boot_id=(\S+)")

# The power button (acpid runs /etc/acpi/power) now only says it was pressed.
DEAF = b"""#!/bin/sh
cat > /etc/acpi/power <<'EOF'
#!/bin/sh
echo TEST-POWER-BUTTON-IGNORED > /dev/console
EOF
chmod 755 /etc/acpi/power
sync
echo TEST-DEAF-READY
"""

SELF_POWEROFF = b"""#!/bin/sh
echo TEST-POWERING-OFF
poweroff
"""


# ---------------------------------------------------------------- helpers


def console(api, instance_id: str) -> str:
    return api.instances.GetConsoleOutput(
        pb.GetConsoleOutputRequest(id_or_name=instance_id)).output.replace("\r", "")


def wait_console(api, instance_id: str, check, what: str, timeout_s: float):
    """Poll the console until check(output) (a regex or a function) gives
    something true; return that. Fails with the console's tail."""
    seen = [""]

    def look():
        seen[0] = console(api, instance_id)
        return re.search(check, seen[0]) if isinstance(check, str) else check(seen[0])

    try:
        return until(look, timeout_s, what, every_s=0.2)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; console:\n{seen[0][-2000:]}") from None


def boots(output: str) -> list[str]:
    return [boot_id for _, boot_id in BOOT.findall(output)]


def resources(output: str) -> list[tuple[int, int, int, str]]:
    return [(int(c), int(m), int(d), b) for c, m, d, b in RESOURCES.findall(output)]


def get(api, instance_id: str) -> pb.Instance:
    return api.instances.GetInstance(pb.GetInstanceRequest(id_or_name=instance_id))


def idle(api, instance_id: str, timeout_s: float) -> pb.Instance:
    """The instance once no operation is in flight."""
    return until(lambda: (lambda i: i if not i.task_state else None)(get(api, instance_id)),
                 timeout_s, f"{instance_id} to finish its operation")


def actions(api, instance_id: str) -> list[tuple[str, str, str]]:
    return [(a.action, a.result, a.user) for a in api.instances.ListInstanceActions(
        pb.ListInstanceActionsRequest(id_or_name=instance_id)).actions]


def usage(api) -> tuple[int, int, int, int]:
    u = api.quotas.GetQuota(ipb.GetQuotaRequest()).usage
    return (u.instances, u.vcpus, u.memory_mb, u.disk_gb)


_libvirt: list[libvirt.virConnect] = []


def domain(instance_id: str) -> libvirt.virDomain | None:
    """The guest's libvirt domain, as the host sees it (None if there is none)."""
    if not _libvirt:
        _libvirt.append(libvirt.open("qemu:///system"))
    try:
        return _libvirt[0].lookupByUUIDString(instance_id)
    except libvirt.libvirtError:
        return None


def domains_listed() -> str:
    """What `virsh list --all` shows: every domain, running or not."""
    return subprocess.run(["virsh", "-c", "qemu:///system", "list", "--all", "--uuid"],
                          check=True, capture_output=True, text=True).stdout


def agent_log(cloud) -> str:
    return (cloud.root / "logs" / "agent.log").read_text(errors="replace")


def delete(api, instance_id: str) -> None:
    api.instances.DeleteInstance(pb.DeleteInstanceRequest(id_or_name=instance_id))
    assert api.wait_gone(instance_id, timeout_s=GONE_S)


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def life():
    cloud, store = start_cloud("real-lifecycle", control_settings={
        "stop_timeout_s": STOP_TIMEOUT_S, "reconcile_interval_s": 1})
    yield cloud, store, login(cloud)
    stop_cloud(cloud, "real-lifecycle")


@pytest.fixture(scope="module")
def guests(life):
    """`plain` and `deaf`, created together (their boots overlap), booted, deaf's
    power button disabled."""
    _, _, api = life
    made = {name: api.instances.CreateInstance(pb.CreateInstanceRequest(
        name=name, flavor="tiny", user_data=data))
        for name, data in (("plain", b""), ("deaf", DEAF))}
    for instance in made.values():
        shown = api.wait_status(instance.id, {"ACTIVE", "ERROR"}, timeout_s=ACTIVE_S)
        assert shown.status == "ACTIVE", shown.fault.message
    wait_console(api, made["plain"].id, r"CLOUD-RESOURCES ", "plain's boot", BOOT_S)
    wait_console(api, made["deaf"].id, r"(?m)^CLOUD-USERDATA-END rc=0", "deaf's user data", BOOT_S)
    yield made
    left = {i.id for i in api.instances.ListInstances(pb.ListInstancesRequest()).instances}
    for instance in made.values():
        if instance.id in left:  # (a test deletes deaf)
            delete(api, instance.id)


def running(api, instance_id: str) -> str:
    """Start the instance if it is stopped and wait until its guest listens (its
    init starts acpid before it prints CLOUD-RESOURCES); its boot id."""
    if get(api, instance_id).status == "SHUTOFF":
        api.instances.StartInstance(pb.InstanceOperationRequest(id_or_name=instance_id))
    assert idle(api, instance_id, OPERATION_S).status == "ACTIVE"

    def listening(output):
        booted = boots(output)
        return booted and [r for r in resources(output) if r[3] == booted[-1]] and booted[-1]
    return wait_console(api, instance_id, listening, "a boot", BOOT_S)


# ---------------------------------------------------------------- tests


def test_soft_reboot_shuts_down_cleanly_and_boots_again(life, guests):
    """A reboot without --hard: the guest shuts down by itself (the power
    button) and a new QEMU boots it again; the instance ends ACTIVE."""
    _, _, api = life
    plain = guests["plain"].id
    first = running(api, plain)
    qemu = domain(plain).ID()  # the QEMU process's id in libvirt; a reset keeps it
    started = time.monotonic()
    rebooting = api.instances.RebootInstance(pb.InstanceOperationRequest(id_or_name=plain))
    assert rebooting.status == "REBOOT"
    # The console log starts afresh with each QEMU: catch the clean shutdown first.
    wait_console(api, plain, r"(?m)^CLOUD-SHUTDOWN action=poweroff", "the guest's shutdown", QUICK_S)
    done = idle(api, plain, OPERATION_S)
    took = time.monotonic() - started
    assert (done.status, done.power_state) == ("ACTIVE", "running"), done.fault.message
    second = wait_console(api, plain, lambda out: [b for b in boots(out) if b != first],
                          "a second boot", BOOT_S)
    assert len(second) == 1
    assert domain(plain).ID() != qemu  # a new QEMU: shut down and started, not reset
    assert actions(api, plain)[-1][:2] == ("reboot", "success")
    print(f"\nsoft reboot: {took:.1f}s to ACTIVE")
    assert took < 12  # measured 3.8-4.7 s; the agent would force it off after 30 s


def test_stop_is_clean_even_while_the_guest_boots(life, guests):
    """A stop presses the power button; a guest still booting has nothing
    listening to it yet, so the agent presses again until the guest goes off
    by itself, rather than forcing it off at the timeout."""
    cloud, _, api = life
    plain = guests["plain"].id
    running(api, plain)
    started = time.monotonic()
    api.instances.StopInstance(pb.InstanceOperationRequest(id_or_name=plain))
    stopped = idle(api, plain, OPERATION_S)
    booted = time.monotonic() - started
    assert (stopped.status, stopped.power_state) == ("SHUTOFF", "shutoff")
    assert "CLOUD-SHUTDOWN action=poweroff" in console(api, plain)

    api.instances.StartInstance(pb.InstanceOperationRequest(id_or_name=plain))
    assert idle(api, plain, OPERATION_S).status == "ACTIVE"
    assert "CLOUD-RESOURCES" not in console(api, plain)  # not listening yet
    started = time.monotonic()
    api.instances.StopInstance(pb.InstanceOperationRequest(id_or_name=plain))
    stopped = idle(api, plain, STOP_TIMEOUT_S + OPERATION_S)
    booting = time.monotonic() - started
    assert (stopped.status, stopped.power_state) == ("SHUTOFF", "shutoff")
    output = console(api, plain)
    assert "CLOUD-RESOURCES" in output and "CLOUD-SHUTDOWN action=poweroff" in output
    assert f"{plain} did not shut down" not in agent_log(cloud)
    print(f"\nclean stop: {booted:.1f}s when booted, {booting:.1f}s while booting "
          f"(stop_timeout_s {STOP_TIMEOUT_S})")
    assert booted < 8  # measured 3.1-3.4 s
    # Not forced off (that would be at STOP_TIMEOUT_S): measured 9.4-9.6 s, 20 s under load.
    assert booting < STOP_TIMEOUT_S


def test_forced_power_off_after_the_stop_timeout(life, guests):
    """A guest that ignores the power button is powered off once the stop
    timeout has passed, and is SHUTOFF."""
    cloud, _, api = life
    deaf = guests["deaf"].id
    running(api, deaf)
    started = time.monotonic()
    api.instances.StopInstance(pb.InstanceOperationRequest(id_or_name=deaf))
    stopped = idle(api, deaf, STOP_TIMEOUT_S + OPERATION_S)
    forced = time.monotonic() - started
    assert (stopped.status, stopped.power_state) == ("SHUTOFF", "shutoff"), stopped.fault.message
    assert not stopped.HasField("fault")
    output = console(api, deaf)
    # It was asked (more than once), did nothing, and was powered off.
    assert output.count("TEST-POWER-BUTTON-IGNORED") >= 2
    assert "CLOUD-SHUTDOWN" not in output
    assert f"{deaf} did not shut down in {STOP_TIMEOUT_S}s: powering off" in agent_log(cloud)
    assert domain(deaf).state()[0] == libvirt.VIR_DOMAIN_SHUTOFF
    assert actions(api, deaf)[-1][:2] == ("stop", "success")
    print(f"\nforced stop {forced:.1f}s (stop_timeout_s {STOP_TIMEOUT_S})")
    assert STOP_TIMEOUT_S <= forced < STOP_TIMEOUT_S + 4  # measured 31.6-32.0 s


def test_guest_that_powers_itself_off_is_shutoff_and_starts_again(life):
    """Its user data runs `poweroff`: the agent sees the domain off, the
    instance becomes SHUTOFF, and it starts again (the script ran once)."""
    _, _, api = life
    created = api.instances.CreateInstance(pb.CreateInstanceRequest(
        name="self-off", flavor="tiny", user_data=SELF_POWEROFF))
    try:
        assert api.wait_status(created.id, {"ACTIVE", "ERROR"}, ACTIVE_S).status == "ACTIVE"
        first = wait_console(api, created.id, lambda out: boots(out), "the boot", BOOT_S)[0]
        wait_console(api, created.id, r"(?m)^TEST-POWERING-OFF\nCLOUD-SHUTDOWN action=poweroff",
                     "its poweroff", BOOT_S)
        until(lambda: domain(created.id).state()[0] == libvirt.VIR_DOMAIN_SHUTOFF, QUICK_S,
              "the guest off")  # measured 2.5-2.7 s
        off_at = time.monotonic()
        off = api.wait_status(created.id, {"SHUTOFF"}, QUICK_S)
        took = time.monotonic() - off_at
        assert (off.status, off.power_state) == ("SHUTOFF", "shutoff")
        # Nobody asked for it: the reconciler recorded what the agent saw.
        assert [a for a in actions(api, created.id) if a[0] == "stop"] == [
            ("stop", "success", "reconciler")]
        print(f"\nguest's own poweroff seen as SHUTOFF {took:.1f}s after the domain went off")
        # Measured 0.5-1.0 s: at most a heartbeat (every 1 s) and a reconciler pass (every 1 s).
        assert took < 4

        api.instances.StartInstance(pb.InstanceOperationRequest(id_or_name=created.id))
        assert idle(api, created.id, OPERATION_S).status == "ACTIVE"
        wait_console(api, created.id, r"(?m)^CLOUD-USERDATA skipped=already-ran",
                     "the user data skipped on the second boot", BOOT_S)
        output = console(api, created.id)
        assert boots(output) and boots(output)[0] != first
        shown = get(api, created.id)
        assert (shown.status, shown.power_state) == ("ACTIVE", "running")
        assert domain(created.id).isActive()
    finally:
        delete(api, created.id)


def books(api, placement, cloud, instance_id: str):
    """(quota usage of the project, the instance's allocation, the host's usage)."""
    allocation = placement.allocation(instance_id)
    host = placement.usage(cloud.host_name)
    return (usage(api), allocation and (allocation.resources.vcpus, allocation.resources.memory_mb,
                                        allocation.resources.disk_gb),
            (host.vcpus, host.memory_mb, host.disk_gb))


def test_scale_down_memory_live_then_vcpus_stopped(life):
    """Memory plugged live (virtio-mem) goes again live: the guest sees it come
    and go in the same boot. Below the memory it booted with, a live scale is
    refused with a fault saying so and changes nothing (the guest would keep
    what a balloon hid: issue 20). Fewer vCPUs and less memory while stopped:
    the next boot has them. Quota usage, the allocation and the host's usage
    follow each."""
    cloud, store, api = life
    placement = Placement(store, None)
    (count, vcpus, memory, disk), _, host = books(api, placement, cloud, "none")

    def held(v, m, d):
        return ((count + 1, vcpus + v, memory + m, disk + d), (v, m, d),
                (host[0] + v, host[1] + m, host[2] + d))

    created = api.instances.CreateInstance(pb.CreateInstanceRequest(name="shrink", flavor="medium"))
    try:
        assert api.wait_status(created.id, {"ACTIVE", "ERROR"}, ACTIVE_S).status == "ACTIVE"
        # It boots seeing its 1 GiB, never its maximum.
        _, mem_kb, disk_bytes, boot_id = wait_console(
            api, created.id, lambda out: [r for r in resources(out) if r[0] == 2], "2 vCPUs", BOOT_S)[-1]
        assert mem_kb < 1024 * 1024
        assert books(api, placement, cloud, created.id) == held(2, 1024, 5)

        started = time.monotonic()
        for memory_mb, seen in ((1536, lambda m: m > mem_kb + 480 * 1024),
                                (1024, lambda m: m < mem_kb + 32 * 1024)):
            api.instances.ScaleInstance(pb.ScaleInstanceRequest(id_or_name=created.id,
                                                                memory_mb=memory_mb))
            scaled = idle(api, created.id, OPERATION_S)
            assert (scaled.status, scaled.memory_mb) == ("ACTIVE", memory_mb), scaled.fault.message
            assert not scaled.HasField("fault"), scaled.fault.message
            assert books(api, placement, cloud, created.id) == held(2, memory_mb, 5)
            cpus, _, disk_bytes2, boot_id2 = wait_console(
                api, created.id, lambda out, seen=seen: [r for r in resources(out) if seen(r[1])],
                f"the guest's memory at {memory_mb} MiB", QUICK_S)[-1]
            assert (cpus, disk_bytes2, boot_id2) == (2, disk_bytes, boot_id)  # live: the same boot
        took = time.monotonic() - started
        stats = api.instances.GetInstanceStats(pb.GetInstanceRequest(id_or_name=created.id))
        assert stats.memory_entitled_kb == 1024 * 1024

        api.instances.ScaleInstance(pb.ScaleInstanceRequest(id_or_name=created.id, memory_mb=512))
        refused = idle(api, created.id, OPERATION_S)
        assert (refused.status, refused.memory_mb) == ("ACTIVE", 1024)
        assert "booted with" in refused.fault.message, refused.fault.message
        assert books(api, placement, cloud, created.id) == held(2, 1024, 5)

        api.instances.StopInstance(pb.InstanceOperationRequest(id_or_name=created.id))
        assert idle(api, created.id, OPERATION_S).status == "SHUTOFF"
        api.instances.ScaleInstance(pb.ScaleInstanceRequest(id_or_name=created.id, vcpus=1,
                                                            memory_mb=384))
        scaled = idle(api, created.id, OPERATION_S)
        assert (scaled.status, scaled.vcpus, scaled.memory_mb) == ("SHUTOFF", 1, 384), \
            scaled.fault.message
        assert not scaled.HasField("fault"), scaled.fault.message
        assert books(api, placement, cloud, created.id) == held(1, 384, 5)
        api.instances.StartInstance(pb.InstanceOperationRequest(id_or_name=created.id))
        assert idle(api, created.id, OPERATION_S).status == "ACTIVE"
        # The new boot: 1 vCPU and 384 MiB.
        cpus, _, _, boot_id3 = wait_console(
            api, created.id, lambda out: [r for r in resources(out) if r[1] < 384 * 1024],
            "384 MiB", BOOT_S)[-1]
        assert boot_id3 != boot_id and cpus == 1
        done = [a[:2] for a in actions(api, created.id)]
        assert done[:3] == [("create", "success"), ("scale", "success"), ("scale", "success")]
        assert done[3][0] == "scale" and done[3][1] != "success"
        assert done[4:] == [("stop", "success"), ("scale", "success"), ("start", "success")]
        print(f"\nlive memory scale 1024 -> 1536 -> 1024 MiB: {took:.1f}s to seen in the guest")
    finally:
        delete(api, created.id)
    assert books(api, placement, cloud, created.id) == ((count, vcpus, memory, disk), None, host)


@pytest.mark.xfail(strict=True, reason=(
    "live vCPU removal does not work on this hypervisor: the vCPUs a guest boots with "
    "are not hotpluggable (libvirt: 'failed to find appropriate hotpluggable vcpus'), and "
    "removing a hot-added one times out (the guest offlines it, QEMU never sees it "
    "ejected); the API accepts the scale and the task undoes it with a fault"))
def test_scale_down_vcpus_live(life):
    _, _, api = life
    created = api.instances.CreateInstance(pb.CreateInstanceRequest(name="fewer-cpus", flavor="medium"))
    try:
        assert api.wait_status(created.id, {"ACTIVE", "ERROR"}, ACTIVE_S).status == "ACTIVE"
        boot_id = wait_console(api, created.id, lambda out: [r for r in resources(out) if r[0] == 2],
                               "2 vCPUs", BOOT_S)[-1][3]
        api.instances.ScaleInstance(pb.ScaleInstanceRequest(id_or_name=created.id, vcpus=1))
        scaled = idle(api, created.id, OPERATION_S)
        assert (scaled.status, scaled.vcpus) == ("ACTIVE", 1), scaled.fault.message
        assert not scaled.HasField("fault"), scaled.fault.message
        wait_console(api, created.id,
                     lambda out: [r for r in resources(out) if r[0] == 1 and r[3] == boot_id],
                     "1 vCPU, same boot", BOOT_S)
    finally:
        delete(api, created.id)


def task_end(cloud, task_id: str) -> str:
    """The worker's line saying how the task ended (succeeded or raised), or ''."""
    log = (cloud.root / "logs" / "worker.log").read_text(errors="replace")
    found = re.search(rf"Task cloud\.instance_operation\[{task_id}\] (succeeded|raised).*", log)
    return found.group(0) if found else ""


def test_delete_during_cold_resize_leaves_nothing(life, guests):
    """The delete lands while the resize waits for the guest to stop (it ignores
    the power button, so the agent waits stop_timeout_s): when both tasks are
    over, no domain, no files, no allocation, and the quota the resize claimed
    is given back with the rest."""
    cloud, store, api = life
    deaf = guests["deaf"].id
    running(api, deaf)
    placement = Placement(store, None)
    host_before = placement.usage(cloud.host_name)
    usage_before = usage(api)
    worker_log = cloud.root / "logs" / "worker.log"
    received = re.compile(r"Task cloud\.instance_operation\[([0-9a-f-]+)\] received")
    tasks_before = len(received.findall(worker_log.read_text(errors="replace")))
    actions_before = len(action_history(store, "demo", deaf))

    resizing = api.instances.ResizeInstance(pb.ResizeInstanceRequest(id_or_name=deaf, flavor="small"))
    assert resizing.status == "RESIZE"
    assert usage(api) == (usage_before[0], usage_before[1], usage_before[2] + 256, usage_before[3] + 1)
    wait_console(api, deaf, r"(?m)^TEST-POWER-BUTTON-IGNORED", "the resize's power button", QUICK_S)
    pressed = time.monotonic()
    api.instances.DeleteInstance(pb.DeleteInstanceRequest(id_or_name=deaf))
    assert api.wait_gone(deaf, timeout_s=GONE_S)
    gone = time.monotonic() - pressed

    # The resize task's own end: whatever it did after the delete is done by then.
    task_id = until(lambda: received.findall(worker_log.read_text(errors="replace"))[tasks_before:],
                    QUICK_S, "the resize task")[0]
    ended = until(lambda: task_end(cloud, task_id), OPERATION_S, "the resize task's end")
    print(f"\ndeleted {gone:.1f}s after the resize pressed the power button; "
          f"the resize task then: {ended}")
    # It found the guest gone and gave up cleanly: no error from the agent's
    # depths, and its action is closed (the instance's history outlives it).
    assert " succeeded " in ended, ended
    history = action_history(store, "demo", deaf)
    assert [(a.action, a.result) for a in history[actions_before:]] == [
        ("resize", "error"), ("delete", "success")]
    assert "running" not in [a.result for a in history]
    # The resize was still waiting for the guest to stop when the delete took it.
    assert f"instance {deaf} is not on this host" in history[actions_before].error
    assert deaf not in domains_listed()
    assert not (cloud.root / "agent" / "instances" / deaf).exists()
    assert placement.allocation(deaf) is None
    assert store.get(keys.instance_index(deaf)) is None
    assert usage(api) == (usage_before[0] - 1, usage_before[1] - 1, usage_before[2] - 256,
                          usage_before[3] - 1)
    tiny = placement.usage(cloud.host_name)
    assert (host_before.vcpus - tiny.vcpus, host_before.memory_mb - tiny.memory_mb,
            host_before.disk_gb - tiny.disk_gb) == (1, 256, 1)


def test_agent_registers_again_after_its_host_record_is_deleted(life, guests):
    """The control plane forgets the host (its record deleted from etcd): the
    agent's next heartbeat is refused NOT_FOUND, it registers again, and goes
    on reporting its guests, which ran on untouched."""
    cloud, store, api = life
    plain = guests["plain"].id
    boot_id = running(api, plain)
    qemu = domain(plain).ID()
    key = keys.host(cloud.host_name)
    record = store.get(key)
    before = Host(**record.value)
    registrations = agent_log(cloud).count(f"registered host {cloud.host_name} ")

    assert store.commit(Txn().expect(record).delete(key))
    deleted = time.monotonic()
    back = Host(**until(lambda: store.get(key), 8, "the host registered again").value)
    took = time.monotonic() - deleted
    assert (back.address, back.inventory, back.virt_type, back.up) == \
        (before.address, before.inventory, "qemu", True)
    until(lambda: Host(**store.get(key).value).last_heartbeat > back.last_heartbeat, QUICK_S,
          "heartbeats after the registration")
    log = agent_log(cloud)
    assert f"host {cloud.host_name} is not registered" in log
    assert log.count(f"registered host {cloud.host_name} ") == registrations + 1
    print(f"\nhost registered again {took:.1f}s after its record was deleted")
    assert took < 8  # measured 1.3-3.2 s (heartbeats every 1 s: one refused, then register)

    # Its guest ran on: the same QEMU, the same boot, still ACTIVE.
    assert domain(plain).ID() == qemu and domain(plain).isActive()
    assert boots(console(api, plain)) == [boot_id]
    shown = get(api, plain)
    assert (shown.status, shown.power_state, shown.host) == ("ACTIVE", "running", cloud.host_name)
    # And it is still reported: it powers itself off, and the instance follows.
    with GuestConsole(plain) as keyboard:
        keyboard.shell().type("poweroff")
    off = api.wait_status(plain, {"SHUTOFF"}, OPERATION_S)  # measured 2.8-3.2 s
    assert (off.status, off.power_state) == ("SHUTOFF", "shutoff")
