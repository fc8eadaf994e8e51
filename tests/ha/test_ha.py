"""High availability of the control plane (issue 9): one cloud with an etcd
cluster of 3 members, 2 API replicas and 2 Celery workers (fake-driver agent).
Each test kills (-9) one piece while instances are being created, through a
client given both API replicas: the cloud keeps accepting creates, and every
instance reaches ACTIVE (and the books balance: tests/faults/checks.py). The
figures (stalls, failover and takeover times) are printed (`pytest -s`) and
kept in test-output/ha.json."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from control import keys
from control.store import Store
from tests.conftest import login, start_cloud, stop_cloud
from tests.faults.checks import delete_everything, unlimited
from tests.ha.helpers import HA_SETTINGS, Creates, Probe, api_probe, record, settle_all_active


@pytest.fixture(scope="module")
def ha():
    cloud, store = start_cloud("ha", etcd_members=3, api_replicas=2, workers=2,
                               control_settings=HA_SETTINGS,
                               agent_settings={"driver": "fake", "fake_spawn_delay_s": 0.5})
    unlimited(cloud)
    api = login(cloud)
    assert "," in api.target  # both replicas
    yield cloud, store, api
    stop_cloud(cloud, "ha")


def etcd_status(cloud) -> list[dict]:
    out = subprocess.run(["etcdctl", "--endpoints", ",".join(cloud.etcd_endpoints),
                          "endpoint", "status", "-w", "json"],
                         capture_output=True, text=True, timeout=20)
    return json.loads(out.stdout or "[]")


def test_etcd_member_killed(ha):
    """kill -9 of the etcd leader during creates: calls on it fail over to the
    other members (after a new leader is elected); restarted with its data
    directory, it rejoins and catches up."""
    cloud, store, api = ha
    status = etcd_status(cloud)
    leader = next(s for s in status if s["Status"]["leader"] == s["Status"]["header"]["member_id"])
    victim = next(name for name, port, _ in cloud.etcd_member_ports()
                  if leader["Endpoint"].endswith(f":{port}"))
    writer = Store(cloud.etcd_endpoints, timeout_s=3)
    write_probe = Probe(lambda: writer.put_if_absent(keys.PREFIX + f"/ha-probe/{time.monotonic()}",
                                                     {}))
    read_probe = api_probe(api)
    creates = Creates(api, "etcd")
    for thread in (write_probe, read_probe, creates):
        thread.start()
    time.sleep(1)
    started = time.monotonic()
    cloud.procs.kill(victim)
    figures = {"killed": f"{victim} (the raft leader)", **creates.finish()}
    figures.update({f"store_write_{k}": v for k, v in write_probe.finish().items()})
    figures.update({f"api_read_{k}": v for k, v in read_probe.finish().items()})
    figures.update(settle_all_active(store, started))
    # It rejoins: started again on its data directory, every member is healthy
    # and it serves the cluster's current revision.
    restarted = time.monotonic()
    cloud.start_etcd()
    revision = writer.revision()
    alone = Store([f"127.0.0.1:{dict((n, p) for n, p, _ in cloud.etcd_member_ports())[victim]}"])
    assert alone.revision() >= revision
    figures["rejoined_s"] = round(time.monotonic() - restarted, 1)
    health = subprocess.run(["etcdctl", "--endpoints", ",".join(cloud.etcd_endpoints),
                             "endpoint", "health"], capture_output=True, text=True, timeout=20)
    assert health.returncode == 0 and (health.stdout + health.stderr).count("is healthy") == 3, \
        health.stdout + health.stderr
    assert len(etcd_status(cloud)) == 3
    alone.close()
    writer.close()
    record("etcd_member_kill", figures)
    delete_everything(api, store)


def test_api_replica_killed(ha):
    """kill -9 of the API replica the client is connected to (the first listed):
    the client's channel moves to the other; creates go on; agents' reports
    move too (their host is never judged down)."""
    cloud, store, api = ha
    probe = api_probe(api)
    creates = Creates(api, "api")
    probe.start()
    creates.start()
    time.sleep(1)
    started = time.monotonic()
    cloud.procs.kill("api")
    figures = {"killed": "api (replica 1)", **creates.finish()}
    figures.update({f"client_{k}": v for k, v in probe.finish().items()})
    figures.update(settle_all_active(store, started))
    from control.models import Host
    host = Host(**store.get(keys.host(cloud.host_name)).value)
    assert host.up and time.time() - host.last_heartbeat < 4, "heartbeats did not fail over"
    cloud.start_api()
    record("api_replica_kill", figures)
    delete_everything(api, store)


def test_worker_killed(ha):
    """kill -9 of one Celery worker during creates: the other takes the queue;
    builds the dead one held (unacknowledged, in Redis until the visibility
    timeout) are sent again by the reconciler (build_redrive_after_s)."""
    cloud, store, api = ha
    creates = Creates(api, "worker", interval_s=0.1)
    creates.start()
    time.sleep(0.6)
    started = time.monotonic()
    cloud.procs.kill("worker")
    figures = {"killed": "worker (1 of 2)", **creates.finish()}
    figures.update(settle_all_active(store, started))
    cloud.start_worker()
    record("worker_kill", figures)
    delete_everything(api, store)


def leader_pids(store) -> dict[str, int]:
    """Lock name -> pid of the replica that holds it."""
    holders = {name: (store.get(keys.leader(name)) or None) for name in ("reconciler", "scaling")}
    return {name: int(r.value["holder"].split(":")[1]) for name, r in holders.items() if r}


def test_leader_replica_killed(ha):
    """kill -9 of the replica that holds the reconciler's lock: the other
    replica takes it (and every lock the dead one held) within the lease's TTL
    (leader_lease_s, 4 s here) plus a tick; meanwhile creates go on, and every
    instance ends ACTIVE."""
    cloud, store, api = ha
    from localcloud.processes import wait_until
    wait_until(lambda: len(leader_pids(store)) == 2, 30, "both leader locks held")
    replicas = {cloud.procs.pid(name): name for name, _, _ in cloud.api_replica_ports()}
    held = leader_pids(store)
    assert set(held.values()) <= set(replicas), (held, replicas)
    victim = replicas[held["reconciler"]]
    creates = Creates(api, "leader")
    creates.start()
    time.sleep(0.5)
    started = time.monotonic()
    cloud.procs.kill(victim)
    moving = [name for name, pid in held.items() if pid == held["reconciler"]]
    takeover: dict[str, float] = {}
    while len(takeover) < len(moving) and time.monotonic() - started < 30:
        for name, pid in leader_pids(store).items():
            if name in moving and name not in takeover and pid != held[name]:
                assert replicas.get(pid) not in (None, victim)
                takeover[name] = round(time.monotonic() - started, 1)
        time.sleep(0.1)
    figures = {"killed": f"{victim} (reconciler leader)", "held": moving,
        **{f"takeover_{name}_s": s for name, s in takeover.items()}, **creates.finish()}
    assert takeover.get("reconciler") is not None and \
        takeover["reconciler"] < HA_SETTINGS["leader_lease_s"] + 2, figures
    figures.update(settle_all_active(store, started))
    cloud.start_api()
    record("leader_kill", figures)
    delete_everything(api, store)
