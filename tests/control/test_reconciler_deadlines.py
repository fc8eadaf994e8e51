"""The reconciler's deadlines (control/reconcile/reconciler.py, check_deadlines) in a real
cloud (etcd, Redis, a Celery worker, the API running its reconciler every
0.5 s) on fake-driver hosts, with short deadlines:

- stop, scale and resize whose tasks never run (the worker is stopped) are
  undone at operation_deadline_s: back to ACTIVE as they were, the claims the
  scale and the resize took on quota and host given back, a fault and a failed
  action recorded; their tasks, run late, change nothing;
- a delete whose host died is finished at delete_deadline_s: the record, its
  allocation and its quota released, its action ended;
- a delete whose task Redis lost (host up) is sent again at delete_deadline_s,
  and the task destroys the guest and finishes the delete."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from cloudapi.v1 import agent_pb2
from cloudapi.v1 import compute_pb2 as pb

from control.compute.actions import Action
from control.config import load_config
from control.identity.quotas import QuotaValues
from control.metering.metrics import redis_client
from control.models import Allocation, Host, Resources
from control.placement.allocations import RESOURCE_CLASSES, Provider
from control.plane import build_control_plane
from control.queue import DELETE_INSTANCE
from control.store import keys
from tests.conftest import login, start_cloud, stop_cloud, until
from tests.faults.checks import claims_problems

OPERATION_DEADLINE_S = 5
DELETE_DEADLINE_S = 8
SETTINGS = {"reconcile_interval_s": 0.5, "host_down_after_s": 4,
            "operation_deadline_s": OPERATION_DEADLINE_S, "delete_deadline_s": DELETE_DEADLINE_S}
TINY = QuotaValues(instances=1, vcpus=1, memory_mb=256, disk_gb=1)


@pytest.fixture(scope="module")
def dl_cloud():
    cloud, store = start_cloud("rc-deadlines", control_settings=SETTINGS,
                               agent_settings={"driver": "fake"})
    plane = build_control_plane(load_config(cloud.config_path))  # its agent client, as a worker's
    yield cloud, store, login(cloud), plane
    stop_cloud(cloud, "rc-deadlines")


def boot(api, prefix: str) -> pb.Instance:
    created = api.instances.CreateInstance(pb.CreateInstanceRequest(
        name=f"{prefix}-{uuid.uuid4().hex[:6]}", flavor="tiny"))
    # Measured: ACTIVE 0.1-0.2 s after the create; 1.1 s at worst for the first boot of the
    # cloud (the agent fetches the image) at load 5.
    shown = api.wait_status(created.id, {"ACTIVE", "ERROR"}, timeout_s=3)
    assert shown.status == "ACTIVE", shown.fault.message
    return shown


def get(api, instance_id: str) -> pb.Instance:
    return api.instances.GetInstance(pb.GetInstanceRequest(id_or_name=instance_id))


def settled(api, instance_id: str) -> pb.Instance | None:
    """The instance once no operation is in flight on it, else None."""
    shown = get(api, instance_id)
    return None if shown.task_state else shown


def quota_usage(store) -> QuotaValues:
    return QuotaValues(**store.get(keys.quota_usage("demo")).value)


def allocation(store, instance_id: str) -> Allocation | None:
    record = store.get(keys.allocation(instance_id))
    return Allocation(**record.value) if record else None


def host_usage(store, host: str) -> dict[str, int]:
    usage = Provider(**store.get(keys.provider(host)).value).usage
    return {rc: usage.get(rc, 0) for rc in RESOURCE_CLASSES}


def actions(store, instance_id: str) -> list[Action]:
    """The instance's actions, oldest first, from etcd (they outlive it)."""
    return [Action(**r.value) for r in sorted(store.list(keys.actions("demo", instance_id)),
                                              key=lambda r: r.key)]


def power(plane, host: str, instance_id: str) -> str:
    address = plane.hosts.get(host).address
    return plane.agents._call(address, "GetPowerState",
                              agent_pb2.InstanceRef(instance_id=instance_id)).power_state


def queued(redis) -> list[tuple[str, str]]:
    """The tasks waiting in Celery's default queue (a Redis list): (name, arguments)."""
    return [(m["headers"]["task"], m["headers"]["argsrepr"])
            for m in map(json.loads, redis.lrange("celery", 0, -1))]


