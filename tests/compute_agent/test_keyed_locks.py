"""The agent's keyed locks (compute_agent/keyed_locks.py): one lock per key, so
two spawns of one instance (or two fetches of one image) run one after the
other while different keys run side by side; a key's entry lives only while
someone holds or waits for it, so the registry does not grow with every
instance and image the agent ever saw (the image cache's own lock table, which
KeyedLocks replaced, never shrank)."""

from __future__ import annotations

import threading

import pytest
from compute_agent.keyed_locks import KeyedLocks

from tests.conftest import until

# How long a thread that must stay blocked is watched: the test proves that it
# does not get the lock in this window. A thread let in gets there in 0.1 ms
# (median; 7.5 ms at worst in 9,000 tries at load 4 on the 2-core machine).
BLOCKED_S = 0.2
# Bound for what must happen: a thread started getting a free lock, or a waiter
# getting a lock just let go. Measured: 0.1 ms median, 7.5 ms worst (as above).
HAPPENS_S = 0.05
# A holder never told to let go (its test failed) gives up after this.
HOLD_LIMIT_S = 10


class Holder:
    """A thread that holds `key` until told to let go."""

    def __init__(self, locks: KeyedLocks, key: str):
        self.entered = threading.Event()
        self.release = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(locks, key), daemon=True)
        self.thread.start()

    def _run(self, locks: KeyedLocks, key: str) -> None:
        try:
            with locks.hold(key):
                self.entered.set()
                assert self.release.wait(HOLD_LIMIT_S), "never told to let go"
        except BaseException as exc:  # noqa: BLE001 - reported by finish()
            self.error = exc

    def finish(self) -> None:
        self.release.set()
        self.thread.join(HOLD_LIMIT_S)
        assert not self.thread.is_alive(), "a holder did not finish"
        if self.error is not None:
            raise self.error


def holders(locks: KeyedLocks, key: str) -> int:
    """How many hold or wait for `key` (the registry's count; 0: no entry). Read
    from the registry itself: KeyedLocks shows no view of it."""
    with locks._guard:
        entry = locks._locks.get(key)
    return entry[1] if entry else 0


def test_same_key_is_held_by_one_at_a_time():
    locks = KeyedLocks()
    first = Holder(locks, "instance-1")
    assert first.entered.wait(HAPPENS_S)
    second = Holder(locks, "instance-1")
    until(lambda: second.entered.is_set() or holders(locks, "instance-1") == 2, HAPPENS_S,
          "the second to wait or get in", every_s=0.001)
    # Nothing must happen here: the second does not get in while the first holds.
    assert not second.entered.wait(BLOCKED_S), "two holders of one key at once"
    first.finish()
    assert second.entered.wait(HAPPENS_S), "the second never got the key once it was free"
    second.finish()


def test_different_keys_are_held_at_once():
    locks = KeyedLocks()
    first = Holder(locks, "instance-1")
    assert first.entered.wait(HAPPENS_S)
    second = Holder(locks, "instance-2")
    assert second.entered.wait(HAPPENS_S), "one key's holder blocked another key"
    first.finish()
    second.finish()


def test_a_key_freed_while_another_waits_still_excludes_a_newcomer():
    """The entry outlives the first holder while a second waits on it: a third
    arriving then waits for the second, instead of getting a fresh lock of the
    same key and running beside it."""
    locks = KeyedLocks()
    first = Holder(locks, "k")
    assert first.entered.wait(HAPPENS_S)
    second = Holder(locks, "k")
    until(lambda: second.entered.is_set() or holders(locks, "k") == 2, HAPPENS_S,
          "the second to wait or get in", every_s=0.001)
    first.finish()
    assert second.entered.wait(HAPPENS_S)
    third = Holder(locks, "k")
    until(lambda: third.entered.is_set() or holders(locks, "k") == 2, HAPPENS_S,
          "the third to wait or get in", every_s=0.001)
    # Nothing must happen here: the third does not get in while the second holds.
    assert not third.entered.wait(BLOCKED_S), "a newcomer got the key beside its holder"
    second.finish()
    assert third.entered.wait(HAPPENS_S)
    third.finish()
    assert locks._locks == {}


def test_entries_are_removed_once_unused():
    locks = KeyedLocks()
    for n in range(1000):  # one agent's spawns and image fetches over time
        with locks.hold(f"instance-{n}"):
            assert holders(locks, f"instance-{n}") == 1
    assert locks._locks == {}
    # And when many hold and wait at once.
    many = [Holder(locks, f"key-{n % 5}") for n in range(20)]
    until(lambda: sum(holders(locks, f"key-{k}") for k in range(5)) == 20, HAPPENS_S,
          "all 20 to hold or wait", every_s=0.001)
    assert len(locks._locks) == 5
    for holder in many:
        holder.release.set()
    for holder in many:
        holder.finish()
    assert locks._locks == {}


def test_a_holder_that_raises_frees_the_key():
    locks = KeyedLocks()
    with pytest.raises(RuntimeError), locks.hold("k"):
        raise RuntimeError("spawn failed")
    assert locks._locks == {}
    other = Holder(locks, "k")
    assert other.entered.wait(HAPPENS_S), "the key stayed taken after an exception"
    other.finish()
