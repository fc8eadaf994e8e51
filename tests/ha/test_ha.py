"""High availability of the control plane (issue 9): one cloud with an etcd
cluster of 3 members, 2 API replicas and 2 Celery workers (fake-driver agent).
Each test kills (-9) one piece while instances are being created, through a
client given both API replicas: the cloud keeps accepting creates, each within
a bound close to the outage measured, and every instance reaches ACTIVE (and
the books balance: tests/faults/checks.py); probes calling the API (and etcd)
every 50 ms through the fault see no error, or only the errors the scenario
allows (named), and no gap between successful calls above a measured bound.
The figures (stalls, failover and takeover times) are printed (`pytest -s`)
and kept in test-output/ha.json."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from control.store import keys
from control.store.etcd import Store
from tests.conftest import login, start_cloud, stop_cloud, until
from tests.faults.checks import delete_everything, unlimited
from tests.ha.helpers import (
    HA_SETTINGS,
    Creates,
    Probe,
    api_probe,
    assert_probe,
    record,
    settle_all_active,
)


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


@pytest.fixture(autouse=True)
def whole_again(ha):
    """After each test, passed or failed: every piece killed is running again
    and no instance is left, so one failure does not fail the tests after it
    (they count every instance in the cloud)."""
    yield
    cloud, store, api = ha
    cloud.start_etcd()
    cloud.start_api()
    cloud.start_worker()
    delete_everything(api, store, timeout_s=10)  # measured 0.4-0.7 s after a passing test


def etcd_status(cloud) -> list[dict]:
    out = subprocess.run(["etcdctl", "--endpoints", ",".join(cloud.etcd_endpoints),
                          "endpoint", "status", "-w", "json"],
                         capture_output=True, text=True, timeout=20)
    return json.loads(out.stdout or "[]")


def test_etcd_member_killed(ha):
    """kill -9 of the etcd leader during creates: calls on it fail over to the
    other members (after a new leader is elected); restarted with its data
    directory, it rejoins and catches up. The API's reads never fail; the
    store's own writes (transactions, not sent twice) may fail Unavailable
    during the election only."""
    cloud, store, api = ha
    status = etcd_status(cloud)
    leader = next(s for s in status if s["Status"]["leader"] == s["Status"]["header"]["member_id"])
    victim = next(name for name, port, _ in cloud.etcd_member_ports()
                  if leader["Endpoint"].endswith(f":{port}"))
    writer = Store(cloud.etcd_endpoints, timeout_s=3)
    write_probe = Probe(lambda: writer.put_if_absent(keys.PREFIX + f"/ha-probe/{time.monotonic()}",
                                                     {}))
    read_probe = api_probe(api)
    # Creates: slowest 0.9-1.5 s (measured; README 0.9 s), through the election.
    creates = Creates(api, "etcd", within_s=4)
    for thread in (write_probe, read_probe, creates):
        thread.start()
    creates.wait_accepted(3)
    started = time.monotonic()
    cloud.procs.kill(victim)
    creates.wait()
    writes = write_probe.finish(started)
    reads = read_probe.finish(started)
    figures = {"killed": f"{victim} (the raft leader)"}
    figures.update({f"store_write_{k}": v for k, v in writes.items()})
    figures.update({f"api_read_{k}": v for k, v in reads.items()})
    # Writes stalled 3.1-3.2 s (measured; README 3.2 s: one call timing out,
    # 3 s, during the election), 1-3 of them failing Unavailable then, the last
    # 3.0-3.15 s after the kill.
    assert_probe(writes, max_gap_s=8, allowed={"Unavailable"}, errors_within_s=8)
    # API reads: no error, at most 1.1-1.6 s apart (measured; README 1.2 s).
    assert_probe(reads, max_gap_s=4)
    figures.update(creates.finish())
    figures.update(settle_all_active(store, started, timeout_s=12))  # measured 4.1-4.5 s
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


def test_api_replica_killed(ha):
    """kill -9 of the API replica the client is connected to (the first listed):
    the client's channel moves to the other without an error the client sees;
    creates go on; agents' reports move too (their host is never judged down)."""
    cloud, store, api = ha
    probe = api_probe(api)
    # Slowest create 0.06-0.07 s (measured): pick_first moves at once. (1 s: 3x
    # the probes' worst gap, 0.3 s, on this loaded machine.)
    creates = Creates(api, "api", within_s=1)
    probe.start()
    creates.start()
    creates.wait_accepted(3)
    started = time.monotonic()
    cloud.procs.kill("api")
    creates.wait()
    client = probe.finish(started)
    figures = {"killed": "api (replica 1)", **{f"client_{k}": v for k, v in client.items()}}
    # No error; calls at most 0.07-0.3 s apart (measured: pick_first moved at
    # once; a gap is the 50 ms pace and one call on a loaded machine).
    assert_probe(client, max_gap_s=1)
    figures.update(creates.finish())
    figures.update(settle_all_active(store, started, timeout_s=10))  # measured 2.9-3.3 s
    from control.models import Host
    host = Host(**store.get(keys.host(cloud.host_name)).value)
    assert host.up and time.time() - host.last_heartbeat < 4, "heartbeats did not fail over"
    cloud.start_api()
    record("api_replica_kill", figures)