def operation_tasks_done(cloud) -> int:
    """How many instance operation tasks the worker has finished (its log)."""
    text = (cloud.root / "logs" / "worker.log").read_text(errors="replace")
    return sum(1 for line in text.splitlines()
               if "Task cloud.instance_operation[" in line and "] succeeded in " in line)


def test_operations_past_their_deadline_are_undone_and_give_back_their_claims(dl_cloud):
    """A stop, a scale and a resize are asked while no worker runs: at the
    deadline each is undone as a failed one is."""
    cloud, store, api, plane = dl_cloud
    stopped, scaled, resized = (boot(api, prefix) for prefix in ("op-stop", "op-scale", "op-resize"))
    assert claims_problems(store) == []
    quota_before, host_before = quota_usage(store), host_usage(store, cloud.host_name)
    allocations_before = {i.id: allocation(store, i.id) for i in (stopped, scaled, resized)}
    tasks_before = operation_tasks_done(cloud)
    cloud.procs.stop("worker", timeout_s=30)  # no task runs: the operations overrun their deadline
    try:
        asked = time.time()
        api.instances.StopInstance(pb.InstanceOperationRequest(id_or_name=stopped.id))
        api.instances.ScaleInstance(pb.ScaleInstanceRequest(id_or_name=scaled.id, vcpus=2,
                                                            memory_mb=512))
        api.instances.ResizeInstance(pb.ResizeInstanceRequest(id_or_name=resized.id, flavor="small"))
        # Claimed at once: the scale 1 vCPU and 256 MiB more, the resize to small 256 MiB and 1 GiB.
        assert quota_usage(store) - quota_before == QuotaValues(vcpus=1, memory_mb=512, disk_gb=1)
        assert allocation(store, scaled.id).resources == Resources(vcpus=2, memory_mb=512, disk_gb=1)
        assert allocation(store, resized.id).resources == Resources(vcpus=1, memory_mb=512,
                                                                    disk_gb=2)
        # Measured: all three undone 5.1-5.5 s after they were asked (deadline 5 s, a pass
        # every 0.5 s).
        undone = {i.id: until(lambda i=i: settled(api, i.id), OPERATION_DEADLINE_S + 10,
                              f"{i.name} undone") for i in (stopped, scaled, resized)}
        took = time.time() - asked
        print(f"\nstop, scale and resize undone {took:.1f}s after they were asked "
              f"(operation deadline {OPERATION_DEADLINE_S}s)")
        assert took >= OPERATION_DEADLINE_S  # not before the deadline
        # As they were: running, at their old sizes and flavor.
        for instance_id, phase, action in ((stopped.id, "powering-off", "stop"),
                                           (scaled.id, "scaling", "scale"),
                                           (resized.id, "resizing", "resize")):
            shown = undone[instance_id]
            assert (shown.status, shown.vm_state) == ("ACTIVE", "active"), action
            assert (shown.flavor, shown.vcpus, shown.memory_mb, shown.disk_gb) == \
                ("tiny", 1, 256, 1), action
            assert shown.fault.phase == phase and "timed out" in shown.fault.message, shown.fault
            assert shown.fault.host == cloud.host_name
            last = actions(store, instance_id)[-1]
            assert (last.action, last.result) == (action, "error"), last
            assert last.end is not None and "timed out" in last.error, last
        # The claims given back, exactly.
        assert quota_usage(store) == quota_before
        assert host_usage(store, cloud.host_name) == host_before
        assert {i: allocation(store, i) for i in allocations_before} == allocations_before
        assert claims_problems(store) == []
        records = {i: store.get(keys.instance("demo", i)).value for i in undone}
    finally:
        cloud.start_worker()
    # Their tasks, run late (the worker is back), find nothing to do and change nothing.
    # Measured: the 3 late tasks done 1.3-2.4 s after the worker was started.
    until(lambda: operation_tasks_done(cloud) >= tasks_before + 3, 8, "the late tasks to run")
    assert {i: store.get(keys.instance("demo", i)).value for i in undone} == records
    assert power(plane, cloud.host_name, stopped.id) == "running"
    assert quota_usage(store) == quota_before


