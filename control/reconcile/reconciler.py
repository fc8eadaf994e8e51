"""The reconciler: compares what the control plane wants with what it observes,
and repairs the difference, so every instance ends in a definite state and
nothing is left behind whatever failed (a worker, an agent, Redis, etcd).

It runs in the API server, every `reconcile_interval_s` and at start, in one
replica at a time (control/store/leader.py). Each pass (`run_once`) reads the whole
state at one etcd revision and, with compare-and-swap writes only (so a pass
racing a task, or a second replica, changes nothing twice):

1. hosts: a host whose last heartbeat is older than `host_down_after_s` is
   marked down (`up: false` on its record: the scheduler skips it, the event
   stream says HOST_DOWN); its next heartbeat marks it up again.
2. deadlines: an instance in BUILD past its build deadline (from its last
   change), or building on a host that is down, goes to ERROR with a fault
   naming the phase (and host), and its quota and placement claims are given
   back in the same pass. A build stalled build_redrive_after_s (its task may
   be lost with Redis or held by a killed worker) has its task sent again, and
   again every as long while it makes no progress, until the deadline. A
   delete past its deadline is finished here if its host is down or gone
   (claims released, record removed; the guest, if the host returns, is a
   stray), otherwise its task is sent again. An operation
   (stop, start, reboot, scale, resize) past its deadline is undone with a
   fault, as a failed one is.
3. power drift: a guest that shut itself down (observed shutoff or crashed
   while ACTIVE with nothing in flight) becomes SHUTOFF; one observed running
   while SHUTOFF becomes ACTIVE. The instance follows the hypervisor (billing
   then bills what runs); each change is recorded as an action.
4. claims: placement allocations are checked against live instances (an
   allocation of an instance that is gone or in ERROR is released; an ACTIVE
   or SHUTOFF instance without one gets it back), and each host's usage is
   recomputed from its allocations. An allocation is only touched when the
   same difference was seen by the previous pass too: a task between its claim
   and its state change is not a drift.
5. quota: each project's usage is recomputed from its instances that hold
   quota. Usage and instances change in the same transactions, so one
   snapshot read is enough; the repair compares the usage record's revision.
6. strays: a domain a host reports (in its heartbeats) that no live instance on
   that host owns is destroyed through the agent once it has been there
   `orphan_grace_s`.

Every repair is logged with its numbers and counted in the pass's Report.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field

from control.compute import actions, records
from control.compute.lifecycle import undo_operation
from control.compute.states import Event, PowerState, TaskState, VmState
from control.errors import CloudError, Unavailable
from control.identity.quotas import FIELDS as INSTANCE_QUOTAS
from control.identity.quotas import QuotaValues
from control.models import Allocation, Fault, Host, Instance
from control.placement.allocations import Provider, added, amounts
from control.plane import ControlPlane
from control.queue import BUILD_INSTANCE, DELETE_INSTANCE
from control.store import keys
from control.store.etcd import Record, Txn
from control.store.leader import LeaderLoop

log = logging.getLogger(__name__)

LOCK_NAME = "reconciler"

BUILD_TASKS = (TaskState.SCHEDULING, TaskState.SPAWNING)
OPERATION_TASKS = (TaskState.POWERING_OFF, TaskState.POWERING_ON, TaskState.REBOOTING,
                   TaskState.SCALING, TaskState.RESIZING)
OFF = (PowerState.SHUTOFF, PowerState.CRASHED)


@dataclass
class Report:
    """What one pass found and did."""

    hosts_down: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)           # builds past deadline -> ERROR
    deletes_forced: list[str] = field(default_factory=list)
    deletes_resent: list[str] = field(default_factory=list)
    builds_redriven: list[str] = field(default_factory=list)  # stalled builds' tasks re-sent
    operations_undone: list[str] = field(default_factory=list)
    power_synced: list[str] = field(default_factory=list)
    allocations_released: list[str] = field(default_factory=list)
    allocations_restored: list[str] = field(default_factory=list)
    providers_fixed: list[str] = field(default_factory=list)
    quotas_fixed: list[str] = field(default_factory=list)
    strays_seen: list[str] = field(default_factory=list)
    strays_destroyed: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def repairs(self) -> int:
        return sum(len(v) for k, v in vars(self).items()
                   if isinstance(v, list) and k != "strays_seen")


def quota_held(instance: Instance) -> QuotaValues:
    """What an instance holds of its project's quota (a scale in flight has
    claimed its new sizes already)."""
    if not instance.quota_held:
        return QuotaValues()
    return QuotaValues.of(instance.scaling_to or instance.resources)


def holds_allocation(instance: Instance) -> bool | None:
    """Whether an instance must hold an allocation (True), must not (False), or
    may or may not, depending on where its task is (None)."""
    if instance.vm_state is VmState.ERROR:
        return False
    if instance.vm_state in (VmState.ACTIVE, VmState.STOPPED) and \
            instance.task_state is TaskState.NONE and instance.host:
        return True
    return None


@dataclass
class Snapshot:
    """The state the pass judges, read at one etcd revision."""

    revision: int
    instances: dict[str, tuple[Instance, Record]]
    hosts: dict[str, Host]
    allocations: dict[str, tuple[Allocation, Record]]
    providers: dict[str, tuple[Provider, Record]]
    usages: dict[str, Record]


class Reconciler:
    def __init__(self, plane: ControlPlane):
        from control.compute.tasks import InstanceWork  # tasks import the plane too

        self.plane = plane
        self.store = plane.store
        self.config = plane.config
        self.work = InstanceWork(plane)
        # Allocation drifts seen by the previous pass: key -> (what, revisions).
        self._suspects: dict[str, tuple[str, int, int]] = {}
        self._resent: dict[str, float] = {}  # instance id -> when its delete was last re-sent
        # Builds whose task was sent again: id -> (its updated_at then, when sent).
        self._redriven: dict[str, tuple[float, float]] = {}
        # Since when (monotonic) this reconciler has watched without a gap: hosts
        # are judged down only after host_down_after_s of it. Heartbeats cannot be
        # recorded while etcd (or the API) is down, so right after an outage, a
        # restart or a change of leader every host would look down.
        self._watching_since = 0.0
        self._last_pass = 0.0

    # ---------------------------------------------------------------- reading

    def snapshot(self) -> Snapshot:
        revision = self.store.revision()

        def at(prefix: str) -> list[Record]:
            return self.store.list_at_revision(prefix, revision)[0]

        projects = sorted({r.value["project"] for r in at(keys.instance_indexes())})
        instances: dict[str, tuple[Instance, Record]] = {}
        for project in projects:
            for record in at(keys.instances(project)):
                instance = Instance(**record.value)
                instances[instance.id] = (instance, record)
        hosts = {h.name: h for h in (Host(**r.value) for r in at(keys.hosts()))}
        allocations = {a.instance_id: (a, r) for r in at(keys.allocations())
                       for a in [Allocation(**r.value)]}
        providers = {p.host: (p, r) for r in at(keys.providers()) for p in [Provider(**r.value)]}
        usages = {r.key.rsplit("/", 1)[1]: r for r in at(keys.quota_usages())}
        return Snapshot(revision, instances, hosts, allocations, providers, usages)

    # ---------------------------------------------------------------- the pass

    def run_once(self) -> Report:
        started = time.monotonic()
        if started - self._last_pass > 2 * self.config.reconcile_interval_s + 1:
            self._watching_since = started  # a gap: no pass ran (outage, start, new leader)
        report = Report()
        self.check_hosts(report)
        snap = self.snapshot()
        self.check_deadlines(snap, report)
        self.check_power(snap, report)
        snap = self.snapshot()  # after the repairs above
        self.check_allocations(snap, report)
        self.check_quota(snap, report)
        self.check_strays(snap, report)
        self._last_pass = time.monotonic()
        report.seconds = self._last_pass - started
        if report.repairs():
            log.warning("reconciler pass repaired %d things in %.2fs: %s", report.repairs(),
                        report.seconds, {k: v for k, v in vars(report).items()
                                         if isinstance(v, list) and v})
        return report

    # ---------------------------------------------------------------- 1. hosts

    def check_hosts(self, report: Report) -> None:
        down_after = self.config.host_down_after_s
        if time.monotonic() - self._watching_since < down_after:
            return  # not watched long enough to tell a dead host from our own gap
        for host in self.plane.hosts.all():
            if host.up and time.time() - host.last_heartbeat >= down_after:
                if self.plane.hosts.mark_down(host.name, down_after):
                    log.warning("host %s is down: no heartbeat for %.1fs (limit %.1fs)",
                                host.name, time.time() - host.last_heartbeat, down_after)
                    report.hosts_down.append(host.name)

    def _host_up(self, snap: Snapshot, name: str) -> bool:
        host = snap.hosts.get(name)
        return host is not None and host.up  # as check_hosts judged it

    # ---------------------------------------------------------------- 2. deadlines

    def check_deadlines(self, snap: Snapshot, report: Report) -> None:
        now = time.time()
        self._redriven = {i: sent for i, sent in self._redriven.items() if i in snap.instances}
        for instance, record in snap.instances.values():
            age = now - instance.updated_at
            if instance.vm_state is VmState.BUILDING and instance.task_state in BUILD_TASKS:
                host = snap.hosts.get(instance.host) if instance.host else None
                if instance.task_state is TaskState.SPAWNING and instance.host and \
                        (host is None or not host.up):
                    why = (f"host {instance.host} is down (no heartbeat since "
                           f"{time.strftime('%H:%M:%S', time.localtime(host.last_heartbeat))})"
                           if host else f"host {instance.host} is not registered")
                    self._fail(instance, record, f"build abandoned: {why}", report)
                elif age > self.config.build_deadline():
                    where = f" on host {instance.host}" if instance.host else ""
                    self._fail(instance, record,
                               f"build timed out while {instance.task_state.value}{where}: no "
                               f"progress for {age:.0f}s (deadline "
                               f"{self.config.build_deadline():.0f}s)", report)
                elif self._redrive_due(instance, age):
                    self._redrive_build(instance, report)
            elif instance.task_state is TaskState.DELETING and \
                    age > self.config.delete_deadline_s:
                self._finish_delete(snap, instance, report)
            elif instance.task_state in OPERATION_TASKS and \
                    age > self.config.operation_deadline():
                message = (f"{instance.task_state.value} timed out after {age:.0f}s "
                           f"(deadline {self.config.operation_deadline():.0f}s)")
                undo_operation(self.store, self.plane.quotas, self.plane.placement, instance.id,
                               "", message)
                self._finish_actions(instance, message)
                log.warning("instance %s: %s", instance.id, message)
                report.operations_undone.append(instance.id)

    def _redrive_due(self, instance: Instance, age: float) -> bool:
        """Whether a build has made no progress for build_redrive_after_s since
        its last change, and since its task was last sent again (if it was).
        Only time watched counts: after an outage (etcd, or no leader), builds'
        tasks are still retrying, and heartbeats are not recorded yet (the
        scheduler would find no host up)."""
        after = self.config.build_redrive_after()
        if not after or min(age, time.monotonic() - self._watching_since) <= after:
            return False
        last = self._redriven.get(instance.id)
        return last is None or last[0] != instance.updated_at or \
            time.monotonic() - last[1] >= after

    def _redrive_build(self, instance: Instance, report: Report) -> None:
        """Send a stalled build's task again. Its task may be lost with Redis, or
        held by a killed worker (Redis gives that back only after the visibility
        timeout). If the first was only slow, two copies run: that is safe (each
        step is a compare-and-swap, a copy that loses one leaves the claim and
        guest to the winner, and the agent runs one spawn of an instance at a
        time, the second finding the guest running)."""
        open_actions = self._open_actions(instance)
        try:
            self.plane.queue.send(BUILD_INSTANCE, instance.id, open_actions[0] if open_actions else "")
        except Unavailable as exc:
            log.warning("instance %s: cannot re-send its build: %s", instance.id, exc)
            return
        self._redriven[instance.id] = (instance.updated_at, time.monotonic())
        log.warning("instance %s: build stalled while %s for %.0fs; task sent again",
                    instance.id, instance.task_state.value, time.time() - instance.updated_at)
        report.builds_redriven.append(instance.id)

    def _fail(self, instance: Instance, record: Record, message: str, report: Report) -> None:
        """ERROR with a fault, quota released in the same transaction, then the
        allocation: only if the instance is still as the snapshot saw it."""
        changes: dict[str, object] = {"fault": Fault(message=message, phase=instance.task_state.value,
                                                     host=instance.host)}
        txn = Txn()
        if instance.quota_held:
            changes["quota_held"] = False
            self.plane.quotas.release_into(txn, instance.project, QuotaValues.of(instance.resources))
        records.change_into(txn, record, Event.FAILED, changes)
        if not self.store.commit(txn):
            return  # it moved meanwhile: judged again next pass
        self.plane.placement.release(instance.id)
        self._finish_actions(instance, message)
        log.warning("instance %s -> ERROR: %s", instance.id, message)
        report.failed.append(instance.id)
        if instance.host:
            # A guest a lost task started holds nothing now: take it away (best
            # effort; if the host cannot be reached it is reaped as a stray).
            try:
                self.plane.agents.destroy(self.plane.hosts.get(instance.host).address, instance.id)
            except CloudError as exc:
                log.info("instance %s: guest not destroyed now (%s)", instance.id, exc)

    def _finish_actions(self, instance: Instance, message: str) -> None:
        for record in self.store.list(keys.actions(instance.project, instance.id)):
            if record.value.get("end") is None:
                actions.finish(self.store, record.key, message)

    def _open_actions(self, instance: Instance) -> list[str]:
        """The keys of the instance's actions not finished yet, oldest first."""
        return [r.key for r in self.store.list(keys.actions(instance.project, instance.id))
                if r.value.get("end") is None]

    def _finish_delete(self, snap: Snapshot, instance: Instance, report: Report) -> None:
        if not instance.host or not self._host_up(snap, instance.host):
            log.warning("instance %s: delete past its deadline and host %r is down or gone: "
                        "finishing it here", instance.id, instance.host)
            self.work.delete(instance.id, skip_agent=True)
            self._finish_actions(instance, "")
            report.deletes_forced.append(instance.id)
            return
        last = self._resent.get(instance.id, 0.0)
        if time.time() - last > self.config.delete_deadline_s:
            try:
                # With its action, which the task finishes (the newest open one: the delete).
                open_actions = self._open_actions(instance)
                self.plane.queue.send(DELETE_INSTANCE, instance.id,
                                      open_actions[-1] if open_actions else "")
            except Unavailable as exc:
                log.warning("instance %s: cannot re-send its delete: %s", instance.id, exc)
                return
            self._resent[instance.id] = time.time()
            log.warning("instance %s: delete past its deadline; task sent again", instance.id)
            report.deletes_resent.append(instance.id)

    # ---------------------------------------------------------------- 3. power drift

    def check_power(self, snap: Snapshot, report: Report) -> None:
        for instance, record in snap.instances.values():
            if instance.task_state is not TaskState.NONE:
                continue
            if instance.vm_state is VmState.ACTIVE and instance.power_state in OFF:
                event, what = Event.POWERED_OFF, f"the guest shut itself down ({instance.power_state})"
            elif instance.vm_state is VmState.STOPPED and \
                    instance.power_state is PowerState.RUNNING:
                event, what = Event.POWERED_ON, "the guest runs although it was stopped"
            else:
                continue
            txn = Txn()
            new = records.change_into(txn, record, event, action=actions.Begin(
                "stop" if event is Event.POWERED_OFF else "start", user="reconciler"))
            if self.store.commit(txn):
                actions.finish(self.store, new.action_key)
                log.warning("instance %s: %s; now %s", instance.id, what,
                            new.instance.vm_state.value)
                report.power_synced.append(instance.id)

    # ---------------------------------------------------------------- 4. claims

    def check_allocations(self, snap: Snapshot, report: Report) -> None:
        suspects: dict[str, tuple[str, int, int]] = {}
        for instance_id, (allocation, a_record) in snap.allocations.items():
            found = snap.instances.get(instance_id)
            if found is not None and holds_allocation(found[0]) is not False:
                continue
            seen = ("stale", a_record.mod_revision, found[1].mod_revision if found else 0)
            suspects[instance_id] = seen
            if self._suspects.get(instance_id) == seen:
                self._release_stale(allocation, a_record, report)
        for instance_id, (instance, i_record) in snap.instances.items():
            if instance_id in snap.allocations or holds_allocation(instance) is not True:
                continue
            seen = ("missing", 0, i_record.mod_revision)
            suspects[instance_id] = seen
            if self._suspects.get(instance_id) == seen:
                self._restore(instance, i_record, report)
        self._suspects = suspects
        self.check_providers(report)

    def _release_stale(self, allocation: Allocation, a_record: Record, report: Report) -> None:
        if self.store.commit(self.plane.placement.release_txn(a_record)):
            log.warning("released allocation of %s on %s (%s): its instance is gone or failed",
                        allocation.instance_id, ", ".join(allocation.by_provider()),
                        allocation.by_provider())
            report.allocations_released.append(allocation.instance_id)

    def _restore(self, instance: Instance, i_record: Record, report: Report) -> None:
        """Its share of its host, as the instance's size says (what it held of
        other providers is not known from the instance)."""
        found = self.plane.placement.provider(instance.host)
        if found is None:
            return
        provider, p_record = found
        allocation = Allocation(instance_id=instance.id, project=instance.project,
                                host=instance.host, resources=instance.resources)
        need = amounts(instance.resources)
        txn = (Txn().expect(i_record).expect_absent(keys.allocation(instance.id))
               .put(keys.allocation(instance.id), allocation.model_dump())
               .expect(p_record).put(p_record.key, {**provider.model_dump(),
                                                    "usage": added(provider.usage, need)}))
        if self.store.commit(txn):
            log.warning("restored the allocation of %s on %s (%s): it runs there without one",
                        instance.id, instance.host, need)
            report.allocations_restored.append(instance.id)

    def check_providers(self, report: Report) -> None:
        """Each provider's usage (a host's, a pool's) = the sum of the shares
        allocations hold of it, per resource class (read at one revision)."""
        revision = self.store.revision()
        allocations, _ = self.store.list_at_revision(keys.allocations(), revision)
        providers, _ = self.store.list_at_revision(keys.providers(), revision)
        sums: dict[str, dict[str, int]] = defaultdict(dict)
        for record in allocations:
            for name, share in Allocation(**record.value).by_provider().items():
                sums[name] = added(sums[name], share)
        for record in providers:
            provider = Provider(**record.value)
            held = sums[provider.host]
            classes = sorted({*provider.inventory, *provider.usage, *held})
            want = {rc: held.get(rc, 0) for rc in classes}
            have = {rc: provider.usage.get(rc, 0) for rc in classes}
            if have == want:
                continue
            if self.store.commit(Txn().expect(record).put(
                    record.key, {**provider.model_dump(), "usage": want})):
                log.warning("%s %s usage was %s, its allocations hold %s: repaired",
                            provider.kind, provider.host, have, want)
                report.providers_fixed.append(provider.host)

    # ---------------------------------------------------------------- 5. quota

    def check_quota(self, snap: Snapshot, report: Report) -> None:
        """Each project's usage of the instance quotas = what its instances hold.
        Other quotas (floating_ips, networks, ...) are counted by what holds
        them and kept as they are here."""
        held: dict[str, QuotaValues] = defaultdict(QuotaValues)
        for instance, _ in snap.instances.values():
            held[instance.project] = held[instance.project] + quota_held(instance)
        for project in sorted(set(held) | set(snap.usages)):
            record = snap.usages.get(project)
            have = QuotaValues(**record.value) if record else QuotaValues()
            by_instances = held.get(project, QuotaValues())
            want = QuotaValues(resources={**have.resources,
                                          **{n: by_instances.get(n) for n in INSTANCE_QUOTAS}})
            if have == want:
                continue
            txn = Txn().put(keys.quota_usage(project), want.model_dump())
            txn.expect(record) if record else txn.expect_absent(keys.quota_usage(project))
            if self.store.commit(txn):
                log.warning("project %s quota usage was %s, its instances hold %s: repaired",
                            project, have.model_dump(), by_instances.model_dump())
                report.quotas_fixed.append(project)

    # ---------------------------------------------------------------- 6. strays

    def check_strays(self, snap: Snapshot, report: Report) -> None:
        now = time.time()
        for record in self.store.list(keys.strays()):
            host, instance_id = record.value["host"], record.value["instance_id"]
            report.strays_seen.append(f"{host}/{instance_id}")
            current = records.by_id(self.store, instance_id)
            if current is not None:
                instance = Instance(**current.value)
                if instance.host == host and instance.vm_state is not VmState.ERROR:
                    self.store.commit(Txn().expect(record).delete(record.key))
                    continue  # owned after all (a build got there)
            if now - record.value["first_seen"] < self.config.orphan_grace_s:
                continue
            if host not in snap.hosts:
                self.store.commit(Txn().expect(record).delete(record.key))
                continue  # the host is gone, and its domains with it
            if not self._host_up(snap, host):
                continue  # destroyed when it is back
            try:
                existed = self.plane.agents.destroy(snap.hosts[host].address, instance_id)
            except CloudError as exc:
                log.warning("stray %s on %s not destroyed yet: %s", instance_id, host, exc)
                continue
            self.store.commit(Txn().expect(record).delete(record.key))
            age = now - record.value["first_seen"]
            log.warning("destroyed stray domain %s on host %s (no instance owned it for %.0fs; "
                        "existed: %s)", instance_id, host, age, existed)
            report.strays_destroyed.append(f"{host}/{instance_id}")


def start_reconciler(plane: ControlPlane) -> LeaderLoop:
    """Reconcile every reconcile_interval_s (the first pass at once), in one API
    replica at a time."""
    reconciler = Reconciler(plane)
    return LeaderLoop(plane.store, LOCK_NAME, reconciler.run_once,
                      plane.config.reconcile_interval_s, plane.config.leader_lease_s).start()

