"""Placement and scheduling on real etcd: racing claims never overcommit a host,
filters and weighers choose as documented, and refusals say why."""

import threading
import time
import uuid

import pytest

from control.config import ControlConfig
from control.errors import ResourceExhausted
from control.models import Allocation, Host, Resources
from control.placement.allocations import InventoryItem, Placement
from control.placement.scheduler import Request, Scheduler
from control.resources import ADDRESS_POOL
from control.store import keys
from control.store.etcd import Txn

CONFIG = ControlConfig(reserved_host_memory_mb=512, cpu_allocation_ratio=4.0, ram_allocation_ratio=1.0)
TINY = Resources(vcpus=1, memory_mb=256, disk_gb=1)


@pytest.fixture
def placement(store):
    return Placement(store, CONFIG)


@pytest.fixture
def zone():
    """A zone of its own, so other tests' hosts never count."""
    return f"z-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def make_host(store, placement, zone):
    made = []

    def make(memory_mb=512 + 5 * 256, vcpus=8, **attributes):
        name = f"fake-{uuid.uuid4().hex[:8]}"
        host = Host(name=name, address="127.0.0.1:1", zone=zone,
                    inventory=Resources(vcpus=vcpus, memory_mb=memory_mb, disk_gb=100), **attributes)
        store.put(keys.host(name), host.model_dump())
        placement.report_inventory(name, host.inventory)
        made.append(name)
        return name

    yield make
    txn = Txn()
    for name in made:
        txn.delete(keys.host(name)).delete(keys.provider(name))
    store.commit(txn)


def tiny(host_name="") -> Allocation:
    return Allocation(instance_id=str(uuid.uuid4()), project="p", host=host_name, resources=TINY)


def request(zone, **changes) -> Request:
    return Request(**{"need": TINY, "what": "flavor tiny", "zone": zone, **changes})


def test_racing_claims_never_overcommit(placement, make_host):
    host = make_host()  # room for exactly five tiny instances
    results: list[bool] = []
    allocations = [tiny(host) for _ in range(20)]
    start = threading.Barrier(len(allocations))

    def claim(allocation):
        start.wait()
        results.append(placement.claim(host, allocation))

    threads = [threading.Thread(target=claim, args=(a,)) for a in allocations]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 5
    assert placement.usage(host) == Resources(vcpus=5, memory_mb=1280, disk_gb=5)
    for allocation in allocations:
        placement.release(allocation.instance_id)
        placement.release(allocation.instance_id)  # twice is harmless
    assert placement.usage(host) == Resources()


def test_claim_is_idempotent_per_instance(placement, make_host):
    host = make_host()
    allocation = tiny(host)
    assert placement.claim(host, allocation)
    assert placement.claim(host, allocation)
    assert placement.usage(host).memory_mb == 256
    placement.release(allocation.instance_id)


