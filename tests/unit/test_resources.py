"""Resources as data, on the in-memory store: providers of any kind and classes,
one consumer's shares of several providers claimed all or none, quotas on any
named resource, a scheduler table that grows a column per class, and records
written before any of this read as they were meant."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from control.config import ControlConfig
from control.errors import Conflict, NotFound, ResourceExhausted
from control.identity.quotas import Quotas, QuotaValues, exceeded
from control.models import Allocation, Host, Resources
from control.placement.allocations import InventoryItem, Placement, Provider
from control.placement.scheduler import HostTable, Request
from control.resources import ADDRESS_POOL, COMPUTE_HOST, quota_of
from control.store import keys
from control.store.etcd import Txn
from control.store.memory import MemoryStore

CONFIG = ControlConfig(reserved_host_memory_mb=0, reserved_host_disk_gb=0, cpu_allocation_ratio=1.0,
                       ram_allocation_ratio=1.0, disk_allocation_ratio=1.0)
SMALL = Resources(vcpus=1, memory_mb=256, disk_gb=0)


@pytest.fixture
def store():
    store = MemoryStore()
    yield store
    store.close()


@pytest.fixture
def placement(store):
    placement = Placement(store, CONFIG)
    placement.report_inventory("host-a", Resources(vcpus=4, memory_mb=1024, disk_gb=10))
    placement.put_provider("pool-a", ADDRESS_POOL, {"IPV4_ADDRESS": InventoryItem(total=2)})
    return placement


def usage(placement, name) -> dict[str, int]:
    return placement.provider(name)[0].usage


def instance_with_address(consumer: str) -> Allocation:
    return Allocation(instance_id=consumer, project="p", host="host-a", resources=SMALL,
                      others={"pool-a": {"IPV4_ADDRESS": 1}})


# ---------------------------------------------------------------- several providers, one consumer

def test_one_consumer_claims_a_host_and_an_address_pool_all_or_none(placement):
    assert placement.claim_all(instance_with_address("one"))
    assert placement.claim_all(instance_with_address("two"))
    assert usage(placement, "host-a") == {"VCPU": 2, "MEMORY_MB": 512, "DISK_GB": 0}
    assert usage(placement, "pool-a") == {"IPV4_ADDRESS": 2}

    # The host has room for a third, the pool has not: nothing is claimed anywhere.
    with pytest.raises(ResourceExhausted, match="address-pool pool-a lacks IPV4_ADDRESS: free 0, asked 1"):
        placement.claim_all(instance_with_address("three"))
    assert placement.allocation("three") is None
    assert usage(placement, "host-a") == {"VCPU": 2, "MEMORY_MB": 512, "DISK_GB": 0}

    placement.release("one")
    placement.release("one")  # twice is harmless
    assert usage(placement, "host-a") == {"VCPU": 1, "MEMORY_MB": 256, "DISK_GB": 0}
    assert usage(placement, "pool-a") == {"IPV4_ADDRESS": 1}
    assert placement.claim_all(instance_with_address("three"))
    assert placement.claim_all(instance_with_address("three"))  # idempotent
    assert usage(placement, "pool-a") == {"IPV4_ADDRESS": 2}


def test_a_consumer_of_pools_only_and_an_unknown_provider(placement):
    floating = Allocation(instance_id="fip-1", project="p", others={"pool-a": {"IPV4_ADDRESS": 1}})
    assert placement.claim_all(floating)
    assert placement.allocation("fip-1").by_provider() == {"pool-a": {"IPV4_ADDRESS": 1}}
    with pytest.raises(NotFound):
        placement.claim_all(Allocation(instance_id="x", project="p", others={"nowhere": {"X": 1}}))
    placement.release("fip-1")
    assert usage(placement, "pool-a") == {"IPV4_ADDRESS": 0}


def test_racing_consumers_never_overcommit_any_provider(placement):
    results: list[bool] = []
    start = threading.Barrier(8)

    def claim(i: int) -> None:
        start.wait()
        try:
            results.append(placement.claim_all(instance_with_address(f"c{i}")))
        except ResourceExhausted:
            results.append(False)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 2  # the pool's two addresses
    assert usage(placement, "pool-a") == {"IPV4_ADDRESS": 2}
    assert usage(placement, "host-a")["VCPU"] == 2


def test_the_instance_path_keeps_its_one_host_share(placement):
    allocation = Allocation(instance_id="vm", project="p", host="", resources=SMALL)
    assert placement.claim("host-a", allocation)
    assert placement.allocation("vm").by_provider() == {"host-a": {"VCPU": 1, "MEMORY_MB": 256,
                                                                   "DISK_GB": 0}}
    assert placement.usage("host-a") == SMALL
    placement.release("vm")
    assert placement.usage("host-a") == Resources()


def test_a_provider_keeps_its_kind(placement):
    with pytest.raises(Conflict, match="is a address-pool"):
        placement.report_inventory("pool-a", Resources(vcpus=1))
    assert placement.provider("host-a")[0].kind == COMPUTE_HOST


# ---------------------------------------------------------------- quotas by name

@pytest.fixture
def quotas(store):
    store.put(keys.project("p"), {"name": "p"})
    return Quotas(store, QuotaValues(**{"instances": 10, "vcpus": 20, "memory_mb": 51200, "disk_gb": 1000}))


def claim(store, quotas, ask: QuotaValues) -> None:
    txn = Txn()
    quotas.claim_into(txn, "p", ask)
    assert store.commit(txn)


def release(store, quotas, held: QuotaValues) -> None:
    txn = Txn()
    quotas.release_into(txn, "p", held)
    assert store.commit(txn)


def test_any_named_resource_gets_a_limit_and_is_charged_through_the_same_functions(store, quotas):
    quotas.set_limits("p", {"networks": 2})
    assert quotas.limits("p").get("networks") == 2
    assert quotas.limits("p").vcpus == 20  # the default, untouched
    network = QuotaValues(resources={"networks": 1})
    claim(store, quotas, network)
    claim(store, quotas, network)
    with pytest.raises(ResourceExhausted, match="quota exceeded for networks in project p: "
                                                "limit 2, in use 2, asked 1"):
        claim(store, quotas, network)
    claim(store, quotas, QuotaValues.of(SMALL))  # instances are counted beside
    assert quotas.usage("p") == QuotaValues(resources={"networks": 2, "instances": 1, "vcpus": 1,
                                                       "memory_mb": 256})
    release(store, quotas, network)
    assert quotas.usage("p").get("networks") == 1
    # A name with no limit anywhere is unlimited.
    claim(store, quotas, QuotaValues(resources={"security_groups": 1000}))


def test_resource_classes_charge_their_quotas():
    assert QuotaValues.charge({"IPV4_ADDRESS": 2, "VCPU": 1}) == QuotaValues(
        resources={"floating_ips": 2, "vcpus": 1})
    assert quota_of("VOLUME_GB") == "volume_gb"  # a class nobody registered


def test_instance_quotas_are_checked_as_before():
    limits = QuotaValues(instances=1, vcpus=-1, memory_mb=-1, disk_gb=-1)
    assert exceeded("p", limits, QuotaValues(instances=1), QuotaValues.of(SMALL)) == (
        "quota exceeded for instances in project p: limit 1, in use 1, asked 1")
    assert exceeded("p", limits, QuotaValues(), QuotaValues.of(SMALL)) is None


# ---------------------------------------------------------------- records in the old shapes

def test_old_quota_usage_and_limits_records_read_as_they_were(store, quotas):
    # Before named quotas: usage was every field, limits only the overridden ones.
    store.put(keys.quota_usage("p"), {"instances": 2, "vcpus": 3, "memory_mb": 512, "disk_gb": 2})
    store.put(keys.quota_limits("p"), {"vcpus": 8, "instances": -1})
    assert quotas.usage("p") == QuotaValues(resources={"instances": 2, "vcpus": 3, "memory_mb": 512,
                                                       "disk_gb": 2})
    limits = quotas.limits("p")
    assert (limits.instances, limits.vcpus, limits.memory_mb, limits.disk_gb) == (-1, 8, 51200, 1000)
    # Written back in the new shape, nothing lost.
    claim(store, quotas, QuotaValues.of(SMALL))
    quotas.set_limits("p", {"networks": 5})
    assert store.get(keys.quota_usage("p")).value == {"resources": {
        "instances": 3, "vcpus": 4, "memory_mb": 768, "disk_gb": 2}}
    assert store.get(keys.quota_limits("p")).value == {"resources": {
        "vcpus": 8, "instances": -1, "networks": 5}}


def test_old_provider_and_allocation_records_read_as_they_were():
    provider = Provider(**{"host": "h1", "inventory": {
        "VCPU": {"total": 4, "reserved": 0, "allocation_ratio": 4.0}},
        "usage": {"VCPU": 2, "MEMORY_MB": 0, "DISK_GB": 0}, "overridden": {}})
    assert provider.kind == COMPUTE_HOST and provider.free("VCPU") == 14
    allocation = Allocation(**{"instance_id": "i1", "project": "p", "host": "h1",
                               "resources": {"vcpus": 2, "memory_mb": 512, "disk_gb": 1}})
    assert allocation.by_provider() == {"h1": {"VCPU": 2, "MEMORY_MB": 512, "DISK_GB": 1}}
    assert allocation.model_dump()["host"] == "h1"  # the instance path's fields stay


# ---------------------------------------------------------------- the scheduler's table

def add_host(store, placement, name: str, extra: dict[str, int] | None = None) -> None:
    store.put(keys.host(name), Host(name=name, address="127.0.0.1:1", last_heartbeat=time.time(),
                                    inventory=Resources(vcpus=4, memory_mb=1024, disk_gb=10)).model_dump())
    placement.report_inventory(name, Resources(vcpus=4, memory_mb=1024, disk_gb=10))
    if extra:
        placement.put_provider(name, COMPUTE_HOST, {rc: InventoryItem(total=n) for rc, n in extra.items()})


def test_the_table_grows_a_column_per_class_and_skips_pools(store, placement):
    add_host(store, placement, "plain")
    table = HostTable(store)
    table.start()
    assert table.classes == ["VCPU", "MEMORY_MB", "DISK_GB"]
    add_host(store, placement, "gpu", {"VGPU": 2})
    table.reread()
    assert table.classes == ["VCPU", "MEMORY_MB", "DISK_GB", "VGPU"]
    assert "pool-a" not in table.names  # an address pool is no host

    rng = np.random.default_rng(1)
    wants_gpu = Request(need=SMALL, what="flavor gpu", extra={"VGPU": 1})
    decision = table.select(wants_gpu, 60.0, "spread", rng)
    assert decision.hosts == ["gpu"]
    assert "lacked VGPU" in decision.summary
    assert "host-a" not in decision.hosts  # no host record: not reporting
    assert table.slots(wants_gpu, 60.0) == {"gpu": 2, "plain": 0}

    # A class no host has: nothing fits, and the reason says which.
    decision = table.select(Request(need=SMALL, what="flavor fpga", extra={"FPGA": 1}), 60.0, "spread", rng)
    assert decision.hosts == []
    assert "2 lacked FPGA" in decision.summary
