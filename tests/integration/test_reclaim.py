"""Memory reclaim on real guests under QEMU: the memory an idle guest does not use
goes back to the host through its balloon; a guest that gets busy gets its whole
entitlement back at once, while an idle one stays reclaimed; once it is idle
again, the host gets back the memory it had touched.

Figures (MiB, seconds) are printed and written to test-output/reclaim.json.
The agent runs with short timings here (reclaim after 8 s quiet, every 1 s);
the defaults are in compute_agent/config.py.
"""

import json
import re
import time

import pytest
from cloudapi.v1 import compute_pb2 as pb

from tests.conftest import OUTPUT, login, start_cloud, stop_cloud
from tests.guest_console import GuestConsole

MIB = 1024  # KiB
HEADROOM_MB = 64
AGENT_SETTINGS = {"reclaim_idle_s": 8, "reclaim_interval_s": 1, "reclaim_headroom_mb": HEADROOM_MB,
                  "reclaim_step_mb": 64, "reclaim_floor_mb": 128, "reclaim_floor_ratio": 0.25}
# The busy guest writes 30 x 8 MiB into a tmpfs, 8 MiB a second: memory it cannot
# give back (tmpfs pages are not reclaimable without swap); it holds them a while,
# then drops them. One command line: the shell's line editing may swallow a line
# typed while it redraws its prompt. The quotes keep the echoed command line from
# matching the markers.
FILL_FILES = 30
HOLD_S = 10
FILL = ("mkdir -p /m && mount -t tmpfs -o size=400m t /m && "
        f"for i in $(seq 1 {FILL_FILES}); do dd if=/dev/zero of=/m/f$i bs=1M count=8 2>/dev/null; "
        'sleep 1; done; echo "FILL""-DONE files=$(ls /m | wc -l)"; '
        f'sleep {HOLD_S}; rm -f /m/f*; umount /m; echo "DROP""PED"')
FILL_DONE = re.compile(r"FILL-DONE files=(\d+)")
DROPPED = "DROPPED"
OOM = re.compile(r"Out of memory|oom-kill|invoked oom-killer")


@pytest.fixture(scope="module")
def reclaim_api():
    cloud, _store = start_cloud("reclaim", agent_settings=AGENT_SETTINGS)
    yield login(cloud)
    stop_cloud(cloud, "reclaim")


def stats(api, instance_id):
    return api.instances.GetInstanceStats(pb.GetInstanceRequest(id_or_name=instance_id))


def console(api, instance_id) -> str:
    return api.instances.GetConsoleOutput(pb.GetConsoleOutputRequest(id_or_name=instance_id)).output


def wait_until(check, what: str, timeout_s: float = 180, every_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s}s: {what}")
        time.sleep(every_s)


def settled_reclaim(api, instance_id, minimum_kib: int, quiet_s: float = 8):
    """The guest's stats once reclaim took at least minimum_kib and the balloon then
    stayed put for quiet_s (reclaim is done stepping)."""
    last = {"actual": None, "since": time.monotonic()}

    def check():
        s = stats(api, instance_id)
        if s.memory_actual_kb != last["actual"]:
            last.update(actual=s.memory_actual_kb, since=time.monotonic())
            return None
        if s.memory_reclaimed_kb >= minimum_kib and time.monotonic() - last["since"] >= quiet_s:
            return s
        return None
    return wait_until(check, f"reclaim of {instance_id} settling", every_s=1)


def mib(kib: int) -> float:
    return round(kib / MIB, 1)


