"""Re-driving stalled builds (control/reconcile/reconciler.py, build_redrive_after_s) with
its default setting: a build whose task Redis lost is sent again from etcd and
reaches ACTIVE, and two copies of one build task running at once (the original
slow, not dead) leave one guest and one claim behind, never none.

A real cloud (etcd, Redis, Celery, API with its reconciler) on a fake-driver
host whose spawns take SPAWN_S. The build deadline is shortened to 12 s, so the
default redrive interval derived from it (a sixth) is 2 s: the same code path
as the defaults (180 s and 30 s)."""

from __future__ import annotations

import re
import time
import uuid
from datetime import datetime

import pytest
from cloudapi.v1 import agent_pb2
from cloudapi.v1 import compute_pb2 as pb

from control.compute.states import Event, TaskState, VmState
from control.compute.tasks import InstanceWork
from control.config import load_config
from control.metering.metrics import redis_client
from control.models import Instance
from control.plane import build_control_plane
from control.store import keys
from tests.conftest import login, start_cloud, stop_cloud, until
from tests.faults.checks import claims_problems

SPAWN_S = 4.0
SETTINGS = {"reconcile_interval_s": 0.5, "build_deadline_s": 12, "host_down_after_s": 10}


@pytest.fixture(scope="module")
def redrive_cloud():
    cloud, store = start_cloud("redrive", control_settings=SETTINGS,
                               agent_settings={"driver": "fake", "fake_spawn_delay_s": SPAWN_S})
    config = load_config(cloud.config_path)
    assert config.build_redrive_after() == 2.0  # the default: a sixth of the deadline
    plane = build_control_plane(config)  # its agent client, as a worker's
    yield cloud, store, login(cloud), plane
    stop_cloud(cloud, "redrive")


def create(api, prefix: str) -> str:
    return api.instances.CreateInstance(pb.CreateInstanceRequest(
        name=f"{prefix}-{uuid.uuid4().hex[:6]}", flavor="tiny")).id


def power(plane, cloud, instance_id: str) -> str:
    address = plane.hosts.get(cloud.host_name).address
    return plane.agents._call(address, "GetPowerState",
                              agent_pb2.InstanceRef(instance_id=instance_id)).power_state


def redriven(cloud, instance_id: str) -> int:
    """How many times the reconciler sent this build again (the API's log)."""
    text = (cloud.root / "logs" / "api.log").read_text(errors="replace")
    return text.count(f"instance {instance_id}: build stalled")


def redriven_at(cloud, instance_id: str) -> list[float]:
    """When (time.time()) the reconciler sent this build again, from the API's log."""
    text = (cloud.root / "logs" / "api.log").read_text(errors="replace")
    return [datetime.strptime(m, "%Y-%m-%d %H:%M:%S,%f").timestamp() for m in re.findall(
        rf"^(\S+ \S+) WARNING \S+ instance {instance_id}: build stalled", text, re.M)]


def queued(redis) -> int:
    return redis.llen("celery")  # Celery's default queue, a Redis list


def instance(store, instance_id: str) -> Instance:
    return Instance(**store.get(keys.instance("demo", instance_id)).value)


@pytest.fixture
def redis(redrive_cloud):
    cloud = redrive_cloud[0]
    config = load_config(cloud.config_path)
    return redis_client(config.redis_url, config.redis_sentinel_master)


@pytest.fixture
def no_worker(redrive_cloud):
    """The Celery worker stopped for the test (started again after it)."""
    cloud = redrive_cloud[0]
    cloud.procs.stop("worker", timeout_s=30)
    yield
    cloud.start_worker()


def test_build_whose_queued_task_redis_lost_reaches_active(redrive_cloud, redis, no_worker):
    """The create is accepted, then Redis loses its data before a worker takes
    the task: the reconciler sends it again from etcd, and it is built."""
    cloud, store, api, plane = redrive_cloud
    instance_id = create(api, "lost")
    assert queued(redis) == 1
    redis.flushall()  # Redis lost (restarted without its files)
    lost_at = time.monotonic()
    cloud.start_worker()
    shown = api.wait_status(instance_id, {"ACTIVE", "ERROR"}, timeout_s=30)
    took = time.monotonic() - lost_at
    print(f"\nlost build ACTIVE {took:.1f}s after Redis lost its task "
          f"(redriven {redriven(cloud, instance_id)}x)")
    assert shown.status == "ACTIVE", shown.fault.message
    assert redriven(cloud, instance_id) >= 1
    assert power(plane, cloud, instance_id) == "running"
    until(lambda: not claims_problems(store), 10, "balanced books")


