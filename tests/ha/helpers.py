"""What the HA tests share (tests/ha/): the cloud's settings, a thread of
creates, a probe that times the longest gap between successful calls, and the
figures they record (test-output/ha.json)."""

from __future__ import annotations

import json
import threading
import time

import grpc
from cloudapi.v1 import compute_pb2 as pb

from tests.conftest import OUTPUT
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



class Creates(threading.Thread):
    """CREATES creates, one every `interval_s`, each with a request id and
    retried while UNAVAILABLE (so never made twice); their latencies kept."""

    def __init__(self, client, prefix: str, interval_s: float = 0.25):
        super().__init__(daemon=True)
        self.client, self.prefix, self.interval_s = client, prefix, interval_s
        self.ids: list[str] = []
        self.latencies: list[float] = []
        self.refused = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for n in range(CREATES):
                request = pb.CreateInstanceRequest(name=f"{self.prefix}-{n}", flavor="tiny",
                                                   request_id=f"{self.prefix}-{n}")
                started = time.monotonic()
                while True:
                    try:
                        self.ids.append(self.client.instances.CreateInstance(request, timeout=30).id)
                        break
                    except grpc.RpcError as exc:
                        assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
                        self.refused += 1
                        assert time.monotonic() - started < 30, "create never accepted"
                        time.sleep(0.2)
                self.latencies.append(time.monotonic() - started)
                time.sleep(self.interval_s)
        except BaseException as exc:
            self.error = exc

    def finish(self) -> dict:
        self.join(60)
        assert self.error is None, self.error
        assert len(set(self.ids)) == CREATES
        return {"creates": CREATES, "create_refused": self.refused,
                "create_max_s": round(max(self.latencies), 2)}


class Probe(threading.Thread):
    """Calls `call` every 50 ms; keeps the longest time without a success."""

    def __init__(self, call):
        super().__init__(daemon=True)
        self.call = call
        self.stop = threading.Event()
        self.errors = 0
        self.longest_gap = 0.0

    def run(self) -> None:
        last = time.monotonic()
        while not self.stop.is_set():
            try:
                self.call()
                now = time.monotonic()
                self.longest_gap = max(self.longest_gap, now - last)
                last = now
            except Exception:
                self.errors += 1
            time.sleep(0.05)

    def finish(self) -> dict:
        self.stop.set()
        self.join(30)
        return {"longest_gap_s": round(self.longest_gap, 2), "errors": self.errors}


def api_probe(api) -> Probe:
    return Probe(lambda: api.instances.ListInstances(pb.ListInstancesRequest(), timeout=10))


def settle_all_active(store, started: float) -> dict:
    figures = settle(store, started)
    assert figures["error"] == 0, figures
    assert figures["active"] == CREATES, figures
    return figures
