#!/usr/bin/env python3
"""A project's monthly invoice lines as CSV, from the cloud's usage API.

A small outside client of the public gRPC API: it uses only grpc and the
generated stubs (cloudapi.v1.*_pb2, *_pb2_grpc), as any billing system could.

    CLOUD_ENDPOINT=127.0.0.1:50051 CLOUD_USERNAME=admin CLOUD_PASSWORD=... \\
        python examples/billing_exporter.py --project demo --month 2024-05 \\
        --rate vcpu=0.02 --rate ram=0.005 --rate disk=0.0002 > invoice.csv

One line per instance and flavor (an instance resized during the month has one
line per flavor it had), then a total line. Prices come from the rate table
given with --rate (per vCPU-hour, RAM GiB-hour, disk GiB-hour and
instance-hour; a rate per billed state too, e.g. --rate stopped.vcpu=0, since
stopped instances still hold their resources). Amounts are computed from the
API's exact integer amounts with decimal arithmetic, and rounded once per line.
The environment: CLOUD_ENDPOINT, CLOUD_USERNAME, CLOUD_PASSWORD, and
CLOUD_PROJECT (the project to log in to; --project another one, for admins).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal

import grpc
from cloudapi.v1 import identity_pb2, identity_pb2_grpc, usage_pb2, usage_pb2_grpc
from google.protobuf.timestamp_pb2 import Timestamp

MS_PER_HOUR = Decimal(3_600_000)
MIB_PER_GIB = Decimal(1024)
QUANTITY = Decimal("0.000001")
MONEY = Decimal("0.0001")
RESOURCES = ("instance", "vcpu", "ram", "disk")
STATES = ("building", "running", "stopped", "error")
COLUMNS = ["project", "period_start", "period_end", "instance_id", "instance_name", "flavor",
           "instance_hours", "vcpu_hours", "ram_gib_hours", "disk_gib_hours", "amount", "currency"]


def month_period(month: str) -> tuple[datetime, datetime]:
    """[first day of the month, first day of the next) in UTC, for YYYY-MM."""
    start = datetime.strptime(month, "%Y-%m").replace(tzinfo=UTC)
    end = start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)
    return start, end


def timestamp(when: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(when)
    return ts


def parse_rates(items: list[str]) -> dict[tuple[str, str], Decimal]:
    """--rate RESOURCE=PRICE or STATE.RESOURCE=PRICE -> {(state or "*", resource): price}."""
    rates: dict[tuple[str, str], Decimal] = {}
    for item in items:
        name, _, price = item.partition("=")
        state, _, resource = name.rpartition(".")
        if resource not in RESOURCES or (state and state not in STATES) or not price:
            raise SystemExit(f"bad --rate {item!r}: RESOURCE=PRICE or STATE.RESOURCE=PRICE, "
                             f"RESOURCE one of {', '.join(RESOURCES)}, STATE one of {', '.join(STATES)}")
        rates[(state or "*", resource)] = Decimal(price)
    return rates


def hours(amounts: usage_pb2.UsageAmounts) -> dict[str, Decimal]:
    """Exact hours from the exact integer amounts."""
    return {"instance": Decimal(amounts.instance_ms) / MS_PER_HOUR,
            "vcpu": Decimal(amounts.vcpu_ms) / MS_PER_HOUR,
            "ram": Decimal(amounts.ram_mib_ms) / (MS_PER_HOUR * MIB_PER_GIB),
            "disk": Decimal(amounts.disk_gib_ms) / MS_PER_HOUR}


def price(usage: usage_pb2.Usage, rates: dict[tuple[str, str], Decimal]) -> Decimal:
    """Each state's hours at that state's rate (or the general rate)."""
    total = Decimal(0)
    for state, amounts in usage.by_state.items():
        for resource, used in hours(amounts).items():
            total += used * rates.get((state, resource), rates.get(("*", resource), Decimal(0)))
    return total


def invoice_lines(report: usage_pb2.GetProjectUsageResponse,
                  rates: dict[tuple[str, str], Decimal], currency: str) -> list[dict[str, str]]:
    period = {"project": report.project,
              "period_start": report.start.ToDatetime(tzinfo=UTC).isoformat(),
              "period_end": report.end.ToDatetime(tzinfo=UTC).isoformat()}

    def line(instance_id: str, name: str, flavor: str, usage: usage_pb2.Usage) -> dict[str, str]:
        used = hours(usage.total)
        return {**period, "instance_id": instance_id, "instance_name": name, "flavor": flavor,
                "instance_hours": str(used["instance"].quantize(QUANTITY, ROUND_HALF_UP)),
                "vcpu_hours": str(used["vcpu"].quantize(QUANTITY, ROUND_HALF_UP)),
                "ram_gib_hours": str(used["ram"].quantize(QUANTITY, ROUND_HALF_UP)),
                "disk_gib_hours": str(used["disk"].quantize(QUANTITY, ROUND_HALF_UP)),
                "amount": str(price(usage, rates).quantize(MONEY, ROUND_HALF_UP)),
                "currency": currency}

    lines = [line(i.instance_id, i.name, f.flavor, f.usage)
             for i in report.instances for f in i.flavors]
    total = line("TOTAL", "", "", report.usage)
    # The total's amount is the sum of the lines as printed, so the invoice adds up.
    total["amount"] = str(sum((Decimal(x["amount"]) for x in lines), Decimal(0)))
    return [*lines, total]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", default="", help="default: the project logged in to")
    parser.add_argument("--month", default=datetime.now(UTC).strftime("%Y-%m"),
                        help="YYYY-MM (UTC); default: this month, up to now")
    parser.add_argument("--start", help="instead of --month: period start, ISO 8601 (UTC if no zone)")
    parser.add_argument("--end", help="instead of --month: period end, ISO 8601 (UTC if no zone)")
    parser.add_argument("--rate", action="append", default=[],
                        help="RESOURCE=PRICE or STATE.RESOURCE=PRICE per hour; RESOURCE: "
                             "instance, vcpu, ram (GiB), disk (GiB); repeatable")
    parser.add_argument("--currency", default="EUR")
    args = parser.parse_args(argv)
    rates = parse_rates(args.rate)

    start, end = month_period(args.month)
    if args.start:
        start = datetime.fromisoformat(args.start)
    if args.end:
        end = datetime.fromisoformat(args.end)
    start, end = (t if t.tzinfo else t.replace(tzinfo=UTC) for t in (start, end))

    channel = grpc.insecure_channel(os.environ.get("CLOUD_ENDPOINT", "127.0.0.1:50051"))
    token = identity_pb2_grpc.IdentityServiceStub(channel).Login(identity_pb2.LoginRequest(
        username=os.environ["CLOUD_USERNAME"], password=os.environ["CLOUD_PASSWORD"],
        project=os.environ.get("CLOUD_PROJECT", "")), timeout=30).token
    report = usage_pb2_grpc.UsageServiceStub(channel).GetProjectUsage(
        usage_pb2.GetProjectUsageRequest(project=args.project, start=timestamp(start),
                                         end=timestamp(end)),
        metadata=[("authorization", f"Bearer {token}")], timeout=60)

    writer = csv.DictWriter(sys.stdout, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(invoice_lines(report, rates, args.currency))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except grpc.RpcError as exc:
        print(f"error ({exc.code().name}): {exc.details()}", file=sys.stderr)
        sys.exit(1)
