"""Nudging hosts: asking their agents to converge their tenant networks now
(ComputeAgent.SyncNetworks) after a change they must apply at once.

Best effort and bounded: every agent also converges on its timer
(network_sync_interval_s), so a nudge that fails or is slow costs at most that
interval. The hosts are nudged in parallel, so the caller waits for the
slowest of them, not their sum, and for at most `wait_s`: an answer later than
that finishes in the background.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, wait

from control.errors import CloudError

log = logging.getLogger(__name__)

NUDGE_WAIT_S = 2.0  # how long a caller waits for the nudged hosts' answers


def nudge_in_parallel(hosts: Iterable[str], nudge: Callable[[str], object], why: str,
                wait_s: float = NUDGE_WAIT_S) -> None:
    """Call nudge(host) for each host, in parallel; log (at info) those that
    failed or did not answer within wait_s. `why` says what changed, for the log."""
    names = sorted(set(hosts) - {""})
    if not names:
        return

    def one(name: str) -> None:
        try:
            nudge(name)
        except CloudError as exc:
            log.info("nudging %s about %s failed (it converges on its timer): %s", name, why, exc)

    pool = ThreadPoolExecutor(max_workers=min(len(names), 32), thread_name_prefix="nudge")
    try:
        _, late = wait([pool.submit(one, name) for name in names], timeout=wait_s)
        if late:
            log.info("%d of %d hosts nudged about %s did not answer within %ss; not waiting",
                     len(late), len(names), why, wait_s)
    finally:
        pool.shutdown(wait=False)  # a late answer finishes in the background
