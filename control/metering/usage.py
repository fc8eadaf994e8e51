"""Usage metering for billing: how long each instance was in which state, at
which sizes, to the millisecond.

An instance's *open interval* lives in its own record (`Instance.metered`): the
state it is billed as (building, running, stopped, error), its flavor and
sizes, and since when. Every write of an instance record goes through
`meter_into`, which compares the open interval with what the new record should
be billed as; if they differ (a state that bills differently, another flavor,
other sizes) it closes the open interval into an immutable usage record, in the
same etcd transaction as the instance write, and opens a new one. The delete
transaction closes the last interval. So the numbers are exact (a boundary is the
moment the change was committed, by the control plane's clock) and survive any
restart: they are etcd records, written atomically with the state they follow.

    usage record  /cloud/projects/{project}/usage/{instance_id}/{start_ms}

Which state bills what: vm_state building -> building, active -> running (also
while a stop, reboot, scale or resize is in flight: the change counts when it is
done), stopped -> stopped, error -> error; a deleted instance stops being
metered when its delete is done. Billing systems decide what each state costs.

Queries read the closed records and the instances' open intervals at one store
revision, so an interval is never missed or counted twice while it closes.
Amounts are integers (milliseconds times units), so sums are exact; hours are
derived from them.
"""

from __future__ import annotations

import calendar
import time
from dataclasses import dataclass, field
from typing import overload

from pydantic import BaseModel

from control.compute.states import VmState
from control.errors import InvalidArgument
from control.models import Instance, Metered
from control.store import keys
from control.store.etcd import Store, Txn

# What each vm_state is billed as; a state missing here (deleted) is not metered.
BILLED_AS = {VmState.BUILDING: "building", VmState.ACTIVE: "running",
             VmState.STOPPED: "stopped", VmState.ERROR: "error"}
STATES = ("building", "running", "stopped", "error")

MS_PER_HOUR = 3_600_000
MIB_PER_GIB = 1024


def to_ms(seconds: float) -> int:
    return round(seconds * 1000)


class UsageRecord(BaseModel):
    """One interval of one instance in one billed state at one size. Closed
    records are immutable; `open` ones are an instance's current interval, shown
    as ending at the time of the query."""

    project: str
    instance_id: str
    name: str          # the instance's name when the interval closed
    flavor: str
    state: str         # building, running, stopped, error
    vcpus: int
    memory_mb: int
    disk_gb: int
    start_ms: int
    end_ms: int
    open: bool = False


# ---------------------------------------------------------------- writing


def billed_as(instance: Instance | None, since_ms: int) -> Metered | None:
    """The interval `instance` should be in, were it to start at since_ms."""
    if instance is None or instance.vm_state not in BILLED_AS:
        return None
    r = instance.resources
    return Metered(state=BILLED_AS[instance.vm_state], flavor=instance.flavor, vcpus=r.vcpus,
                   memory_mb=r.memory_mb, disk_gb=r.disk_gb, since_ms=since_ms)


def _same(a: Metered, b: Metered) -> bool:
    return (a.state, a.flavor, a.vcpus, a.memory_mb, a.disk_gb) == (
        b.state, b.flavor, b.vcpus, b.memory_mb, b.disk_gb)


@overload
def meter_into(txn: Txn, before: Instance | None, after: None, now: float) -> None: ...
@overload
def meter_into(txn: Txn, before: Instance | None, after: Instance, now: float) -> Instance: ...


