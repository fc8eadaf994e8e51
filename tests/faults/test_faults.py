"""Fault tests: each kills or cuts a real process (compute agent, Celery worker,
Redis, etcd) while instances are being created, then checks (tests/faults/
checks.py) that within a bound close to what was measured every instance is
ACTIVE or ERROR, no domain runs that no instance owns, and allocations and quota
usage equal what the live instances hold; and each asserts the outcome it is
about: how many end ACTIVE, and for those in ERROR, the fault naming why. The
figures (time to recover, ACTIVE vs ERROR) are printed (`pytest -s`) and kept
in test-output/faults.json.

Where a test sleeps, the sleep is the fault's length (a process kept down for a
stated time), not a wait for something to happen."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from cloudapi.v1 import compute_pb2 as pb

from control.models import Host
from control.store import keys
from tests.conftest import OUTPUT, login, start_cloud, stop_cloud, until
from tests.faults.checks import (
    FAULT_SETTINGS,
    all_instances,
    create_many,
    delete_everything,
    fault_of,
    outcome,
    settle,
    unlimited,
    wait_phase,
)

BOOTS = 10
FIGURES: dict[str, dict] = {}


def record(name: str, figures: dict) -> None:
    FIGURES[name] = figures
    print(f"\n{name}: {json.dumps(figures)}")
    OUTPUT.mkdir(exist_ok=True)
    path = OUTPUT / "faults.json"
    kept = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**kept, name: figures}, indent=2) + "\n")


@pytest.fixture(scope="module")
def fake_cloud():
    """Fake-driver hosts whose spawns take 1 s, so a fault lands mid-build."""
    cloud, store = start_cloud("faults-fake", control_settings=FAULT_SETTINGS,
                               agent_settings={"driver": "fake", "fake_spawn_delay_s": 1.0})
    unlimited(cloud)
    yield cloud, store, login(cloud)
    stop_cloud(cloud, "faults-fake")


def all_active(store, ids: list[str], figures: dict) -> None:
    """Every one of `ids` ACTIVE, none in ERROR (with the faults if not)."""
    active, errors = outcome(store, ids)
    assert (len(active), len(errors)) == (len(ids), 0), \
        (figures, [fault_of(i) for i in errors])


def test_worker_killed_during_boots(fake_cloud):
    """kill -9 of the Celery worker during 10 boots, restarted 2 s later (fake
    driver: what matters is the queue, not the guests). Tasks the dead worker
    held are not redelivered before Redis's visibility timeout: the reconciler
    sends those builds again (build_redrive_after_s, by default a sixth of the
    build deadline: 2.5 s here), and the restarted worker builds every
    instance: all 10 ACTIVE, well before the build deadline (15 s) would fail
    the held ones."""
    cloud, store, api = fake_cloud
    ids = create_many(api, BOOTS, "wk")
    wait_phase(store, ids, 1, timeout_s=4)  # measured 0.9-1.4 s
    started = time.monotonic()
    cloud.procs.kill("worker")
    time.sleep(2)  # the fault: the worker stays down 2 s
    cloud.start_worker()
    # Settled 4.5-5.5 s after the kill (measured; README 5-6 s); the held
    # builds failing at their deadline instead would take 15 s.
    figures = settle(store, started, timeout_s=12)
    record("worker_kill", figures)
    all_active(store, ids, figures)
    delete_everything(api, store, timeout_s=3)  # measured 0.2-0.4 s


def test_worker_sigterm_finishes_or_hands_back_its_work(fake_cloud):
    """SIGTERM to the Celery worker during 10 boots (graceful shutdown): it
    finishes the builds in hand, gives the rest back to the queue (acks_late),
    and exits by itself (not killed after the stop's timeout); the next worker
    builds them. Every instance ends ACTIVE."""
    cloud, store, api = fake_cloud
    ids = create_many(api, BOOTS, "gs")
    wait_phase(store, ids, 1, timeout_s=4)  # measured 0.9-1.4 s
    started = time.monotonic()
    cloud.procs.stop("worker", timeout_s=10)  # then SIGKILL
    stopped_s = round(time.monotonic() - started, 1)
    cloud.start_worker()
    figures = settle(store, started, timeout_s=12)  # measured 3.2-4.3 s (README 4 s)
    figures["worker_exit_s"] = stopped_s
    record("worker_sigterm", figures)
    # It exited on its own in 0.3-1.3 s (measured); at 10 s it is killed instead.
    assert stopped_s < 4, figures
    all_active(store, ids, figures)
    delete_everything(api, store, timeout_s=3)  # measured 0.2-0.4 s


def test_redis_restarted_during_boots(fake_cloud):
    """Redis killed (-9) during 10 boots and started again 2 s later (fake driver).
    A create made while it is down is held by the API, which tries its enqueue
    again (enqueue_retry_s, within the call's deadline), and is accepted once
    Redis is back: one instance, nothing refused, and all 10 ACTIVE (builds
    whose task Redis lost are sent again by the reconciler). (A Redis down for
    longer is refused UNAVAILABLE: tests/integration/test_backends_down.py.)"""
    cloud, store, api = fake_cloud
    ids = create_many(api, BOOTS // 2, "rd")
    started = time.monotonic()
    cloud.procs.kill("redis")
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(api.instances.CreateInstance, pb.CreateInstanceRequest(
            name="rd-x", flavor="tiny", request_id="rd-x"), timeout=30)
        time.sleep(2)  # the fault: Redis stays down 2 s
        assert not held.done(), "the create made while Redis was down was answered at once"
        cloud.start_redis()
        ids.append(held.result().id)
    held_s = time.monotonic() - started
    ids += create_many(api, BOOTS // 2 - 1, "rd2")
    # Settled 4.4-8.7 s after the kill (measured; README 4-6 s).
    figures = settle(store, started, timeout_s=20)
    figures["create_held_s"] = round(held_s, 1)
    record("redis_restart", figures)
    # Held through the outage and accepted once Redis was back: 2.1 s (measured
    # in 5 runs).
    assert 2 <= held_s < 5, figures
    names = [i.name for i in all_instances(store)]
    assert len(names) == len(set(names)) == BOOTS and "rd-x" in names
    all_active(store, ids, figures)
    delete_everything(api, store, timeout_s=3)  # measured 0.2-0.4 s


def test_etcd_restarted_during_boots(fake_cloud):
    """etcd killed (-9) during 10 boots and started again 3 s later (fake
    driver). While it is down the API answers UNAVAILABLE, never a false
    success and never INTERNAL; the create refused meanwhile made nothing; the
    10 builds in flight all end ACTIVE (tasks retry through the outage)."""
    cloud, store, api = fake_cloud
    ids = create_many(api, BOOTS, "et")
    wait_phase(store, ids, 1, timeout_s=4)  # measured 0.9-1.4 s
    started = time.monotonic()
    cloud.procs.kill("etcd")
    codes = []
    for call in (
        lambda: api.instances.CreateInstance(pb.CreateInstanceRequest(
            name="et-x", flavor="tiny", request_id="et-x"), timeout=15),
        lambda: api.instances.GetInstance(pb.GetInstanceRequest(id_or_name=ids[0]), timeout=15),
        lambda: api.instances.ListInstances(pb.ListInstancesRequest(), timeout=15),
        lambda: api.instances.DeleteInstance(pb.DeleteInstanceRequest(id_or_name=ids[-1]),
                                             timeout=15),
    ):
        try:
            call()
            codes.append("OK")
        except grpc.RpcError as exc:
            codes.append(exc.code().name)
    down_s = time.monotonic() - started
    time.sleep(max(0.0, 3 - down_s))  # the fault: etcd stays down 3 s (the calls above count)
    cloud.start_etcd()
    assert codes == ["UNAVAILABLE"] * 4, codes
    figures = settle(store, started, timeout_s=20)  # measured 8.8-9.3 s (README 9.5 s)
    figures["codes_while_down"] = codes
    record("etcd_restart", figures)
    assert "et-x" not in [i.name for i in all_instances(store)]
    all_active(store, ids, figures)
    delete_everything(api, store, timeout_s=3)  # measured 0.2-0.4 s


def test_agent_never_back(fake_cloud):
    """A second host's agent (fake driver) is killed (-9) while builds target it
    (the first host is disabled) and never comes back: the host is marked down
    (after host_down_after_s, 4 s here), every build on it fails with a fault
    naming it, and its claims are given back."""
    cloud, store, api = fake_cloud
    admin = login(cloud, "admin")
    gone = f"{cloud.host_name}-b"
    cloud.add_agent(gone, driver="fake", fake_spawn_delay_s=3.0)
    # Registered as it starts listening: measured 0.01 s after add_agent returned.
    until(lambda: store.get(keys.host(gone)), 2, f"registration of {gone}")
    admin.hosts.UpdateHost(pb.UpdateHostRequest(name=cloud.host_name, enabled=False,
                                                disabled_reason="fault test"))
    try:
        ids = create_many(api, 5, "nb")
        until(lambda: any(i.host == gone for i in all_instances(store)), 2,
              f"a build placed on {gone}")  # measured 0.0-0.02 s
        started = time.monotonic()
        cloud.procs.kill(f"agent-{gone}")
        # Marked down 3.9-4.9 s after the kill (measured; host_down_after_s 4
        # since its last heartbeat, then the next 1 s reconciler tick).
        until(lambda: not Host(**store.get(keys.host(gone)).value).up, 10,
              f"{gone} marked down", every_s=0.05)
        marked_down = round(time.monotonic() - started, 1)
        figures = settle(store, started, timeout_s=12)  # measured 4.2-5.1 s
        figures["host_marked_down_s"] = marked_down
        record("agent_never_back", figures)
        active, errors = outcome(store, ids)
        assert (len(active), len(errors)) == (0, 5), figures
        faults = [fault_of(i) for i in errors]
        # Those spawning there when it died: "build abandoned: host ... is down";
        # any scheduled after (none measured): no host left.
        assert all(gone in i.fault.message or "no host" in i.fault.message for i in errors), faults
        assert any(gone in i.fault.message and "down" in i.fault.message for i in errors), faults
        assert store.list(keys.allocations()) == []
        shown = admin.hosts.GetHost(pb.GetHostRequest(name=gone))
        assert not shown.up
    finally:
        admin.hosts.UpdateHost(pb.UpdateHostRequest(name=cloud.host_name, enabled=True))
    # Its host is down: each delete is finished by the reconciler past the
    # delete deadline (15 s here): measured 15.7-16.2 s.
    delete_everything(api, store, timeout_s=30)


@pytest.fixture(scope="module")
def libvirt_cloud():
    cloud, store = start_cloud("faults-lv", control_settings={
        **FAULT_SETTINGS, "host_down_after_s": 15, "build_deadline_s": 45, "orphan_grace_s": 3,
        "cpu_allocation_ratio": 8.0})  # 10 tiny guests fit on 2 cores
    unlimited(cloud)
    yield cloud, store, login(cloud)
    stop_cloud(cloud, "faults-lv")


def test_agent_killed_during_boots(libvirt_cloud):
    """kill -9 of the compute agent (real libvirt driver, real QEMU guests)
    during 10 boots, restarted 5 s later. The guests QEMU was running live on
    (they are libvirtd's, not the agent's); spawns the agent had in hand fail
    UNAVAILABLE and their tasks retry (1, 2, 4 s apart) until it is back, and
    spawn is idempotent (a retry finds its guest running), well within the
    host-down limit (15 s here) and the build deadline (45 s): all 10 ACTIVE,
    none in ERROR, and no libvirt domain that no instance owns."""
    cloud, store, api = libvirt_cloud
    ids = create_many(api, BOOTS, "ag")
    wait_phase(store, ids, 2, timeout_s=8)  # measured 1.9-3.1 s
    started = time.monotonic()
    cloud.procs.kill("agent")
    time.sleep(5)  # the fault: the agent stays down 5 s
    cloud.start_agent()
    # Settled 9.9-22.1 s after the kill (measured in 7 runs: 13.3, 10.6, 22.1,
    # 9.9, 11.4, 12.8, 13.4; README 10-12 s): the spawns' retries are 1, 2, 4,
    # 8 s apart, the build re-sent after 7.5 s without progress. Builds failing
    # at their deadline instead would take 45 s.
    figures = settle(store, started, timeout_s=40, host_name=cloud.host_name)
    record("agent_kill", figures)
    active, errors = outcome(store, ids)
    assert (len(active), len(errors)) == (BOOTS, 0), (figures, [fault_of(i) for i in errors])
    delete_everything(api, store, timeout_s=20)  # measured 5.9-8.1 s (real guests stop)