def test_redrive_repeats_while_the_build_makes_no_progress(redrive_cloud, redis, no_worker):
    """The re-sent task is lost too (Redis loses it again before a worker is
    back): the build is sent again after another interval, and is built."""
    cloud, store, api, plane = redrive_cloud
    instance_id = create(api, "again")
    redis.flushall()
    until(lambda: queued(redis), 10, "the first redrive")
    redis.flushall()
    cloud.start_worker()
    shown = api.wait_status(instance_id, {"ACTIVE", "ERROR"}, timeout_s=30)
    assert shown.status == "ACTIVE", shown.fault.message
    assert redriven(cloud, instance_id) >= 2
    until(lambda: not claims_problems(store), 10, "balanced books")


def test_copy_that_loses_the_scheduling_race_keeps_the_winners_claim(redrive_cloud, no_worker):
    """Two copies of one build in SCHEDULING: both claim (the second finds the
    first's claim: one per instance), the other copy advances first. The loser
    must leave the claim alone: it is the winner's."""
    cloud, store, api, plane = redrive_cloud
    instance_id = create(api, "race")
    real_schedule = plane.scheduler.schedule

    def schedule_then_other_copy_advances(allocation, request, group_key=""):
        host = real_schedule(allocation, request, group_key)
        assert InstanceWork(plane)._advance(allocation.instance_id, Event.SCHEDULED, host=host)
        return host

    plane.scheduler.schedule = schedule_then_other_copy_advances
    try:
        InstanceWork(plane).build(instance_id, give_up_on_unreachable=True)  # the loser
    finally:
        plane.scheduler.schedule = real_schedule
    spawning = instance(store, instance_id)
    assert (spawning.vm_state, spawning.task_state) == (VmState.BUILDING, TaskState.SPAWNING)
    assert store.get(keys.allocation(instance_id)) is not None, "the winner's claim was released"
    InstanceWork(plane).build(instance_id, give_up_on_unreachable=True)  # the winner goes on
    assert instance(store, instance_id).vm_state is VmState.ACTIVE
    assert not [p for p in claims_problems(store) if instance_id in p]