def test_worker_killed(ha):
    """kill -9 of one Celery worker during creates: the other takes the queue;
    builds the dead one held (unacknowledged, in Redis until the visibility
    timeout) are sent again by the reconciler (build_redrive_after_s, 4 s); the
    API never notices."""
    cloud, store, api = ha
    probe = api_probe(api)
    creates = Creates(api, "worker", within_s=1, interval_s=0.1)  # slowest 0.03-0.11 s (measured)
    probe.start()
    creates.start()
    creates.wait_accepted(3)
    started = time.monotonic()
    cloud.procs.kill("worker")
    creates.wait()
    client = probe.finish(started)
    figures = {"killed": "worker (1 of 2)", **{f"client_{k}": v for k, v in client.items()}}
    assert_probe(client, max_gap_s=1)  # no error; measured at most 0.06-0.11 s apart
    figures.update(creates.finish())
    assert figures["create_refused"] == 0, figures
    # Settled 3.9-4.6 s after the kill (measured; README 4.9 s): the held builds
    # re-sent after 4 s without progress; failing at the deadline takes 30 s.
    figures.update(settle_all_active(store, started, timeout_s=12))
    cloud.start_worker()
    record("worker_kill", figures)


def leader_pids(store) -> dict[str, int]:
    """Lock name -> pid of the replica that holds it."""
    holders = {name: (store.get(keys.leader(name)) or None) for name in ("reconciler", "scaling")}
    return {name: int(r.value["holder"].split(":")[1]) for name, r in holders.items() if r}


def test_leader_replica_killed(ha):
    """kill -9 of the replica that holds the reconciler's lock: the other
    replica takes it (and every lock the dead one held) within the lease's TTL
    (leader_lease_s, 4 s here) plus a tick; meanwhile creates go on, the API
    answers without error, and every instance ends ACTIVE."""
    cloud, store, api = ha
    until(lambda: len(leader_pids(store)) == 2, 5, "both leader locks held")  # measured 0.01 s
    replicas = {cloud.procs.pid(name): name for name, _, _ in cloud.api_replica_ports()}
    held = leader_pids(store)
    assert set(held.values()) <= set(replicas), (held, replicas)
    victim = replicas[held["reconciler"]]
    probe = api_probe(api)
    creates = Creates(api, "leader", within_s=1)  # slowest 0.07-0.1 s (measured)
    probe.start()
    creates.start()
    creates.wait_accepted(3)
    started = time.monotonic()
    cloud.procs.kill(victim)
    moving = [name for name, pid in held.items() if pid == held["reconciler"]]
    takeover: dict[str, float] = {}

    def taken_over() -> bool:
        for name, pid in leader_pids(store).items():
            if name in moving and name not in takeover and pid != held[name]:
                assert replicas.get(pid) not in (None, victim)
                takeover[name] = round(time.monotonic() - started, 1)
        return len(takeover) == len(moving)

    # Taken over 4.2-4.8 s after the kill (measured): the lease's 4 s TTL, then
    # the next tick (1 s).
    until(taken_over, HA_SETTINGS["leader_lease_s"] + 2, f"the other replica taking {moving}")
    creates.wait()
    client = probe.finish(started)
    figures = {"killed": f"{victim} (reconciler leader)", "held": moving,
               **{f"takeover_{name}_s": s for name, s in takeover.items()},
               **{f"client_{k}": v for k, v in client.items()}}
    assert_probe(client, max_gap_s=1)  # no error; measured at most 0.08-0.26 s apart
    figures.update(creates.finish())
    figures.update(settle_all_active(store, started, timeout_s=12))  # measured 4.3-4.9 s
    cloud.start_api()
    record("leader_kill", figures)
