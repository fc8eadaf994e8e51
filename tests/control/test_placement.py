"""Claims on real etcd: racing claims never overcommit a host."""

import threading
import time
import uuid

import pytest

from control import keys
from control.config import ControlConfig
from control.errors import ResourceExhausted
from control.models import Allocation, Host, Resources
from control.placement import Placement


@pytest.fixture
def placement(store):
    return Placement(store, ControlConfig(reserved_host_memory_mb=512, cpu_allocation_ratio=4.0))


@pytest.fixture
def small_host(store):
    """A host with room for exactly five 256 MiB instances."""
    host = Host(name=f"fake-{uuid.uuid4().hex[:8]}", address="127.0.0.1:1",
                inventory=Resources(vcpus=8, memory_mb=512 + 5 * 256, disk_gb=100))
    store.put(keys.host(host.name), host.model_dump())
    yield host
    store.commit(store_txn_delete(host.name))


def store_txn_delete(name):
    from control.store import Txn
    return Txn().delete(keys.host(name)).delete(keys.host_usage(name))


def tiny(host_name=""):
    return Allocation(instance_id=str(uuid.uuid4()), project="p", host=host_name,
                      resources=Resources(vcpus=1, memory_mb=256, disk_gb=1))


def test_racing_claims_never_overcommit(placement, small_host):
    results: list[bool] = []
    allocations = [tiny(small_host.name) for _ in range(20)]
    start = threading.Barrier(len(allocations))

    def claim(allocation):
        start.wait()
        results.append(placement.claim(small_host, allocation))

    threads = [threading.Thread(target=claim, args=(a,)) for a in allocations]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 5
    assert placement.usage(small_host.name) == Resources(vcpus=5, memory_mb=1280, disk_gb=5)

    for allocation in allocations:
        placement.release(allocation.instance_id)
        placement.release(allocation.instance_id)  # twice is harmless
    assert placement.usage(small_host.name) == Resources()


def test_claim_is_idempotent_per_instance(placement, small_host):
    allocation = tiny(small_host.name)
    assert placement.claim(small_host, allocation)
    assert placement.claim(small_host, allocation)
    assert placement.usage(small_host.name).memory_mb == 256
    placement.release(allocation.instance_id)


def test_no_host_says_why(placement, small_host):
    huge = Allocation(instance_id=str(uuid.uuid4()), project="p", host="",
                      resources=Resources(vcpus=1, memory_mb=10**9, disk_gb=1))
    with pytest.raises(ResourceExhausted) as info:
        placement.schedule(huge, "flavor huge")
    message = str(info.value)
    assert message.startswith("no host for flavor huge: ")
    assert "lacked MEMORY_MB" in message


def test_down_host_is_not_a_candidate(placement, store):
    name = f"fake-down-{uuid.uuid4().hex[:8]}"
    host = Host(name=name, address="127.0.0.1:1", last_heartbeat=time.time() - 3600,
                inventory=Resources(vcpus=8, memory_mb=8192, disk_gb=100))
    store.put(keys.host(name), host.model_dump())
    try:
        hosts, summary = placement.candidates(Resources(vcpus=1, memory_mb=1, disk_gb=1))
        assert name not in [h.name for h in hosts]
        assert "down" in summary
    finally:
        store.commit(store_txn_delete(name))
