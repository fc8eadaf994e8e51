"""The deadline of the RPC being served, for the loops that serve it.

The API interceptor (control/api/interceptors.py) records each call's deadline
here (from the client's grpc-timeout) and refuses a call whose deadline passed
while it waited for a worker thread. The API's retry loops (a create racing
for its project's quota, a compare-and-swap that lost) call `check()` before
each new attempt: past the deadline the caller has given up, so the loop stops
with DEADLINE_EXCEEDED instead of retrying for nobody. A check sits only where
an attempt starts, before anything is written, never in undo (compensation)
paths, so stopping there leaves nothing half done: it is the same outcome as a
Conflict after the last attempt.

Each etcd call is itself bounded by the store's timeout (`etcd_timeout_s`, 3 s):
a handler blocked on a hung etcd returns UNAVAILABLE within that, whatever the
deadline. The etcd call's own timeout is not cut to the RPC's remaining time:
the etcd client marks its endpoint failed on a timeout, so one impatient
client would make etcd look down to every other call.

Outside an RPC (Celery tasks, the reconciler) there is no deadline and
`check()` does nothing; `serving()` tells the two apart (a task's enqueue is
retried through a Redis failover only while serving a call: control/queue.py).
"""

from __future__ import annotations

import contextvars
import time

from control.errors import DeadlineExceeded

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("deadline", default=None)
# The deadline of a call whose client set none (None is: no call is being served).
_NONE_SET = float("inf")


def start(time_remaining: float | None) -> contextvars.Token:
    """Record the current call's deadline (`context.time_remaining()`: None
    when the client set none). Returns the token for `end`."""
    at = _NONE_SET if time_remaining is None else time.monotonic() + time_remaining
    return _deadline.set(at)


def end(token: contextvars.Token) -> None:
    _deadline.reset(token)


def remaining() -> float | None:
    """Seconds left before the current call's deadline; None: no deadline."""
    at = _deadline.get()
    return None if at is None or at == _NONE_SET else at - time.monotonic()


def serving() -> bool:
    """Whether this thread is serving an RPC (with or without a deadline)."""
    return _deadline.get() is not None


def check(what: str = "the request") -> None:
    """Raise DeadlineExceeded if the current call's deadline has passed."""
    left = remaining()
    if left is not None and left <= 0:
        raise DeadlineExceeded(f"deadline exceeded while retrying {what}")