def meter_into(txn: Txn, before: Instance | None, after: Instance | None,
               now: float) -> Instance | None:
    """The one rule of metering, for every write of an instance record.

    `before` is the instance as read (None for a create), `after` as it is about
    to be written (None when the write deletes it); `now` is the write's time
    (the same as after.updated_at). If what `after` is billed as differs from
    `before`'s open interval, the interval is closed into a usage record added to
    `txn` and a new one opened at `now`. Returns `after` with its open interval
    set: the caller puts that into `txn`.
    """
    at = to_ms(now)
    current = before.metered if before is not None else None
    if current is not None:
        at = max(at, current.since_ms)  # a clock that stepped back never makes time negative
    wanted = billed_as(after, at)
    if current is not None and wanted is not None and _same(current, wanted):
        wanted = current  # still in the same interval
    elif current is not None and before is not None and at > current.since_ms:
        named = after or before
        record = UsageRecord(project=before.project, instance_id=before.id, name=named.name,
                             flavor=current.flavor, state=current.state, vcpus=current.vcpus,
                             memory_mb=current.memory_mb, disk_gb=current.disk_gb,
                             start_ms=current.since_ms, end_ms=at)
        key = keys.usage_record(before.project, before.id, current.since_ms)
        txn.put(key, record.model_dump(exclude={"open"}))
    if after is None:
        return None
    return after.model_copy(update={"metered": wanted})


# ---------------------------------------------------------------- amounts


@dataclass
class Amounts:
    """Exact usage: milliseconds times units."""

    instance_ms: int = 0
    vcpu_ms: int = 0
    ram_mib_ms: int = 0
    disk_gib_ms: int = 0

    def add(self, record: UsageRecord, ms: int) -> None:
        self.instance_ms += ms
        self.vcpu_ms += record.vcpus * ms
        self.ram_mib_ms += record.memory_mb * ms
        self.disk_gib_ms += record.disk_gb * ms

    @property
    def instance_hours(self) -> float:
        return self.instance_ms / MS_PER_HOUR

    @property
    def vcpu_hours(self) -> float:
        return self.vcpu_ms / MS_PER_HOUR

    @property
    def ram_gib_hours(self) -> float:
        return self.ram_mib_ms / (MS_PER_HOUR * MIB_PER_GIB)

    @property
    def disk_gib_hours(self) -> float:
        return self.disk_gib_ms / MS_PER_HOUR


@dataclass
class Usage:
    """Amounts in total and per billed state."""

    total: Amounts = field(default_factory=Amounts)
    by_state: dict[str, Amounts] = field(default_factory=dict)

    def add(self, record: UsageRecord, ms: int) -> None:
        self.total.add(record, ms)
        self.by_state.setdefault(record.state, Amounts()).add(record, ms)


@dataclass
class FlavorUsage:
    flavor: str
    instance_ids: set[str] = field(default_factory=set)
    usage: Usage = field(default_factory=Usage)


@dataclass
class InstanceUsage:
    instance_id: str
    name: str = ""
    live: bool = False       # the instance still exists
    first_ms: int = 0        # its first and last metered moment within the period
    last_ms: int = 0
    usage: Usage = field(default_factory=Usage)
    flavors: dict[str, Usage] = field(default_factory=dict)


@dataclass
class ProjectUsage:
    project: str
    start_ms: int
    end_ms: int             # the period's end as used: never after the query's time
    now_ms: int
    usage: Usage = field(default_factory=Usage)
    flavors: dict[str, FlavorUsage] = field(default_factory=dict)
    instances: dict[str, InstanceUsage] = field(default_factory=dict)


def overlap_ms(record: UsageRecord, start_ms: int, end_ms: int) -> int:
    return max(0, min(record.end_ms, end_ms) - max(record.start_ms, start_ms))


def month_start_ms(now: float) -> int:
    """The start of the current calendar month, UTC."""
    t = time.gmtime(now)
    return calendar.timegm((t.tm_year, t.tm_mon, 1, 0, 0, 0)) * 1000


