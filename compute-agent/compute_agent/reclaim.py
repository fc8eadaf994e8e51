"""Memory reclaim: take back through the virtio balloon what an idle guest does not
use, down to a floor, and give it back as soon as the guest needs it.

The tenant's entitlement is the memory of its flavor (or of its last scale): the
domain's persistent currentMemory. Reclaim only ever moves the *live* balloon
below it, never above it and never in the persistent config, so a restart, a
scale or a resize brings the whole entitlement back and the control plane's
accounting (quota, host capacity) is untouched: reclaimed memory is a host-side
saving, not a smaller instance.

`decide` is the whole policy, a pure function of one guest's balloon figures, what
the loop remembers of that guest, the settings and the time; `ReclaimLoop` applies
it to every running guest of the host every `interval_s`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from compute_agent.driver import BalloonStatus, ComputeDriver, DriverError

log = logging.getLogger(__name__)

MIB = 1024  # KiB
# The balloon counts as having reached a target within this much (KiB).
SETTLE_SLACK_KIB = 1 * MIB
# Changes smaller than this are not worth a balloon move (KiB).
MIN_CHANGE_KIB = 8 * MIB


@dataclass(frozen=True)
class ReclaimSettings:
    enabled: bool = True
    floor_mb: int = 128         # never below this...
    floor_ratio: float = 0.25   # ...nor below this share of the entitlement
    idle_s: float = 30.0        # quiet this long (after boot, scale, busy) before reclaiming
    interval_s: float = 2.0     # how often each guest is looked at
    headroom_mb: int = 64       # usable memory left to an idle guest; busy below half of it
    step_mb: int = 64           # most taken back per interval, so it goes gradually


@dataclass(frozen=True)
class GuestState:
    """What the loop remembers of one guest between rounds."""
    run_id: str
    entitled_kib: int
    quiet_since: float          # when it was last busy, growing, (re)started or scaled
    quiet_used_kib: int         # its lowest usage since then
    target_kib: int = 0         # the balloon target we last set (0: none this run)
    # The guest's stats report current when the balloon was seen at our target;
    # only a later report shows the guest after the move.
    settled_report: int | None = None


@dataclass(frozen=True)
class Step:
    target_kib: int | None      # the new live balloon size, or None: leave it
    reason: str                 # "idle", "busy" or "disabled" when target_kib is set
    state: GuestState


def floor_kib(entitled_kib: int, settings: ReclaimSettings) -> int:
    return min(entitled_kib, max(settings.floor_mb * MIB, int(settings.floor_ratio * entitled_kib)))


def decide(status: BalloonStatus, state: GuestState | None, settings: ReclaimSettings,
           now: float) -> Step:
    """The balloon move for one guest this round, if any.

    - A guest seen for the first time, restarted, or whose entitlement changed
      (scale) starts a quiet period: it keeps its memory for `idle_s` at least.
    - Busy (usable below half the headroom): give the whole entitlement back at
      once; OOM in the guest costs more than a few idle MiB on the host.
    - Quiet for `idle_s` (not busy, usage not grown by a quarter of the headroom
      since the quiet period began): shrink by at most
      `step_mb` per round towards max(floor, what leaves it `headroom_mb` usable),
      each step only after the guest has reported on the previous one.
    - Disabled: never shrink, and give back anything still reclaimed.
    """
    used = status.available_kib - status.usable_kib  # what the guest cannot give up
    if (state is None or state.run_id != status.run_id
            or state.entitled_kib != status.entitled_kib):
        state = GuestState(status.run_id, status.entitled_kib, quiet_since=now,
                           quiet_used_kib=used)
    if status.available_kib <= 0:
        # No report from the guest's balloon driver yet: it is still booting.
        return Step(None, "", replace(state, quiet_since=now))

    headroom = settings.headroom_mb * MIB
    busy = status.usable_kib < headroom // 2
    if busy or not settings.enabled:
        if busy:
            state = replace(state, quiet_since=now, quiet_used_kib=used)
        if status.actual_kib < status.entitled_kib and state.target_kib != status.entitled_kib:
            return Step(status.entitled_kib, "busy" if busy else "disabled",
                        replace(state, target_kib=status.entitled_kib, settled_report=None))
        return Step(None, "", state)

    if used > state.quiet_used_kib + headroom // 4:
        # Its usage is growing: it is working, not idle (however much it has left).
        return Step(None, "", replace(state, quiet_since=now, quiet_used_kib=used))
    state = replace(state, quiet_used_kib=min(state.quiet_used_kib, used))
    if now - state.quiet_since < settings.idle_s or status.actual_kib > status.entitled_kib:
        return Step(None, "", state)  # not idle long enough, or the balloon still settles after boot

    if state.target_kib:
        # Move again only once the balloon reached the last target and the guest
        # reported after that: until then its figures describe the old size.
        if status.actual_kib > state.target_kib + SETTLE_SLACK_KIB:
            return Step(None, "", state)
        if state.settled_report is None:
            return Step(None, "", replace(state, settled_report=status.report_id))
        if status.report_id == state.settled_report:
            return Step(None, "", state)

    # Leave it `headroom` usable: what is usable beyond that can go.
    goal = max(floor_kib(status.entitled_kib, settings),
               status.actual_kib - (status.usable_kib - headroom))
    if goal > status.actual_kib - MIN_CHANGE_KIB:
        return Step(None, "", state)
    target = max(goal, status.actual_kib - settings.step_mb * MIB)
    return Step(target, "idle", replace(state, target_kib=target, settled_report=None))


class ReclaimLoop:
    """Applies `decide` to every running guest of the driver every interval_s."""

    def __init__(self, driver: ComputeDriver, settings: ReclaimSettings,
                 clock: Callable[[], float] = time.monotonic):
        self.driver = driver
        self.settings = settings
        self.clock = clock
        self.states: dict[str, GuestState] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reclaim", daemon=True)

    def start(self) -> None:
        log.info("memory reclaim %s: floor max(%d MiB, %.0f%%), idle %ss, headroom %d MiB, "
                 "every %ss", "on" if self.settings.enabled else "off (gives back only)",
                 self.settings.floor_mb, 100 * self.settings.floor_ratio, self.settings.idle_s,
                 self.settings.headroom_mb, self.settings.interval_s)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:
                log.exception("memory reclaim round failed")
            self._stop.wait(self.settings.interval_s)

    def run_once(self) -> None:
        running = self.driver.running_instances()
        for gone in set(self.states) - set(running):
            del self.states[gone]
        for instance_id in running:
            try:
                self._one(instance_id)
            except DriverError as exc:
                log.warning("memory reclaim of %s: %s", instance_id, exc)
            except Exception:  # one guest's trouble must not stop the others'
                log.exception("memory reclaim of %s failed", instance_id)

    def _one(self, instance_id: str) -> None:
        status = self.driver.balloon_status(instance_id)
        if status is None:
            self.states.pop(instance_id, None)
            return
        step = decide(status, self.states.get(instance_id), self.settings, self.clock())
        self.states[instance_id] = step.state
        if step.target_kib is None:
            return
        if not self.driver.set_balloon(instance_id, step.target_kib, status.entitled_kib):
            # Its entitlement changed meanwhile (a scale): start over with the new one.
            self.states.pop(instance_id, None)
            return
        verb = "reclaimed from" if step.reason == "idle" else "returned to"
        log.info("memory %s %s (%s): balloon %d -> %d MiB of %d MiB entitled, %d MiB usable",
                 verb, instance_id, step.reason, status.actual_kib // MIB, step.target_kib // MIB,
                 status.entitled_kib // MIB, status.usable_kib // MIB)
