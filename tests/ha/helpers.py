"""What the HA tests share (tests/ha/): the cloud's settings, a thread of
creates that must each be accepted within a bound, a probe that records every
error and the gaps between successful calls, and the figures they record
(test-output/ha.json)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Collection

import grpc
from cloudapi.v1 import compute_pb2 as pb

from tests.conftest import OUTPUT, until
from tests.faults.checks import FAULT_SETTINGS, settle

CREATES = 12
HA_SETTINGS = {**FAULT_SETTINGS, "scaling_interval_s": 1, "build_deadline_s": 30,
               "build_redrive_after_s": 4, "leader_lease_s": 4}


def record(name: str, figures: dict) -> None:
    print(f"\n{name}: {json.dumps(figures)}")
    OUTPUT.mkdir(exist_ok=True)
    path = OUTPUT / "ha.json"
    kept = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**kept, name: figures}, indent=2) + "\n")



def error_name(exc: BaseException) -> str:
    """A gRPC error's status code (UNAVAILABLE), else the exception's class
    (Unavailable from the store, ConnectionError from redis-py)."""
    return exc.code().name if isinstance(exc, grpc.RpcError) else type(exc).__name__


class Creates(threading.Thread):
    """CREATES creates, one every `interval_s` (the pace, not a wait), each with
    a request id and retried while UNAVAILABLE (so never made twice); each must
    be accepted within `within_s` of its first try (the test states the outage
    it measured beside it), else the thread stops with that failure. Latencies,
    and each refusal (code, seconds since the thread started), are kept."""

    def __init__(self, client, prefix: str, within_s: float, interval_s: float = 0.25):
        super().__init__(daemon=True)
        self.client, self.prefix, self.interval_s = client, prefix, interval_s
        self.within_s = within_s
        self.ids: list[str] = []
        self.latencies: list[float] = []
        self.refusals: list[tuple[str, float]] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        began = time.monotonic()
        try:
            for n in range(CREATES):
                request = pb.CreateInstanceRequest(name=f"{self.prefix}-{n}", flavor="tiny",
                                                   request_id=f"{self.prefix}-{n}")
                started = time.monotonic()
                deadline = started + self.within_s
                while True:
                    try:
                        created = self.client.instances.CreateInstance(
                            request, timeout=max(0.5, deadline - time.monotonic()))
                        self.ids.append(created.id)
                        break
                    except grpc.RpcError as exc:
                        if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                            raise AssertionError(f"create {n} not accepted within {self.within_s} s "
                                                 f"(refusals: {self.refusals})") from exc
                        assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
                        self.refusals.append((exc.code().name, round(time.monotonic() - began, 2)))
                        assert time.monotonic() < deadline, \
                            f"create {n} not accepted within {self.within_s} s: {self.refusals}"
                        time.sleep(0.2)  # the pace of the retries
                self.latencies.append(time.monotonic() - started)
                time.sleep(self.interval_s)  # the pace of the creates
        except BaseException as exc:
            self.error = exc

    def wait_accepted(self, count: int) -> None:
        """Until `count` creates were accepted (so a fault lands mid-way)."""
        until(lambda: len(self.ids) >= count or not self.is_alive(), 3,
              f"{count} creates accepted")  # measured 0.3-0.8 s for 3
        assert self.error is None, self.error

    def wait(self) -> None:
        """Until the thread is done, without judging it (a test reads its
        probes first)."""
        # 12 creates 0.25 s apart take 3-5 s (measured), plus one outage at most.
        self.join(CREATES * self.interval_s + self.within_s + 10)

    def finish(self) -> dict:
        self.wait()
        assert not self.is_alive(), f"creates still running: {len(self.ids)} of {CREATES} accepted"
        assert self.error is None, self.error
        assert len(set(self.ids)) == CREATES
        return {"creates": CREATES, "create_refused": len(self.refusals),
                "create_max_s": round(max(self.latencies), 2)}


class Probe(threading.Thread):
    """Calls `call` every 50 ms (the pace, not a wait); records each error
    (its code, and when) and each gap between successful calls, the last one
    up to the moment the probe is stopped (so a call that never succeeds again
    shows as one long gap)."""

    def __init__(self, call):
        super().__init__(daemon=True)
        self.call = call
        self.stop = threading.Event()
        self.errors: list[tuple[str, float]] = []  # (code, time.monotonic())
        self.gaps: list[float] = []
        self.calls = 0

    def run(self) -> None:
        last = time.monotonic()
        while not self.stop.is_set():
            self.calls += 1
            try:
                self.call()
            except Exception as exc:
                self.errors.append((error_name(exc), time.monotonic()))
            else:
                now = time.monotonic()
                self.gaps.append(now - last)
                last = now
            time.sleep(0.05)  # the pace of the calls
        self.gaps.append(time.monotonic() - last)

    def finish(self, fault_at: float) -> dict:
        """Stop; the figures: the errors by code, each with how many and the
        first and last one's time in seconds since `fault_at`."""
        self.stop.set()
        self.join(15)  # one call in flight: the probes' calls time out in 10 s at most
        assert not self.is_alive(), "the probe's call hangs"
        errors: dict[str, dict] = {}
        for code, at in self.errors:
            seen = errors.setdefault(code, {"count": 0, "first_s": round(at - fault_at, 2)})
            seen["count"] += 1
            seen["last_s"] = round(at - fault_at, 2)
        return {"calls": self.calls, "longest_gap_s": round(max(self.gaps), 2), "errors": errors}


def assert_probe(figures: dict, max_gap_s: float, allowed: Collection[str] = (),
                 errors_within_s: float = 0.0) -> None:
    """No error, except those named in `allowed`, and those only within
    `errors_within_s` after the fault; no gap between successes above max_gap_s."""
    unexpected = {code: seen for code, seen in figures["errors"].items()
                  if code not in allowed or seen["first_s"] < 0 or seen["last_s"] > errors_within_s}
    assert not unexpected, (unexpected, figures)
    assert figures["longest_gap_s"] <= max_gap_s, figures


def api_probe(api) -> Probe:
    return Probe(lambda: api.instances.ListInstances(pb.ListInstancesRequest(), timeout=10))


def settle_all_active(store, started: float, timeout_s: float) -> dict:
    """All CREATES ACTIVE, none in ERROR, the books balanced, within timeout_s
    of the fault (the caller states what it measured)."""
    figures = settle(store, started, timeout_s=timeout_s)
    assert figures["error"] == 0, figures
    assert figures["active"] == CREATES, figures
    return figures