def test_copy_that_finds_no_room_left_after_the_others_claim_does_not_fail_it(
        redrive_cloud, no_worker):
    """Two copies in SCHEDULING of an instance that takes most of its host: the
    other copy claims between this copy's look for a claim and its scheduling,
    which then finds no room. The instance is being built (by the other copy):
    it must not be failed, nor its claim given back."""
    cloud, store, api, plane = redrive_cloud
    free = plane.placement.provider(cloud.host_name)[0].free("MEMORY_MB")
    big = f"big-{uuid.uuid4().hex[:6]}"  # more than half of what is free: one fits
    login(cloud, "admin").flavors.CreateFlavor(pb.CreateFlavorRequest(flavor=pb.Flavor(
        name=big, vcpus=1, memory_mb=free * 3 // 4, disk_gb=1, public=True)))
    instance_id = api.instances.CreateInstance(pb.CreateInstanceRequest(
        name=big, flavor=big)).id
    real_schedule = plane.scheduler.schedule

    def other_copy_claims_first(allocation, request, group_key=""):
        host = real_schedule(allocation, request, group_key)
        assert InstanceWork(plane)._advance(allocation.instance_id, Event.SCHEDULED, host=host)
        return real_schedule(allocation, request, group_key)

    plane.scheduler.schedule = other_copy_claims_first
    try:
        InstanceWork(plane).build(instance_id, give_up_on_unreachable=True)  # the loser
    finally:
        plane.scheduler.schedule = real_schedule
    spawning = instance(store, instance_id)
    assert spawning.vm_state is VmState.BUILDING, spawning.fault
    assert store.get(keys.allocation(instance_id)) is not None, "the winner's claim was released"
    InstanceWork(plane).build(instance_id, give_up_on_unreachable=True)  # the winner goes on
    assert instance(store, instance_id).vm_state is VmState.ACTIVE
    assert not [p for p in claims_problems(store) if instance_id in p]
    api.instances.DeleteInstance(pb.DeleteInstanceRequest(id_or_name=instance_id))


def test_copy_sent_while_the_original_spawns_leaves_the_guest_running(redrive_cloud):
    """The original build is slow, not dead (a spawn of SPAWN_S): the reconciler
    sends a copy after 2 s, which spawns too (the agent runs one spawn of an
    instance at a time; the second finds the guest running) and loses the final
    compare-and-swap. It must not destroy the guest the instance now runs."""
    cloud, store, api, plane = redrive_cloud
    instance_id = create(api, "slow")
    shown = api.wait_status(instance_id, {"ACTIVE", "ERROR"}, timeout_s=30)
    assert shown.status == "ACTIVE", shown.fault.message
    assert redriven(cloud, instance_id) >= 1, "no copy was sent while it spawned"
    active_at = time.monotonic()
    # The copies finish within a spawn's time; the guest must outlive them (deliberate:
    # checked for SPAWN_S + 3 s).
    while time.monotonic() - active_at < SPAWN_S + 3:
        assert power(plane, cloud, instance_id) == "running", "the copy destroyed the guest"
        time.sleep(0.5)
    assert instance(store, instance_id).vm_state is VmState.ACTIVE
    until(lambda: not claims_problems(store), 10, "balanced books")


def test_builds_are_not_sent_again_right_after_an_etcd_outage(redrive_cloud, no_worker):
    """Builds make no progress while etcd is down (their tasks retry): that is
    not a stall. Right after it, their tasks are retrying, and the heartbeats
    recorded before it are old (the scheduler would find no host up), so a
    build is sent again only once it has been seen stalled for the interval
    since etcd came back."""
    cloud, store, api, plane = redrive_cloud
    instance_id = create(api, "etcd")
    cloud.procs.kill("etcd")
    time.sleep(3)  # deliberate: etcd down past the interval (2 s), the build looks stalled
    cloud.start_etcd()
    back = time.time()
    sent = until(lambda: redriven_at(cloud, instance_id), 10, "the redrive")
    print(f"\nsent again {sent[0] - back:.1f}s after etcd was back")
    assert sent[0] - back >= 1.5
    cloud.start_worker()
    assert api.wait_status(instance_id, {"ACTIVE", "ERROR"}, timeout_s=20).status == "ACTIVE"


def test_copy_whose_spawn_fails_after_the_other_finished_keeps_its_claim(redrive_cloud,
                                                                         no_worker):
    """Two copies spawning: the other copy's spawn succeeded (ACTIVE), then this
    copy's spawn fails. It must not give back the claim of the running instance
    (it used to release first, then find it could not reschedule)."""
    from control.compute.agent_client import SpawnFailed
    from control.compute.states import PowerState

    cloud, store, api, plane = redrive_cloud
    instance_id = create(api, "twofail")
    real_spawn = plane.agents.spawn

    def other_copy_finishes_then_this_one_fails(*args, **kwargs):
        assert InstanceWork(plane)._advance(instance_id, Event.SPAWNED,
                                            power_state=PowerState.RUNNING,
                                            launched_at=time.time())
        raise SpawnFailed("this copy's spawn failed")

    plane.agents.spawn = other_copy_finishes_then_this_one_fails
    try:
        InstanceWork(plane).build(instance_id, give_up_on_unreachable=True)  # the loser
    finally:
        plane.agents.spawn = real_spawn
    assert instance(store, instance_id).vm_state is VmState.ACTIVE
    assert store.get(keys.allocation(instance_id)) is not None, "the running one's claim was released"
    api.instances.DeleteInstance(pb.DeleteInstanceRequest(id_or_name=instance_id))  # done
    # by the worker once no_worker starts it again
