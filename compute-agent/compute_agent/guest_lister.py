"""The heartbeat's look at the host's guests, bounded in time.

libvirt answers a list of domains only after a domain's start (createXML, or
create of a defined one) running in another thread returns, and under QEMU
emulation that takes seconds. A heartbeat that waited for the list was late,
and the control plane judged a busy host down (issue 17: a multihost test
failed now and then). Liveness must not wait on the hypervisor, so the list is
taken in a thread of its own: a heartbeat waits for it a short while, then goes
with the last list taken. That is safe because every list carries the time it
was taken: the control plane ignores an observation older than an instance's
last change. A list older than max_age_s is not used: a hypervisor that has not
answered for that long is a host the control plane should see as down.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from compute_agent.driver import DriverError, Observation

Taken = tuple[float, list[Observation]]  # (time.time() when the look began, the guests)


class GuestLister:
    def __init__(self, list_guests: Callable[[], list[Observation]], wait_s: float,
                 max_age_s: float = 30.0):
        self.list_guests = list_guests
        self.wait_s = wait_s
        self.max_age_s = max_age_s
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="guest-list")
        self._pending: Future[Taken] | None = None
        self._last: Taken | None = None

    def _take(self) -> Taken:
        taken_at = time.time()
        return taken_at, self.list_guests()

    def get(self) -> Taken | None:
        """The guests, fresh if libvirt answers within wait_s, else the last list
        taken (None before the first). Raises what the driver raised, or
        DriverError when the last list is older than max_age_s. Called from one
        thread (the heartbeat's)."""
        if self._pending is not None and self._pending.done():
            self._collect()  # finished since the last beat: at least as new as _last
        if self._pending is None:
            self._pending = self._executor.submit(self._take)
        try:
            self._pending.exception(timeout=self.wait_s)  # waits; a failure is raised below
        except TimeoutError:  # still listing: it goes on, a later beat collects it
            if self._last is not None and time.time() - self._last[0] > self.max_age_s:
                raise DriverError(f"the hypervisor has not listed its guests for "
                                  f"{time.time() - self._last[0]:.0f} s") from None
            return self._last
        self._collect()
        return self._last

    def _collect(self) -> None:
        pending, self._pending = self._pending, None
        assert pending is not None
        self._last = pending.result()  # re-raises the driver's error, if it failed

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