def test_scheduler_racing_across_hosts_never_overcommits(store, placement, make_host, zone):
    hosts = [make_host() for _ in range(3)]  # 15 slots in all
    scheduler = Scheduler(store, CONFIG, placement)
    placed: list[str] = []
    refused: list[str] = []

    def one():
        try:
            placed.append(scheduler.schedule(tiny(), request(zone)))
        except ResourceExhausted as exc:
            refused.append(str(exc))

    threads = [threading.Thread(target=one) for _ in range(25)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(placed) == 15 and len(refused) == 10
    assert all(placed.count(h) == 5 for h in hosts)
    assert all("lacked MEMORY_MB" in r for r in refused)


def test_no_host_says_why_per_filter(store, placement, make_host, zone):
    make_host()
    make_host(enabled=False)
    make_host(last_heartbeat=time.time() - 3600)
    make_host(memory_mb=600)
    scheduler = Scheduler(store, CONFIG, placement)
    with pytest.raises(ResourceExhausted) as info:
        scheduler.schedule(tiny(), request(zone, need=Resources(vcpus=1, memory_mb=2048, disk_gb=1),
                                           what="flavor large"))
    message = str(info.value)
    assert message.startswith("no host for flavor large: ")
    assert "2 lacked MEMORY_MB" in message and "1 disabled" in message and "1 down" in message
    assert "not in zone" in message  # every other host of the cloud


def test_traits_zone_and_exclusion(store, placement, make_host, zone):
    plain = make_host()
    ssd = make_host(traits=["ssd"])
    gpu = make_host(traits=["ssd", "gpu"])
    scheduler = Scheduler(store, CONFIG, placement)
    assert set(scheduler.preview(request(zone, required_traits=frozenset({"ssd"}))).hosts) == {ssd, gpu}
    assert scheduler.preview(request(zone, required_traits=frozenset({"ssd"}),
                                     forbidden_traits=frozenset({"gpu"}))).hosts == [ssd]
    assert set(scheduler.preview(request(zone, exclude_hosts=frozenset({plain}))).hosts) == {ssd, gpu}
    assert scheduler.preview(request(f"{zone}-other")).hosts == []


def test_spread_and_pack(store, placement, make_host, zone):
    busy, idle = make_host(), make_host()
    assert placement.claim(busy, tiny(busy))
    spread = Scheduler(store, CONFIG, placement)
    pack = Scheduler(store, CONFIG.model_copy(update={"scheduler_weigher": "pack"}), placement)
    for _ in range(5):
        assert spread.preview(request(zone)).hosts[0] == idle
        assert pack.preview(request(zone)).hosts[0] == busy


def test_ties_are_broken_at_random(store, placement, make_host, zone):
    hosts = {make_host() for _ in range(4)}
    scheduler = Scheduler(store, CONFIG, placement)
    firsts = {scheduler.preview(request(zone)).hosts[0] for _ in range(40)}
    assert len(firsts) > 1 and firsts <= hosts


def test_anti_affinity_and_affinity(store, placement, make_host, zone):
    a, b = make_host(), make_host()
    scheduler = Scheduler(store, CONFIG, placement)
    decision = scheduler.preview(request(zone, group_policy="anti-affinity", group_hosts=(a,)))
    assert decision.hosts == [b]
    decision = scheduler.preview(request(zone, group_policy="anti-affinity", group_hosts=(a, b)))
    assert decision.hosts == [] and "2 held a member of its anti-affinity group" in decision.summary
    assert scheduler.preview(request(zone, group_policy="affinity", group_hosts=(b,))).hosts == [b]
    assert scheduler.preview(request(zone, group_policy="soft-anti-affinity",
                                     group_hosts=(a,))).hosts[0] == b


def test_admin_overrides_survive_agent_reports(placement, make_host):
    host = make_host(memory_mb=8192)
    placement.set_inventory(host, "MEMORY_MB", reserved=1024, allocation_ratio=1.5)
    placement.report_inventory(host, Resources(vcpus=8, memory_mb=8192, disk_gb=100))
    provider, _ = placement.provider(host)
    assert provider.inventory["MEMORY_MB"].reserved == 1024
    assert provider.capacity("MEMORY_MB") == int((8192 - 1024) * 1.5)


def test_free_slots(store, placement, make_host, zone):
    host = make_host()
    scheduler = Scheduler(store, CONFIG, placement)
    assert scheduler.free_slots(request(zone)) == {host: 5}
    assert scheduler.free_slots(request(zone, required_traits=frozenset({"gpu"}))) == {}


def test_one_consumer_holds_a_host_and_an_address_pool_all_or_none(store, placement, make_host, zone):
    """Shares of a compute host (VCPU, MEMORY_MB, ...) and of an address pool,
    claimed in one transaction by racing consumers: no provider is overcommitted,
    and a consumer the pool has no address for holds nothing on the host either."""
    host = make_host()  # room for five tiny instances
    pool = f"pool-{uuid.uuid4().hex[:8]}"
    placement.put_provider(pool, ADDRESS_POOL, {"IPV4_ADDRESS": InventoryItem(total=3)})
    consumers = [tiny(host).model_copy(update={"others": {pool: {"IPV4_ADDRESS": 1}}})
                 for _ in range(10)]
    results: list[str] = []
    start = threading.Barrier(len(consumers))

    def claim(allocation):
        start.wait()
        try:
            results.append("claimed" if placement.claim_all(allocation) else "held otherwise")
        except ResourceExhausted as exc:
            results.append(str(exc))

    threads = [threading.Thread(target=claim, args=(a,)) for a in consumers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert results.count("claimed") == 3
        assert results.count(f"address-pool {pool} lacks IPV4_ADDRESS: free 0, asked 1") == 7
        assert placement.usage(host) == Resources(vcpus=3, memory_mb=768, disk_gb=3)
        assert placement.provider(pool)[0].usage == {"IPV4_ADDRESS": 3}
        held = [a for a in consumers if placement.allocation(a.instance_id) is not None]
        assert all(placement.allocation(a.instance_id).by_provider() == a.by_provider() for a in held)
        for allocation in consumers:
            placement.release(allocation.instance_id)
        assert placement.usage(host) == Resources()
        assert placement.provider(pool)[0].usage == {"IPV4_ADDRESS": 0}
    finally:
        store.commit(Txn().delete(keys.provider(pool)))


def test_racing_claims_on_a_pool_alone_never_overcommit_it(store, placement):
    """Consumers that hold no host (e.g. floating IPs) race on the pool's own compare-and-swap."""
    pool = f"pool-{uuid.uuid4().hex[:8]}"
    placement.put_provider(pool, ADDRESS_POOL, {"IPV4_ADDRESS": InventoryItem(total=3)})
    consumers = [Allocation(instance_id=str(uuid.uuid4()), project="p", others={pool: {"IPV4_ADDRESS": 1}})
                 for _ in range(12)]
    results: list[bool] = []
    start = threading.Barrier(len(consumers))

    def claim(allocation):
        start.wait()
        try:
            results.append(placement.claim_all(allocation))
        except ResourceExhausted:
            results.append(False)

    threads = [threading.Thread(target=claim, args=(a,)) for a in consumers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert results.count(True) == 3
        assert placement.provider(pool)[0].usage == {"IPV4_ADDRESS": 3}
        for allocation in consumers:
            placement.release(allocation.instance_id)
        assert placement.provider(pool)[0].usage == {"IPV4_ADDRESS": 0}
    finally:
        store.commit(Txn().delete(keys.provider(pool)))
