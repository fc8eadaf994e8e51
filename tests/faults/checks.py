"""What every fault test checks once the fault is over: within the test's own
bound (close to what it measured) every instance is ACTIVE or ERROR (none in
BUILD or DELETING), no domain runs that no instance owns, and allocations,
host usage and quota usage equal exactly what the live instances hold. Read
straight from etcd (and libvirt), independently of the reconciler's own code.
Which of ACTIVE or ERROR each instance must end in is the test's to assert
(`outcome`)."""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor

import grpc
from cloudapi.v1 import compute_pb2 as pb

from control.compute.states import TaskState, VmState
from control.identity.quotas import FIELDS as INSTANCE_QUOTAS
from control.models import Allocation, Instance
from control.placement.allocations import Provider
from control.store import keys
from tests.conftest import until

# Knobs the fault clouds share: the reconciler every second, short deadlines.
FAULT_SETTINGS = {
    "reconcile_interval_s": 1, "host_down_after_s": 4, "orphan_grace_s": 5,
    "build_deadline_s": 15, "delete_deadline_s": 15, "stop_timeout_s": 5,
}


def unlimited(cloud) -> None:
    """No quota limit for the demo project: the tests boot many instances."""
    from cloudapi.v1 import identity_pb2 as ipb

    cloud.client("admin").quotas.SetQuota(ipb.SetQuotaRequest(
        project="demo", instances=-1, vcpus=-1, memory_mb=-1, disk_gb=-1))


def all_instances(store) -> list[Instance]:
    projects = {r.value["project"] for r in store.list(keys.instance_indexes())}
    return [Instance(**r.value) for p in sorted(projects) for r in store.list(keys.instances(p))]


def definite(instance: Instance) -> bool:
    return instance.vm_state in (VmState.ACTIVE, VmState.ERROR) and \
        instance.task_state is TaskState.NONE


def claims_problems(store) -> list[str]:
    """Every way allocations, host usage or quota usage differ from what the
    live (not ERROR) instances hold; [] when they agree."""
    problems = []
    instances = {i.id: i for i in all_instances(store)}
    live = {i.id: i for i in instances.values() if i.vm_state is not VmState.ERROR}
    allocations = {a.instance_id: a for a in (Allocation(**r.value)
                                              for r in store.list(keys.allocations()))}
    for instance_id, allocation in allocations.items():
        instance = live.get(instance_id)
        if instance is None:
            problems.append(f"allocation of {instance_id} on {allocation.host}: no live instance")
        elif (allocation.host, allocation.resources) != (instance.host, instance.resources):
            problems.append(f"allocation of {instance_id} is {allocation.host} "
                            f"{allocation.resources}, instance {instance.host} {instance.resources}")
    for instance_id, instance in live.items():
        if instance.host and instance_id not in allocations:
            problems.append(f"instance {instance_id} on {instance.host} holds no allocation")
    sums: dict[str, Counter] = defaultdict(Counter)
    for allocation in allocations.values():
        for name, share in allocation.by_provider().items():
            sums[name].update(share)
    for record in store.list(keys.providers()):
        provider = Provider(**record.value)
        classes = sorted({*provider.inventory, *provider.usage, *sums[provider.host]})
        want = {rc: sums[provider.host][rc] for rc in classes}
        have = {rc: provider.usage.get(rc, 0) for rc in classes}
        if want != have:
            problems.append(f"{provider.kind} {provider.host} usage {have}, allocations hold {want}")
    quota: dict[str, Counter] = defaultdict(Counter)
    for instance in live.values():
        r = instance.resources
        quota[instance.project].update(instances=1, vcpus=r.vcpus, memory_mb=r.memory_mb,
                                       disk_gb=r.disk_gb)
    for record in store.list(keys.quota_usages()):
        project = record.key.rsplit("/", 1)[1]
        stored = record.value.get("resources", record.value)  # named quotas: {"resources": {...}}
        # Only the instance quotas: others (floating_ips, ...) are held by other things.
        have = {k: v for k, v in stored.items() if v and k in INSTANCE_QUOTAS}
        want = {k: v for k, v in quota.pop(project, Counter()).items() if v}
        if have != want:
            problems.append(f"project {project} quota usage {have}, instances hold {want}")
    for project, want in quota.items():
        problems.append(f"project {project} has no quota usage, instances hold {dict(want)}")
    return problems


def libvirt_domains(host_name: str) -> set[str]:
    """Ids of the libvirt domains whose metadata names `host_name` as owner."""
    from compute_agent.libvirt_driver import LibvirtDriver

    driver = LibvirtDriver("qemu:///system", "/nonexistent", host_name)
    return {o.instance_id for o in driver.list_instances()}


