#!/usr/bin/env python3
"""An autoscaler outside the cloud: drives a scaling group from its metrics.

A small client of the public gRPC API that uses only grpc and the generated
stubs (cloudapi.v1.*_pb2, *_pb2_grpc), as any outside autoscaler could. It is
an alternative to a group's built-in target tracking (create the group without
--cpu-target): every --interval seconds it reads the group's metrics
(MetricsService.GetGroupMetrics) and applies a step rule:

  - average CPU of the members above --high: one member more (up to max_size);
  - below --low: one member less (down to min_size);
  - only when every member is reporting fresh metrics and the group is at its
    desired size (a change is not judged before it has happened), and not
    within --cooldown seconds of its own last change.

It sets the size with ScalingGroupService.SetDesired; the control plane does
the rest (creates or deletes members, within the project's quota).

    CLOUD_ENDPOINT=127.0.0.1:50051 CLOUD_USERNAME=demo CLOUD_PASSWORD=... \\
        python examples/autoscaler.py --group web --high 70 --low 30

The environment: CLOUD_ENDPOINT, and CLOUD_TOKEN or CLOUD_USERNAME +
CLOUD_PASSWORD (+ CLOUD_PROJECT). Each decision is printed as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid

import grpc
from cloudapi.v1 import identity_pb2, identity_pb2_grpc, scaling_pb2, scaling_pb2_grpc


class Session:
    """The API's stubs with a bearer token; logs in again when the token expires."""

    def __init__(self, endpoint: str):
        self.channel = grpc.insecure_channel(endpoint)
        self.identity = identity_pb2_grpc.IdentityServiceStub(self.channel)
        self.metrics = scaling_pb2_grpc.MetricsServiceStub(self.channel)
        self.groups = scaling_pb2_grpc.ScalingGroupServiceStub(self.channel)
        self.token = os.environ.get("CLOUD_TOKEN", "")
        if not self.token:
            self.login()

    def login(self) -> None:
        username = os.environ.get("CLOUD_USERNAME", "")
        if not username:
            sys.exit("set CLOUD_TOKEN, or CLOUD_USERNAME and CLOUD_PASSWORD")
        self.token = self.identity.Login(identity_pb2.LoginRequest(
            username=username, password=os.environ.get("CLOUD_PASSWORD", ""),
            project=os.environ.get("CLOUD_PROJECT", "")), timeout=30).token

    def call(self, method, request):
        for attempt in range(2):
            try:
                return method(request, timeout=30,
                              metadata=[("authorization", f"Bearer {self.token}")])
            except grpc.RpcError as exc:
                if attempt or exc.code() != grpc.StatusCode.UNAUTHENTICATED \
                        or not os.environ.get("CLOUD_USERNAME"):
                    raise
                self.login()  # the token expired: once more with a fresh one
        raise AssertionError("not reached")


def decide(metrics: scaling_pb2.GroupMetrics, high: float, low: float) -> tuple[int, str]:
    """The desired size the step rule asks for, and why (the same size: leave it)."""
    size = metrics.desired
    if metrics.members != size or metrics.reporting != metrics.members or not size:
        return size, (f"waiting: {metrics.members} members of {size}, "
                      f"{metrics.reporting} reporting")
    cpu = metrics.cpu_utilisation
    if cpu > high and size < metrics.max_size:
        return size + 1, f"cpu {cpu:.1f}% > {high:g}%"
    if cpu < low and size > metrics.min_size:
        return size - 1, f"cpu {cpu:.1f}% < {low:g}%"
    return size, f"cpu {cpu:.1f}% within {low:g}..{high:g}%"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--group", required=True, help="the scaling group's name")
    parser.add_argument("--high", type=float, default=70.0, help="scale out above this CPU %%")
    parser.add_argument("--low", type=float, default=30.0, help="scale in below this CPU %%")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between looks")
    parser.add_argument("--cooldown", type=float, default=60.0,
                        help="seconds after a change before the next")
    parser.add_argument("--window", type=int, default=0,
                        help="seconds of metrics to average (default: the cloud's)")
    parser.add_argument("--duration", type=float, default=0.0,
                        help="stop after this many seconds (default: run until interrupted)")
    parser.add_argument("--dry-run", action="store_true", help="decide, but change nothing")
    args = parser.parse_args(argv)
    if args.low >= args.high:
        parser.error("--low must be below --high")

    session = Session(os.environ.get("CLOUD_ENDPOINT", "127.0.0.1:50051"))
    started = time.monotonic()
    last_change = float("-inf")
    while not args.duration or time.monotonic() - started < args.duration:
        try:
            metrics = session.call(session.metrics.GetGroupMetrics, scaling_pb2.GetGroupMetricsRequest(
                name=args.group, window_s=args.window))
            wanted, why = decide(metrics, args.high, args.low)
            cooling = time.monotonic() - last_change < args.cooldown
            acted = wanted != metrics.desired and not cooling and not args.dry_run
            if acted:
                session.call(session.groups.SetDesired, scaling_pb2.SetDesiredRequest(
                    name=args.group, desired=wanted, request_id=str(uuid.uuid4())))
                last_change = time.monotonic()
            print(json.dumps({"time": time.time(), "group": args.group,
                              "members": metrics.members, "reporting": metrics.reporting,
                              "cpu": round(metrics.cpu_utilisation, 1), "desired": metrics.desired,
                              "wanted": wanted, "set": acted,
                              "reason": why + (" (cooling down)" if cooling and wanted !=
                                               metrics.desired else "")}), flush=True)
        except grpc.RpcError as exc:
            if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED,
                              grpc.StatusCode.UNAUTHENTICATED):
                print(f"autoscaler: {exc.code().name}: {exc.details()}", file=sys.stderr)
                return 1
            # The API or its stores are away for a moment: try again next round.
            print(f"autoscaler: {exc.code().name}: {exc.details()}", file=sys.stderr, flush=True)
        time.sleep(args.interval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