def test_delete_whose_host_died_is_finished_at_the_deadline(dl_cloud):
    """Its agent killed (-9), the delete cannot reach the host: once the host is
    down and the delete is past its deadline, the reconciler finishes it (the
    guest, if the host comes back, is a stray)."""
    cloud, store, api, _ = dl_cloud
    admin = login(cloud, "admin")
    dead = f"{cloud.host_name}-dead"
    cloud.add_agent(dead, driver="fake")
    # Measured: registered by the time its port answers (0.0 s).
    until(lambda: store.get(keys.host(dead)), 5, "registration of the second host")
    admin.hosts.UpdateHost(pb.UpdateHostRequest(name=cloud.host_name, enabled=False,
                                                disabled_reason="forced delete test"))
    try:
        shown = boot(api, "fd")
    finally:
        admin.hosts.UpdateHost(pb.UpdateHostRequest(name=cloud.host_name, enabled=True))
    assert shown.host == dead
    assert claims_problems(store) == []
    quota_before = quota_usage(store)
    assert host_usage(store, dead) == {"VCPU": 1, "MEMORY_MB": 256, "DISK_GB": 1}
    cloud.procs.kill(f"agent-{dead}")
    asked = time.time()
    assert api.instances.DeleteInstance(pb.DeleteInstanceRequest(id_or_name=shown.id)).status \
        == "DELETING"
    # Measured: the host marked down 3.8-4.0 s after its agent died (host_down_after_s 4).
    until(lambda: not Host(**store.get(keys.host(dead)).value).up, 10, "the host marked down")
    down = time.time() - asked
    record = store.get(keys.instance("demo", shown.id))  # the task cannot finish it
    assert record is not None and record.value["task_state"] == "deleting", \
        f"finished {down:.1f}s after it was asked, before its deadline ({DELETE_DEADLINE_S}s)"
    # Measured: gone 8.4-8.5 s after it was asked (delete deadline 8 s, a pass every 0.5 s).
    assert api.wait_gone(shown.id, timeout_s=DELETE_DEADLINE_S + 10)
    took = time.time() - asked
    print(f"\nhost down {down:.1f}s after its agent died; delete finished {took:.1f}s after "
          f"it was asked (delete deadline {DELETE_DEADLINE_S}s)")
    assert took >= DELETE_DEADLINE_S  # not before the deadline
    assert store.get(keys.instance("demo", shown.id)) is None
    assert store.get(keys.instance_index(shown.id)) is None
    assert allocation(store, shown.id) is None
    assert host_usage(store, dead) == dict.fromkeys(RESOURCE_CLASSES, 0)
    assert quota_before - quota_usage(store) == TINY
    last = actions(store, shown.id)[-1]
    assert (last.action, last.result) == ("delete", "success") and last.end is not None, last
    assert claims_problems(store) == []


def test_delete_whose_task_was_lost_is_sent_again_at_the_deadline(dl_cloud):
    """The delete's task is lost with Redis before a worker takes it; its host
    is up: at the deadline the reconciler sends the task again, which destroys
    the guest and finishes the delete."""
    cloud, store, api, plane = dl_cloud
    shown = boot(api, "rd")
    assert claims_problems(store) == []
    quota_before = quota_usage(store)
    config = load_config(cloud.config_path)
    redis = redis_client(config.redis_url, config.redis_sentinel_master)
    cloud.procs.stop("worker", timeout_s=30)
    try:
        asked = time.time()
        api.instances.DeleteInstance(pb.DeleteInstanceRequest(id_or_name=shown.id))
        assert any(name == DELETE_INSTANCE and shown.id in args for name, args in queued(redis))
        redis.delete("celery")  # lost, as with a Redis restarted without its files
    finally:
        cloud.start_worker()
    # Measured: gone 8.1-8.4 s after it was asked (delete deadline 8 s, a pass every 0.5 s).
    assert api.wait_gone(shown.id, timeout_s=DELETE_DEADLINE_S + 10)
    took = time.time() - asked
    resent = (cloud.root / "logs" / "api.log").read_text(errors="replace").count(
        f"instance {shown.id}: delete past its deadline; task sent again")
    print(f"\nlost delete finished {took:.1f}s after it was asked (sent again {resent}x)")
    assert took >= DELETE_DEADLINE_S
    assert resent == 1
    assert power(plane, cloud.host_name, shown.id) == "nostate"  # the task destroyed the guest
    assert allocation(store, shown.id) is None
    assert quota_before - quota_usage(store) == TINY
    # The re-sent task carries the delete's action and ends it (it stayed
    # "running" for good before).
    last = actions(store, shown.id)[-1]
    assert (last.action, last.result) == ("delete", "success") and last.end is not None, last
    assert claims_problems(store) == []