def domain_problems(store, host_name: str) -> list[str]:
    owned = {i.id for i in all_instances(store)
             if i.host == host_name and i.vm_state is not VmState.ERROR}
    return [f"domain {d} on {host_name}: no live instance owns it"
            for d in sorted(libvirt_domains(host_name) - owned)]


def settle(store, started: float, timeout_s: float, host_name: str = "") -> dict:
    """Wait (up to timeout_s from `started`, the moment of the fault: each
    caller states its measured figure beside its bound) for every instance to
    be definite and the books to balance; with host_name, for no libvirt domain
    there to be unowned too. Returns the figures; raises with what is still
    wrong at the deadline."""
    deadline = started + timeout_s
    definite_at = None
    while True:
        instances = all_instances(store)
        pending = [f"{i.id} {i.vm_state.value}/{i.task_state.value}"
                   for i in instances if not definite(i)]
        if not pending and definite_at is None:
            definite_at = time.monotonic()
        problems = pending or claims_problems(store)
        if not problems and host_name:
            problems = domain_problems(store, host_name)
        if not problems:
            states = Counter(i.vm_state.value for i in instances)
            return {"recovered_s": round((definite_at or time.monotonic()) - started, 1),
                    "balanced_s": round(time.monotonic() - started, 1),
                    "active": states.get("active", 0), "error": states.get("error", 0),
                    "faults": sorted({(i.fault.phase, i.fault.message[:90]) for i in instances
                                      if i.fault and i.vm_state is VmState.ERROR})}
        if time.monotonic() > deadline:
            raise AssertionError(f"not settled {timeout_s:.0f}s after the fault: {problems[:10]}")
        time.sleep(0.2)  # the poll of this condition wait


def outcome(store, ids: list[str]) -> tuple[list[Instance], list[Instance]]:
    """The instances of `ids`: (those ACTIVE, those in ERROR)."""
    instances = [i for i in all_instances(store) if i.id in set(ids)]
    return ([i for i in instances if i.vm_state is VmState.ACTIVE],
            [i for i in instances if i.vm_state is VmState.ERROR])


def fault_of(instance: Instance) -> str:
    return f"{instance.id} {instance.fault.phase}: {instance.fault.message}" if instance.fault \
        else f"{instance.id}: no fault recorded"


def create_many(client, count: int, prefix: str, flavor: str = "tiny") -> list[str]:
    """`count` creates at once, each with a request id; returns the ids accepted.
    A create refused (UNAVAILABLE while a backend is down) is retried with the
    same request id until accepted, so it is never made twice."""
    def one(n: int) -> str:
        request = pb.CreateInstanceRequest(name=f"{prefix}-{n}", flavor=flavor,
                                           request_id=f"{prefix}-{n}")
        for _ in range(60):
            try:
                return client.instances.CreateInstance(request, timeout=30).id
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
                time.sleep(0.5)  # the pace of the retries, not a wait for something
        raise AssertionError(f"create {prefix}-{n} never accepted")

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


def delete_everything(client, store, timeout_s: float) -> float:
    """Delete every instance and wait (up to timeout_s: the caller states what
    it measured) until none is left; returns the seconds that took."""
    started = time.monotonic()
    for instance in all_instances(store):
        try:
            client.instances.DeleteInstance(pb.DeleteInstanceRequest(id_or_name=instance.id))
        except grpc.RpcError as exc:
            if exc.code() not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION):
                raise

    def left() -> str:
        return "every instance deleted; left: " + str(
            [(i.id, i.vm_state.value, i.task_state.value, i.host) for i in all_instances(store)])

    until(lambda: not all_instances(store), timeout_s, left, every_s=0.2)
    seconds = round(time.monotonic() - started, 1)
    print(f"deleted everything in {seconds} s")
    return seconds


def wait_phase(store, ids: list[str], done: int, timeout_s: float) -> None:
    """Until at least `done` of `ids` are ACTIVE (the fault hits mid-way);
    fails the test after timeout_s (the caller states what it measured)."""
    started = time.monotonic()
    until(lambda: sum(1 for i in all_instances(store) if i.id in ids
                      and i.vm_state is VmState.ACTIVE) >= done, timeout_s,
          f"{done} of {len(ids)} instances ACTIVE before the fault")
    print(f"{done} of {len(ids)} ACTIVE in {time.monotonic() - started:.1f} s; the fault now")
