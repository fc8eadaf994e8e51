"""Fair shares of the API server's threads for streaming calls.

The gRPC server serves each call on one of its worker threads, and a streaming
call (an event Watch, an image upload, server reflection, a health Watch) holds
its thread for as long as it is open. Without limits, 32 idle reflection
streams, opened by anyone without logging in, took every thread and every
tenant's calls timed out (issue 15). So every stream takes a slot here first:

- all streams together: at most `total` (half the server's threads), so unary
  calls (Login, List, Create, ...) always have the other half;
- a project's streams at most `per_project`, a user's at most `per_user`, so
  one tenant can't take every slot from the others;
- unauthenticated streams (reflection, health Watch) at most `anonymous`
  together and `per_address` from one client address;
- a stream that waits on its client (it sends requests: reflection, an image
  upload) and receives nothing for `idle_timeout_s` is cancelled, which frees
  its thread. Event streams wait on the cloud, not on the client, and are
  bounded by the counts alone.

A refused stream is RESOURCE_EXHAUSTED at once, saying which share is full.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from control.errors import ResourceExhausted

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamLimits:
    total: int = 32
    per_project: int = 8
    per_user: int = 8
    anonymous: int = 4
    per_address: int = 2
    idle_timeout_s: float = 30.0


@dataclass(frozen=True)
class StreamOwner:
    """Who holds a stream: a user of a project, or an unauthenticated address."""

    address: str
    user: str = ""
    project: str = ""

    @property
    def anonymous(self) -> bool:
        return not self.user


def peer_address(peer: str) -> str:
    """The client's address without its port: "ipv4:10.0.0.5:4242" -> "ipv4:10.0.0.5"."""
    if peer.startswith("ipv6:["):
        return peer.split("]", 1)[0] + "]"
    return peer.rsplit(":", 1)[0] if peer.count(":") >= 2 else peer


@dataclass
class OpenStream:
    owner: StreamOwner
    method: str
    cancel: Callable[[], object]
    waits_on_client: bool
    last_activity: float
    shares: tuple[tuple[str, str], ...] = field(default=())

    def touch(self, now: float | None = None) -> None:
        self.last_activity = time.monotonic() if now is None else now


class StreamGuard:
    """Counts the open streams per share and cancels idle ones (see the module)."""

    def __init__(self, limits: StreamLimits, sweep_every_s: float = 1.0):
        self.limits = limits
        self.sweep_every_s = sweep_every_s
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, str]] = Counter()
        self._streams: dict[int, OpenStream] = {}
        self._watchdog: threading.Thread | None = None

    def _shares(self, owner: StreamOwner) -> list[tuple[tuple[str, str], int, str]]:
        """(share, its limit, how to say it is full) for each share the owner draws on."""
        limits = self.limits
        found = [(("total", ""), limits.total, f"this API server has {limits.total} streams open")]
        if owner.anonymous:
            found += [(("anonymous", ""), limits.anonymous,
                       f"{limits.anonymous} streams without a login are open"),
                      (("address", owner.address), limits.per_address,
                       f"{owner.address} has {limits.per_address} streams without a login open")]
        else:
            found += [(("project", owner.project), limits.per_project,
                       f"project {owner.project!r} has {limits.per_project} streams open"),
                      (("user", owner.user), limits.per_user,
                       f"user {owner.user!r} has {limits.per_user} streams open")]
        return found

    def open(self, owner: StreamOwner, method: str, cancel: Callable[[], object],
             waits_on_client: bool) -> OpenStream:
        """Take a slot in every share of the owner, or raise ResourceExhausted."""
        shares = self._shares(owner)
        with self._lock:
            for share, limit, full in shares:
                if self._counts[share] >= limit:
                    raise ResourceExhausted(f"{full} already (at most {limit}): close one, or try "
                                            "again later")
            stream = OpenStream(owner, method, cancel, waits_on_client, time.monotonic(),
                                tuple(share for share, _, _ in shares))
            for share in stream.shares:
                self._counts[share] += 1
            self._streams[id(stream)] = stream
            self._start_watchdog()
        return stream

    def close(self, stream: OpenStream) -> None:
        with self._lock:
            if self._streams.pop(id(stream), None) is None:
                return
            for share in stream.shares:
                self._counts[share] -= 1
                if self._counts[share] <= 0:
                    del self._counts[share]

    def count(self, kind: str, name: str = "") -> int:
        with self._lock:
            return self._counts[(kind, name)]

    def sweep(self, now: float | None = None) -> int:
        """Cancel the streams idle past the timeout; how many were."""
        now = time.monotonic() if now is None else now
        with self._lock:
            idle = [s for s in self._streams.values()
                    if s.waits_on_client and now - s.last_activity > self.limits.idle_timeout_s]
        for stream in idle:
            log.info("cancelling %s of %s: nothing received for %.0f s", stream.method,
                     stream.owner.user or stream.owner.address, now - stream.last_activity)
            stream.cancel()
            self.close(stream)
        return len(idle)

    def _start_watchdog(self) -> None:
        if self._watchdog is None:
            self._watchdog = threading.Thread(target=self._watch, name="stream-watchdog",
                                              daemon=True)
            self._watchdog.start()

    def _watch(self) -> None:
        while True:
            time.sleep(self.sweep_every_s)
            try:
                self.sweep()
            except Exception:  # the watchdog must outlive any one stream's trouble
                log.exception("stream watchdog")


def touching(stream: OpenStream, messages: Iterator) -> Iterator:
    """`messages`, marking the stream active at each one."""
    for message in messages:
        stream.touch()
        yield message