def test_idle_guests_give_memory_back_and_a_busy_one_gets_it_again(reclaim_api):
    api = reclaim_api
    names = ["idle1", "busy1"]
    ids = {n: api.instances.CreateInstance(pb.CreateInstanceRequest(name=n, flavor="small")).id
           for n in names}
    figures: dict = {"settings": AGENT_SETTINGS, "flavor": "small (512 MiB)", "guests": {}}
    try:
        for instance_id in ids.values():
            active = api.wait_status(instance_id, {"ACTIVE", "ERROR"})
            assert active.status == "ACTIVE", active.fault.message
        booted = {}
        for name, instance_id in ids.items():
            wait_until(lambda i=instance_id: "Please press Enter" in console(api, i),
                       "the guest's console shell prompt")
            booted[name] = stats(api, instance_id)

        # --- idle: both are reclaimed down to what they use plus the headroom
        idle = {n: settled_reclaim(api, i, minimum_kib=128 * MIB) for n, i in ids.items()}
        for name, s in idle.items():
            assert s.memory_entitled_kb == 512 * MIB
            assert s.memory_actual_kb == s.memory_entitled_kb - s.memory_reclaimed_kb
            assert s.memory_actual_kb >= 128 * MIB  # the floor
            # It keeps about the headroom usable (and is not starved).
            assert HEADROOM_MB // 2 * MIB <= s.memory_usable_kb <= (HEADROOM_MB + 16) * MIB
            figures["guests"][name] = {"entitled_mib": mib(s.memory_entitled_kb),
                                       "booted_actual_mib": mib(booted[name].memory_actual_kb),
                                       "booted_host_rss_mib": mib(booted[name].memory_rss_kb),
                                       "idle_actual_mib": mib(s.memory_actual_kb),
                                       "idle_reclaimed_mib": mib(s.memory_reclaimed_kb),
                                       "idle_usable_mib": mib(s.memory_usable_kb),
                                       "idle_host_rss_mib": mib(s.memory_rss_kb)}
        figures["idle_freed_mib"] = mib(sum(s.memory_reclaimed_kb for s in idle.values()))

        # --- busy: busy1 fills a tmpfs; its memory comes back, idle1's does not
        busy_id, idle_id = ids["busy1"], ids["idle1"]
        with GuestConsole(busy_id) as keyboard:
            keyboard.shell().type(FILL)
            started = time.monotonic()
            first_low = returned = None
            peak_actual = 0
            idle_actual_max = 0
            while not FILL_DONE.search(console(api, busy_id)):
                assert time.monotonic() - started < 120, "the fill did not finish"
                busy, other = stats(api, busy_id), stats(api, idle_id)
                now = time.monotonic() - started
                if first_low is None and busy.memory_usable_kb < HEADROOM_MB // 2 * MIB:
                    first_low = now
                if returned is None and busy.memory_actual_kb == busy.memory_entitled_kb:
                    returned = now
                peak_actual = max(peak_actual, busy.memory_actual_kb)
                idle_actual_max = max(idle_actual_max, other.memory_actual_kb)
                time.sleep(0.25)
        out = console(api, busy_id)
        assert int(FILL_DONE.search(out).group(1)) == FILL_FILES
        assert not OOM.search(out), "the busy guest ran out of memory"
        assert returned is not None, "the busy guest's memory did not come back"
        assert peak_actual == 512 * MIB
        assert idle_actual_max <= idle["idle1"].memory_actual_kb  # idle1 stayed reclaimed
        busy_after = stats(api, busy_id)
        figures["guests"]["busy1"].update(
            busy_returned_mib=mib(peak_actual - idle["busy1"].memory_actual_kb),
            busy_seconds_from_fill_start_to_entitlement=round(returned, 1),
            busy_seconds_from_low_usable_to_entitlement=(
                round(returned - first_low, 1) if first_low is not None else None),
            busy_host_rss_mib=mib(busy_after.memory_rss_kb))
        figures["guests"]["idle1"]["actual_max_while_busy1_busy_mib"] = mib(idle_actual_max)

        # --- idle again: busy1 drops its files; reclaim takes the memory back, and
        # the host frees what the guest had touched (QEMU's resident set shrinks).
        wait_until(lambda: DROPPED in console(api, busy_id), "the busy guest dropping its files")
        again = settled_reclaim(api, busy_id, minimum_kib=128 * MIB)
        figures["guests"]["busy1"].update(
            idle_again_actual_mib=mib(again.memory_actual_kb),
            idle_again_host_rss_mib=mib(again.memory_rss_kb),
            host_rss_freed_after_busy_mib=mib(busy_after.memory_rss_kb - again.memory_rss_kb))
        assert busy_after.memory_rss_kb - again.memory_rss_kb > 100 * MIB
        final = {n: stats(api, i) for n, i in ids.items()}
        figures["freed_mib_at_end"] = mib(sum(s.memory_reclaimed_kb for s in final.values()))
        # Reclaim is invisible to the control plane: the instances keep their flavor.
        for instance_id in ids.values():
            assert api.instances.GetInstance(
                pb.GetInstanceRequest(id_or_name=instance_id)).memory_mb == 512
    finally:
        OUTPUT.mkdir(exist_ok=True)
        (OUTPUT / "reclaim.json").write_text(json.dumps(figures, indent=2) + "\n")
        print("\nmemory reclaim:", json.dumps(figures, indent=2))
        for instance_id in ids.values():
            api.instances.DeleteInstance(pb.DeleteInstanceRequest(id_or_name=instance_id))
        for instance_id in ids.values():
            assert api.wait_gone(instance_id)
