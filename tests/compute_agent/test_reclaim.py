"""The memory reclaim policy (compute_agent/reclaim.py): the pure decision on
simulated guests, and the loop on the fake driver."""

from dataclasses import dataclass, replace
from itertools import pairwise

from compute_agent.driver import BalloonStatus, ImageFiles, InstanceSpec
from compute_agent.fake_driver import FakeDriver
from compute_agent.reclaim import GuestState, ReclaimLoop, ReclaimSettings, decide

MIB = 1024  # KiB
SETTINGS = ReclaimSettings(enabled=True, floor_mb=128, floor_ratio=0.25, idle_s=30, interval_s=2,
                           headroom_mb=64, step_mb=64)


@dataclass
class Guest:
    """A guest as its balloon reports it. Shaped after the real image: the kernel
    keeps ~70 MiB outside MemTotal, and ~110 MiB inside it are not usable."""
    entitled: int = 512 * MIB
    actual: int = 512 * MIB
    used: int = 110 * MIB      # inside MemTotal, not usable (MemTotal - MemAvailable)
    reserve: int = 70 * MIB    # outside MemTotal
    report: int = 0
    run: str = "1"

    def status(self) -> BalloonStatus:
        self.report += 1  # every look sees a fresh report
        available = self.actual - self.reserve
        return BalloonStatus(self.entitled, self.actual, available, max(0, available - self.used),
                             self.report, self.run)


class Sim:
    """Rounds of decide() every interval_s; the balloon moves at once."""

    def __init__(self, guest: Guest, settings: ReclaimSettings = SETTINGS):
        self.guest, self.settings = guest, settings
        self.state: GuestState | None = None
        self.now = 0.0
        self.moves: list[tuple[float, int, str]] = []

    def round(self) -> int | None:
        step = decide(self.guest.status(), self.state, self.settings, self.now)
        self.state = step.state
        if step.target_kib is not None:
            self.guest.actual = step.target_kib
            self.moves.append((self.now, step.target_kib, step.reason))
        self.now += self.settings.interval_s
        return step.target_kib

    def run_for(self, seconds: float) -> None:
        end = self.now + seconds
        while self.now < end:
            self.round()


def test_grace_after_boot_then_idle_shrinks_in_steps_to_used_plus_headroom():
    sim = Sim(Guest())
    sim.run_for(30)
    assert sim.moves == []  # the grace after boot: the tenant sees its whole memory first
    sim.run_for(120)
    targets = [t for _, t, _ in sim.moves]
    assert all(reason == "idle" for _, _, reason in sim.moves)
    # Steps of at most step_mb, each after a fresh report of the previous one.
    sizes = [512 * MIB, *targets]
    assert all(0 < a - b <= 64 * MIB for a, b in pairwise(sizes))
    assert all(t2 - t1 >= 2 * SETTINGS.interval_s for (t1, _, _), (t2, _, _) in pairwise(sim.moves))
    # It ends where the guest keeps headroom_mb usable: reserve + used + headroom.
    assert sim.guest.actual == (70 + 110 + 64) * MIB
    assert sim.guest.status().usable_kib == 64 * MIB


def test_never_below_the_floor_nor_above_the_entitlement():
    sim = Sim(Guest(entitled=1024 * MIB, actual=1024 * MIB, used=10 * MIB, reserve=20 * MIB))
    sim.run_for(300)
    # floor = max(128 MiB, 25% of 1024 MiB) = 256 MiB, above what the guest needs.
    assert sim.guest.actual == 256 * MIB
    assert min(t for _, t, _ in sim.moves) == 256 * MIB
    tiny = Sim(Guest(entitled=256 * MIB, actual=256 * MIB, used=10 * MIB, reserve=20 * MIB))
    tiny.run_for(300)
    assert tiny.guest.actual == 128 * MIB  # floor_mb beats 25% of 256 MiB
    assert all(t <= 256 * MIB for _, t, _ in tiny.moves)


def test_busy_guest_gets_its_entitlement_back_at_once_and_a_new_grace():
    sim = Sim(Guest())
    sim.run_for(150)
    reclaimed = sim.guest.actual
    assert reclaimed < 300 * MIB
    sim.guest.used += 40 * MIB  # usable drops to 24 MiB, below half the headroom
    assert sim.round() == 512 * MIB
    assert sim.moves[-1][2] == "busy"
    # It then keeps its memory for idle_s, even though it has plenty usable now.
    sim.run_for(28)
    assert sim.guest.actual == 512 * MIB
    sim.run_for(60)
    assert sim.guest.actual == (70 + 150 + 64) * MIB  # shrinks again around its new usage


