"""One active instance of a background loop across the API server's replicas.

Every replica runs the loop; only the holder of the loop's leader key acts.
The key is created only if absent and is bound to an etcd lease: the holder
renews the lease on every tick, and if it stops (crashed, hung, cut off from
etcd) etcd deletes the key when the lease runs out, and the next replica to
tick takes it over. So at most one holder exists at a time, and a dead one is
replaced within `ttl_s` plus one interval.

A holder that stalls longer than its TTL in the middle of a tick may act once
more after another replica took over; the work done under the lock must
therefore still be safe to run twice (every write here is a compare-and-swap).

Generic: the scaling groups' controller uses it (control/autoscaling/groups.py), and any
other singleton loop (a reconciler) can.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable

from control.errors import CloudError
from control.store import keys
from control.store.etcd import Store

log = logging.getLogger(__name__)


def default_holder() -> str:
    """Who holds a lock: readable in etcd, unique per process."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class LeaderLock:
    """A named lock held through an etcd lease."""

    def __init__(self, store: Store, name: str, ttl_s: float = 15.0, holder: str = ""):
        self.store = store
        self.name = name
        self.key = keys.leader(name)
        self.ttl_s = ttl_s
        self.holder = holder or default_holder()
        self._lease: int | None = None

    @property
    def held(self) -> bool:
        """Whether we hold a lease on the lock (it may have expired since the last acquire())."""
        return self._lease is not None

    def acquire(self) -> bool:
        """Take the lock if it is free, or renew it if it is ours. Returns
        whether we hold it now. Raises Unavailable if etcd cannot be reached
        (the caller then holds nothing: it must not act)."""
        if self._lease is not None:
            # (If etcd cannot be reached this raises, and the lease is kept to be
            # renewed at the next try, if it has not expired by then.)
            if self.store.keep_alive(self._lease):
                record = self.store.get(self.key)
                if record is not None and record.value.get("holder") == self.holder:
                    return True
            log.warning("lost the %s lock (its lease expired)", self.name)
            self._lease = None
        lease = self.store.create_leased(self.key, {"holder": self.holder, "since": time.time()},
                                         self.ttl_s)
        if lease is not None:
            log.info("took the %s lock as %s", self.name, self.holder)
            self._lease = lease
        return self._lease is not None

    def release(self) -> None:
        """Give the lock up now (another replica may take it at its next tick)."""
        lease, self._lease = self._lease, None
        if lease is not None:
            try:
                self.store.revoke_lease(lease)
            except CloudError as exc:
                log.warning("could not release the %s lock: %s (it expires by itself)",
                            self.name, exc)

    def current_holder(self) -> str:
        """Who holds the lock now ("" if nobody)."""
        record = self.store.get(self.key)
        return record.value.get("holder", "") if record else ""


class LeaderLoop:
    """Calls `work()` every `interval_s` in a background thread, but only while
    holding the lock named `name`. Errors of one tick are logged and the next
    tick goes on; stop() ends the loop and gives the lock up."""

    def __init__(self, store: Store, name: str, work: Callable[[], object], interval_s: float,
                 ttl_s: float = 10.0, holder: str = ""):
        self.interval_s = interval_s
        # Renewed every tick: a lease of fewer than 3 ticks could run out between two.
        self.lock = LeaderLock(store, name, max(ttl_s, 3 * interval_s), holder)
        self.work = work
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"leader-{name}", daemon=True)

    def start(self) -> LeaderLoop:
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0, release: bool = True) -> None:
        """End the loop; give the lock up at once (release=False leaves it to
        expire, as a crashed replica would)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=timeout_s)
        if release:
            self.lock.release()

    def tick(self) -> bool:
        """One round: renew or take the lock, then work if we hold it. Returns
        whether the work ran."""
        try:
            if not self.lock.acquire():
                return False
        except CloudError as exc:
            log.warning("%s: cannot reach the lock: %s", self.lock.name, exc)
            return False
        self.work()
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.tick()
            except Exception:
                log.exception("%s: tick failed", self.lock.name)
            self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - started)))
