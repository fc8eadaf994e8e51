"""Usage metering's one rule (meter_into) and its sums, without a store."""

from control.compute.states import Event, TaskState, VmState
from control.metering.usage import (
    UsageRecord,
    meter_into,
    month_start_ms,
    summarize,
)
from control.models import Instance, Resources
from control.store import keys
from control.store.etcd import Txn

T0 = 1_700_000_000.0


def new(at: float = T0) -> Instance:
    instance = Instance(id="i-1", project="p", name="web", flavor="small", image="img",
                        resources=Resources(vcpus=1, memory_mb=512, disk_gb=2),
                        created_at=at, updated_at=at)
    return meter_into(Txn(), None, instance, at)


def closed(txn: Txn) -> list[UsageRecord]:
    return [UsageRecord(**v) for k, v in txn.puts.items() if "/usage/" in k]


def test_a_new_instance_is_building_from_its_creation():
    instance = new()
    assert instance.metered is not None
    assert (instance.metered.state, instance.metered.since_ms) == ("building", T0 * 1000)
    assert (instance.metered.vcpus, instance.metered.memory_mb, instance.metered.disk_gb) == (1, 512, 2)


def test_a_state_change_closes_the_interval_in_the_same_txn():
    building = new()
    scheduled = building.after(Event.SCHEDULED, host="h")
    txn = Txn()
    assert meter_into(txn, building, scheduled, T0 + 1).metered == building.metered  # still building
    assert txn.puts == {}
    spawned = scheduled.after(Event.SPAWNED)
    active = meter_into(txn, scheduled, spawned, T0 + 2.5)
    [record] = closed(txn)
    assert (record.state, record.start_ms, record.end_ms) == ("building", T0 * 1000, (T0 + 2.5) * 1000)
    assert list(txn.puts) == [keys.usage_record("p", "i-1", int(T0 * 1000))]
    assert (active.metered.state, active.metered.since_ms) == ("running", (T0 + 2.5) * 1000)


def test_operations_in_flight_do_not_change_the_interval_but_their_result_does():
    active = new().model_copy(update={"vm_state": VmState.ACTIVE, "task_state": TaskState.NONE})
    active = active.model_copy(update={"metered": active.metered.model_copy(update={"state": "running"})})
    txn = Txn()
    stopping = meter_into(txn, active, active.after(Event.STOP), T0 + 1)
    assert txn.puts == {} and stopping.metered == active.metered
    stopped = meter_into(txn, stopping, stopping.after(Event.STOPPED), T0 + 2)
    assert stopped.metered.state == "stopped" and len(closed(txn)) == 1
    # A resize (new sizes and flavor) starts a new interval even in the same state.
    txn = Txn()
    resized = stopped.model_copy(update={"flavor": "medium", "resources": Resources(
        vcpus=2, memory_mb=1024, disk_gb=5), "task_state": TaskState.NONE})
    resized = meter_into(txn, stopped, resized, T0 + 3)
    [record] = closed(txn)
    assert (record.state, record.flavor, record.vcpus) == ("stopped", "small", 1)
    assert (resized.metered.state, resized.metered.flavor, resized.metered.vcpus) == ("stopped", "medium", 2)


def test_delete_closes_the_last_interval_and_a_clock_step_back_is_not_negative():
    instance = new()
    txn = Txn()
    assert meter_into(txn, instance, None, T0 + 10) is None
    assert closed(txn)[0].end_ms - closed(txn)[0].start_ms == 10_000
    txn = Txn()
    meter_into(txn, instance, None, T0 - 5)  # the clock went back: nothing (not negative) to bill
    assert closed(txn) == []
    moved = meter_into(Txn(), instance, instance.after(Event.FAILED), T0 - 5)
    assert moved.metered.since_ms == T0 * 1000


def rec(instance_id, state, start_s, end_s, vcpus=1, flavor="small", memory_mb=512):
    return UsageRecord(project="p", instance_id=instance_id, name=instance_id, flavor=flavor,
                       state=state, vcpus=vcpus, memory_mb=memory_mb, disk_gb=2,
                       start_ms=int(start_s * 1000), end_ms=int(end_s * 1000))


def test_summaries_clip_to_the_period_and_add_up_exactly():
    intervals = [rec("a", "building", 0, 10), rec("a", "running", 10, 100),
                 rec("a", "running", 100, 200, vcpus=2, flavor="medium", memory_mb=1024),
                 rec("b", "stopped", 50, 70), rec("c", "running", 300, 400)]
    report = summarize("p", intervals, {"a": "web"}, 5_000, 150_000, now_ms=1_000_000)
    assert report.usage.total.instance_ms == 5_000 + 90_000 + 50_000 + 20_000
    assert report.usage.total.vcpu_ms == 5_000 + 90_000 + 2 * 50_000 + 20_000
    assert report.usage.by_state["running"].instance_ms == 140_000
    assert set(report.instances) == {"a", "b"}  # c is outside the period
    a = report.instances["a"]
    assert (a.name, a.live, a.first_ms, a.last_ms) == ("web", True, 5_000, 150_000)
    assert a.flavors["medium"].total.ram_mib_ms == 1024 * 50_000
    assert report.flavors["small"].instance_ids == {"a", "b"}
    for field in ("instance_ms", "vcpu_ms", "ram_mib_ms", "disk_gib_ms"):
        total = getattr(report.usage.total, field)
        assert sum(getattr(i.usage.total, field) for i in report.instances.values()) == total
        assert sum(getattr(f.usage.total, field) for f in report.flavors.values()) == total
    assert report.usage.total.ram_gib_hours == report.usage.total.ram_mib_ms / 1024 / 3_600_000
    # A period reaching into the future ends now.
    assert summarize("p", intervals, {}, 0, 10**12, now_ms=350_000).end_ms == 350_000


def test_months():
    assert month_start_ms(1_717_000_000) == 1_714_521_600_000  # 2024-05-29 -> 2024-05-01 UTC


def test_every_usage_rpc_is_open_to_readers():
    from cloudapi.v1 import usage_pb2

    from control.identity import policy

    service = usage_pb2.DESCRIPTOR.services_by_name["UsageService"]
    rules = {m.name: policy.ACTIONS.get(policy.action_of(f"/{service.full_name}/{m.name}"))
             for m in service.methods}
    assert rules == {"GetProjectUsage": "reader", "ListUsageRecords": "reader"}