def test_growing_usage_is_not_idle():
    sim = Sim(Guest())
    for _ in range(40):  # +10 MiB every round: never busy, but never idle either
        sim.round()
        sim.guest.used += 10 * MIB
    assert sim.moves == []


def test_no_report_from_the_guest_means_no_move():
    guest = Guest()
    state = None
    for now in range(0, 200, 2):
        status = replace(guest.status(), available_kib=0, usable_kib=0)
        step = decide(status, state, SETTINGS, now)
        assert step.target_kib is None
        state = step.state


def test_scale_or_restart_starts_a_new_grace():
    sim = Sim(Guest())
    sim.run_for(150)
    assert sim.guest.actual < 512 * MIB
    # A live scale: new entitlement, the balloon goes there (the driver does it).
    sim.guest.entitled = sim.guest.actual = 1024 * MIB
    count = len(sim.moves)
    sim.run_for(28)
    assert len(sim.moves) == count and sim.guest.actual == 1024 * MIB
    sim.run_for(10)
    assert sim.guest.actual < 1024 * MIB
    # A restart (new run): the whole entitlement, and a grace again.
    sim.guest.run, sim.guest.actual = "2", 1024 * MIB
    count = len(sim.moves)
    sim.run_for(28)
    assert len(sim.moves) == count


def test_waits_for_the_balloon_to_reach_its_target():
    guest = Guest()
    state = None
    for now in range(0, 30, 2):
        step = decide(guest.status(), state, SETTINGS, now)
        assert step.target_kib is None
        state = step.state
    first = decide(guest.status(), state, SETTINGS, 30)
    assert first.target_kib == 448 * MIB
    # The guest has not inflated yet (actual still 512 MiB): no further step.
    state = first.state
    for now in range(32, 60, 2):
        step = decide(guest.status(), state, SETTINGS, now)
        assert step.target_kib is None
        state = step.state


def test_boot_balloon_above_the_entitlement_is_left_alone():
    # Booting at its maximum memory, the balloon not yet down to the entitlement.
    guest = Guest(actual=2048 * MIB)
    state = None
    for now in range(0, 200, 2):
        step = decide(guest.status(), state, SETTINGS, now)
        assert step.target_kib is None
        state = step.state


def test_disabled_never_shrinks_and_gives_back_what_was_taken():
    off = replace(SETTINGS, enabled=False)
    sim = Sim(Guest(), off)
    sim.run_for(300)
    assert sim.moves == []
    # Reclaimed before (e.g. by the agent before a restart with reclaim off).
    sim.guest.actual = 300 * MIB
    sim.run_for(10)
    assert sim.moves == [(sim.moves[0][0], 512 * MIB, "disabled")]


def test_loop_on_the_fake_driver():
    driver = FakeDriver()
    clock = [0.0]
    loop = ReclaimLoop(driver, SETTINGS, clock=lambda: clock[0])
    s = InstanceSpec(instance_id="i-1", name="web1", vcpus=1, memory_mb=512, disk_gb=1,
                     image=ImageFiles(id="img", disk_path="/nonexistent"), max_memory_mb=2048)
    driver.spawn(s)

    def rounds(seconds):
        end = clock[0] + seconds
        while clock[0] < end:
            loop.run_once()
            clock[0] += SETTINGS.interval_s

    rounds(30)
    assert driver.stats("i-1")["memory_reclaimed_kb"] == 0
    rounds(60)
    stats = driver.stats("i-1")
    # The fake guest uses 64 MiB and keeps nothing outside MemTotal: 128 MiB leave
    # it 64 usable (and are the floor).
    assert stats["memory_actual_kb"] == 128 * MIB
    assert stats["memory_reclaimed_kb"] == 384 * MIB and stats["memory_entitled_kb"] == 512 * MIB
    driver.guest_used_kib = 100 * MIB  # busy
    rounds(2)
    assert driver.stats("i-1")["memory_reclaimed_kb"] == 0
    driver.guest_used_kib = 64 * MIB
    rounds(60)
    assert driver.stats("i-1")["memory_reclaimed_kb"] == 384 * MIB
    # A scale gives the new size, and a grace before anything is taken again.
    driver.scale("i-1", 0, 1024, 0)
    rounds(28)
    assert driver.stats("i-1")["memory_actual_kb"] == 1024 * MIB
    # A move decided on the old entitlement is refused after a scale.
    assert driver.set_balloon("i-1", 256 * MIB, 512 * MIB) is False
    # A stopped guest is forgotten; started again it has everything.
    driver.stop("i-1", 1)
    rounds(2)
    assert loop.states == {} and driver.balloon_status("i-1") is None
    driver.start("i-1")
    rounds(20)
    assert driver.stats("i-1")["memory_reclaimed_kb"] == 0