def summarize(project: str, intervals: list[UsageRecord], live_names: dict[str, str],
              start_ms: int, end_ms: int, now_ms: int) -> ProjectUsage:
    """Usage within [start_ms, end_ms): totals, per flavor, per instance (and
    per flavor within each instance)."""
    end_ms = min(end_ms, now_ms)
    report = ProjectUsage(project=project, start_ms=start_ms, end_ms=end_ms, now_ms=now_ms)
    for record in intervals:
        ms = overlap_ms(record, start_ms, end_ms)
        if ms <= 0:
            continue
        report.usage.add(record, ms)
        flavor = report.flavors.setdefault(record.flavor, FlavorUsage(record.flavor))
        flavor.instance_ids.add(record.instance_id)
        flavor.usage.add(record, ms)
        instance = report.instances.get(record.instance_id)
        if instance is None:
            instance = report.instances[record.instance_id] = InstanceUsage(
                record.instance_id, first_ms=max(record.start_ms, start_ms))
        instance.name = live_names.get(record.instance_id, record.name)
        instance.live = record.instance_id in live_names
        instance.first_ms = min(instance.first_ms, max(record.start_ms, start_ms))
        instance.last_ms = max(instance.last_ms, min(record.end_ms, end_ms))
        instance.usage.add(record, ms)
        instance.flavors.setdefault(record.flavor, Usage()).add(record, ms)
    return report


# ---------------------------------------------------------------- reading


class Metering:
    def __init__(self, store: Store):
        self.store = store

    def intervals(self, project: str, now: float | None = None,
                  ) -> tuple[list[UsageRecord], dict[str, str], int]:
        """Every interval of the project's instances, closed and open (the open
        ones ending at `now`), in (instance, start) order, read as one snapshot;
        the live instances' names by id; and now in milliseconds."""
        instances, revision = self.store.list_at_revision(keys.instances(project))
        closed, _ = self.store.list_at_revision(keys.usage_records(project), revision)
        now_ms = to_ms(time.time() if now is None else now)
        found = [UsageRecord(**r.value) for r in closed]
        names: dict[str, str] = {}
        for r in instances:
            instance = Instance(**r.value)
            names[instance.id] = instance.name
            m = instance.metered
            if m is None:
                continue  # written before metering existed: nothing known to bill
            found.append(UsageRecord(
                project=project, instance_id=instance.id, name=instance.name, flavor=m.flavor,
                state=m.state, vcpus=m.vcpus, memory_mb=m.memory_mb, disk_gb=m.disk_gb,
                start_ms=m.since_ms, end_ms=max(now_ms, m.since_ms), open=True))
        found.sort(key=record_order)
        return found, names, now_ms

    def project_usage(self, project: str, start_ms: int | None = None, end_ms: int | None = None,
                      now: float | None = None) -> ProjectUsage:
        """Usage in [start, end) (default: this month so far, UTC)."""
        intervals, names, now_ms = self.intervals(project, now)
        start_ms = month_start_ms(now_ms / 1000) if start_ms is None else start_ms
        end_ms = now_ms if end_ms is None else end_ms
        if start_ms > end_ms:
            raise InvalidArgument("start must not be after end")
        return summarize(project, intervals, names, start_ms, end_ms, now_ms)

    def records(self, project: str, start_ms: int | None = None, end_ms: int | None = None,
                instance_id: str = "", include_open: bool = False) -> list[UsageRecord]:
        """The usage records overlapping [start, end), whole (not cut to the
        period), in (instance, start) order: the order to page them in (a closed
        record never moves; an open interval, once closed, keeps its place).
        Open intervals, with include_open, end at the time of the query."""
        if start_ms is not None and end_ms is not None and start_ms > end_ms:
            raise InvalidArgument("start must not be after end")
        intervals, _, _ = self.intervals(project)
        return [r for r in intervals
                if (include_open or not r.open)
                and (not instance_id or r.instance_id == instance_id)
                and (start_ms is None or r.end_ms > start_ms)
                and (end_ms is None or r.start_ms < end_ms)]


def record_order(record: UsageRecord) -> tuple[str, int]:
    """Records sort (and page) by instance, then start: unique per interval."""
    return record.instance_id, record.start_ms
