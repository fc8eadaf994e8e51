"""Fault tests: each kills or cuts a real process (compute agent, Celery worker,
Redis, etcd) while instances are being created, then checks (tests/faults/
checks.py) that within 60 s every instance is ACTIVE or ERROR, no domain runs
that no instance owns, and allocations and quota usage equal what the live
instances hold. The figures (time to recover, ACTIVE vs ERROR) are printed
(`pytest -s`) and kept in test-output/faults.json."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from cloudapi.v1 import compute_pb2 as pb

from control import keys
from control.models import Host
from tests.conftest import OUTPUT, login, start_cloud, stop_cloud
from tests.faults.checks import (
    FAULT_SETTINGS,
    all_instances,
    create_many,
    delete_everything,
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
    cloud, store = start_cloud("faults", control_settings=FAULT_SETTINGS,
                               agent_settings={"driver": "fake", "fake_spawn_delay_s": 1.0})
    unlimited(cloud)
    yield cloud, store, login(cloud)
    stop_cloud(cloud, "faults")


def test_worker_killed_during_boots(fake_cloud):
    """kill -9 of the Celery worker during 10 boots, restarted 2 s later (fake
    driver: what matters is the queue, not the guests). Tasks the dead worker
    held are not redelivered before Redis's visibility timeout: the reconciler
    sends those builds again (build_redrive_after_s, by default a sixth of the
    build deadline), and the restarted worker builds every instance."""
    cloud, store, api = fake_cloud
    ids = create_many(api, BOOTS, "wk")
    wait_phase(store, ids, 1)
    started = time.monotonic()
    cloud.procs.kill("worker")
    time.sleep(2)
    cloud.start_worker()
    figures = settle(store, started)
    record("worker_kill", figures)
    assert (figures["active"], figures["error"]) == (BOOTS, 0)
    delete_everything(api, store)


def test_worker_sigterm_finishes_or_hands_back_its_work(fake_cloud):
    """SIGTERM to the Celery worker during 10 boots (graceful shutdown): it
    finishes the builds in hand, gives the rest back to the queue (acks_late),
    and exits; the next worker builds them. Every instance ends ACTIVE."""
    cloud, store, api = fake_cloud
    ids = create_many(api, BOOTS, "gs")
    wait_phase(store, ids, 1)
    started = time.monotonic()
    cloud.procs.stop("worker", timeout_s=30)
    stopped_s = round(time.monotonic() - started, 1)
    cloud.start_worker()
    figures = settle(store, started)
    figures["worker_exit_s"] = stopped_s
    record("worker_sigterm", figures)
    assert (figures["active"], figures["error"]) == (BOOTS, 0)
    delete_everything(api, store)


def test_redis_restarted_during_boots(fake_cloud):
    """Redis killed (-9) during 10 boots and started again 2 s later (fake driver).
    A create made while it is down is held by the API, which tries its enqueue
    again (enqueue_retry_s, within the call's deadline), and is accepted once
    Redis is back: one instance, nothing refused. (A Redis down for longer is
    refused UNAVAILABLE: tests/integration/test_backends_down.py.)"""
    cloud, store, api = fake_cloud
    ids = create_many(api, BOOTS // 2, "rd")
    started = time.monotonic()
    cloud.procs.kill("redis")
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(api.instances.CreateInstance, pb.CreateInstanceRequest(
            name="rd-x", flavor="tiny", request_id="rd-x"), timeout=30)
        time.sleep(2)
        cloud.start_redis()
        ids.append(held.result().id)
    held_s = time.monotonic() - started
    ids += create_many(api, BOOTS // 2 - 1, "rd2")
    figures = settle(store, started)
    figures["create_held_s"] = round(held_s, 1)
    record("redis_restart", figures)
    names = [i.name for i in all_instances(store)]
    assert len(names) == len(set(names)) == BOOTS and "rd-x" in names
    delete_everything(api, store)


def test_etcd_restarted_during_boots(fake_cloud):
    """etcd killed (-9) during 10 boots and started again 3 s later (fake
    driver). While it is down the API answers UNAVAILABLE, never a false
    success and never INTERNAL."""
    cloud, store, api = fake_cloud
    ids = create_many(api, BOOTS, "et")
    wait_phase(store, ids, 1)
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
    time.sleep(max(0.0, 3 - down_s))
    cloud.start_etcd()
    assert codes == ["UNAVAILABLE"] * 4, codes
    figures = settle(store, started)
    figures["codes_while_down"] = codes
    record("etcd_restart", figures)
    assert "et-x" not in [i.name for i in all_instances(store)]
    delete_everything(api, store)


def test_agent_never_back(fake_cloud):
    """A second host's agent (fake driver) is killed (-9) while builds target it
    (the first host is disabled) and never comes back: the host is marked down,
    every build on it fails with a fault naming it, and its claims are given
    back."""
    cloud, store, api = fake_cloud
    admin = login(cloud, "admin")
    gone = f"{cloud.host_name}-b"
    cloud.add_agent(gone, driver="fake", fake_spawn_delay_s=3.0)
    deadline = time.monotonic() + 30
    while store.get(keys.host(gone)) is None and time.monotonic() < deadline:
        time.sleep(0.2)
    admin.hosts.UpdateHost(pb.UpdateHostRequest(name=cloud.host_name, enabled=False,
                                                disabled_reason="fault test"))
    try:
        ids = create_many(api, 5, "nb")
        deadline = time.monotonic() + 30
        while not any(i.host == gone for i in all_instances(store)) and \
                time.monotonic() < deadline:
            time.sleep(0.1)
        started = time.monotonic()
        cloud.procs.kill(f"agent-{gone}")
        marked_down = None
        figures = None
        while time.monotonic() - started < 60:
            if marked_down is None and not Host(**store.get(keys.host(gone)).value).up:
                marked_down = round(time.monotonic() - started, 1)
            if marked_down is not None:
                figures = settle(store, started)
                break
            time.sleep(0.2)
        assert figures is not None, "the host was never marked down"
        figures["host_marked_down_s"] = marked_down
        record("agent_never_back", figures)
        instances = [i for i in all_instances(store) if i.id in ids]
        assert all(i.vm_state.value == "error" for i in instances)
        assert all(gone in i.fault.message or "no host" in i.fault.message for i in instances)
        assert any(gone in i.fault.message for i in instances)
        assert store.list(keys.allocations()) == []
        shown = admin.hosts.GetHost(pb.GetHostRequest(name=gone))
        assert not shown.up
    finally:
        admin.hosts.UpdateHost(pb.UpdateHostRequest(name=cloud.host_name, enabled=True))
    delete_everything(api, store)


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
    during 10 boots, restarted 5 s later: builds it had in hand are retried
    (spawn is idempotent) or fail; no libvirt domain is left that no instance
    owns."""
    cloud, store, api = libvirt_cloud
    ids = create_many(api, BOOTS, "ag")
    wait_phase(store, ids, 2)
    started = time.monotonic()
    cloud.procs.kill("agent")
    time.sleep(5)
    cloud.start_agent()
    figures = settle(store, started, host_name=cloud.host_name)
    record("agent_kill", figures)
    delete_everything(api, store, timeout_s=120)
