"""Celery tasks for the long operations: building and deleting instances.

Each task takes an instance id, re-reads the state from etcd, returns early if
the work is already done, and acts idempotently, so running it twice (a
redelivery after a worker died) is harmless, and so is running two copies at
once (a stalled build sent again by the reconciler while the first was slow,
not dead): a copy that loses a compare-and-swap leaves the claim and guest to
the winner. A failure leaves a recorded fault.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from celery import Celery, Task

from control.compute import actions, guest_data, records
from control.compute.agent_client import AgentRefused, GuestConfig, SpawnFailed
from control.compute.lifecycle import undo_operation
from control.compute.server_groups import without_member
from control.compute.states import DONE, Event, PowerState, TaskState, VmState
from control.errors import (
    CloudError,
    Conflict,
    InvalidTransition,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from control.identity.quotas import QuotaValues
from control.models import Allocation, Fault, Flavor, Instance
from control.network import ipam
from control.network.floating_ips import detach_instance_into
from control.network.nudge import nudge_in_parallel
from control.network.security_groups import leave_into
from control.placement.scheduler import Request, flavor_request
from control.plane import ControlPlane
from control.queue import BUILD_INSTANCE, DELETE_INSTANCE, INSTANCE_OPERATION
from control.store import keys
from control.store.etcd import Record, Txn

OPERATION_TASK_STATES = {Event.STOP: TaskState.POWERING_OFF, Event.START: TaskState.POWERING_ON,
                         Event.REBOOT: TaskState.REBOOTING, Event.SCALE: TaskState.SCALING,
                         Event.RESIZE: TaskState.RESIZING}

log = logging.getLogger(__name__)

# Nudging the hosts of a network (ComputeAgent.SyncNetworks): each call's deadline,
# and how long a build or a delete waits for all of them (a converge with nothing
# to create answers in tens of milliseconds; one that starts a router's dnsmasq
# in a few hundred).
NUDGE_TIMEOUT_S = 3.0

# An unreachable agent is retried this many times (with backoff) before the
# operation is given up and recorded as a fault.
AGENT_RETRIES = 5


def _with_attempts(message: str, instance: Instance) -> str:
    if not instance.attempts:
        return message
    tried = "; ".join(f"{a.host}: {a.message}" for a in instance.attempts)
    return f"{message} (spawn failed before on {tried})"


def _unwanted(instance: Instance | None) -> bool:
    """Whether an instance wants nothing a build made for it (claim, guest):
    it is gone, failed or being deleted."""
    return instance is None or instance.vm_state is VmState.ERROR or \
        instance.task_state is TaskState.DELETING


class InstanceWork:
    """The steps of the instance tasks, apart from Celery so they read plainly."""

    def __init__(self, plane: ControlPlane):
        self.plane = plane

    def _record(self, instance_id: str) -> Record | None:
        return records.by_id(self.plane.store, instance_id)

    def _advance(self, instance_id: str, event: Event, release_quota: bool = False,
                 **changes: object) -> Instance | None:
        """Apply `event` under compare-and-swap (releasing the instance's quota in
        the same transaction if asked). None if the instance is gone, being
        deleted, or moved on meanwhile (the reconciler failed it): the delete or
        the reconciler wins over whatever was in flight."""
        def change(record: Record) -> tuple[Txn | None, Instance | None]:
            instance = Instance(**record.value)
            if instance.task_state is TaskState.DELETING:
                return None, None
            txn, more = Txn(), dict(changes)
            if release_quota and instance.quota_held:
                more["quota_held"] = False
                self.plane.quotas.release_into(txn, instance.project,
                                               QuotaValues.of(instance.resources))
            try:
                return txn, records.change_into(txn, record, event, more).instance
            except InvalidTransition:
                # Overtaken: the reconciler failed it past its deadline, or a
                # redelivered task finished it first. Whoever moved it owns it now.
                log.warning("instance %s: %s is no longer legal (it is %s/%s); leaving it",
                            instance_id, event.value, instance.vm_state.value,
                            instance.task_state.value)
                return None, None

        applied = records.update(self.plane.store, instance_id, change)
        return applied.result if applied else None

    def fail(self, instance_id: str, phase: str, message: str, **changes: object) -> None:
        log.warning("instance %s failed while %s: %s", instance_id, phase, message)
        failed = self._advance(instance_id, Event.FAILED, release_quota=True,
                               fault=Fault(message=message, phase=phase), **changes)
        if failed is not None:  # else another copy of the task moved it on: its claim
            self.plane.placement.release(instance_id)

    def _allocation(self, instance: Instance) -> Allocation:
        return Allocation(instance_id=instance.id, project=instance.project, host="",
                          resources=instance.resources)

    def _request(self, instance: Instance) -> Request:
        """What the scheduler must find: the flavor's sizes and constraints,
        avoiding hosts where this instance already failed."""
        record = self.plane.store.get(keys.flavor(instance.flavor))
        flavor = Flavor(**record.value) if record else Flavor(
            name=instance.flavor, **instance.resources.model_dump())  # deleted since: sizes only
        flavor = flavor.model_copy(update=instance.resources.model_dump())
        return flavor_request(flavor, frozenset(a.host for a in instance.attempts))

    def _guest_config(self, instance: Instance) -> GuestConfig:
        """What goes on the guest's config drive, read at spawn time: a keypair
        deleted since the create is left out (the guest still boots)."""
        public_keys = []
        if instance.key_name:
            try:
                public_keys = [self.plane.keypairs.get(instance.project, instance.key_name).public_key]
            except NotFound:
                log.warning("instance %s: keypair %s was deleted; spawning without it",
                            instance.id, instance.key_name)
        return GuestConfig(hostname=guest_data.hostname(instance.name, instance.id),
                           public_keys=public_keys,
                           user_data=guest_data.load_user_data(self.plane.store, instance.project,
                                                               instance.id),
                           nics=self.plane.networks.spawn_nics(instance) if instance.nics else [])

    # ---------------------------------------------------------------- build

    def build(self, instance_id: str, give_up_on_unreachable: bool) -> None:
        record = self._record(instance_id)
        if record is None:
            return
        instance = Instance(**record.value)
        if instance.vm_state is not VmState.BUILDING or instance.task_state is TaskState.DELETING:
            return  # done already, or a delete overtook the build
        try:
            image = self.plane.images.by_id(instance.image)
        except NotFound as exc:
            self.fail(instance_id, "scheduling", str(exc))
            return
        guest = self._guest_config(instance)

        while True:
            if instance.task_state is TaskState.SCHEDULING:
                try:
                    group_key = keys.server_group(instance.project, instance.group) \
                        if instance.group else ""
                    claimed = self.plane.placement.allocation(instance_id)  # scale-out claims ahead
                    host = claimed.host if claimed else self._schedule(instance, group_key)
                except ResourceExhausted as exc:
                    # After failed spawns, the spawn failure is what the user needs to see.
                    phase = "spawning" if instance.attempts else "scheduling"
                    self.fail(instance_id, phase, _with_attempts(str(exc), instance))
                    return
                scheduled = self._advance(instance_id, Event.SCHEDULED, host=host)
                if scheduled is None:
                    # Moved on meanwhile. By another copy of this task (a stalled
                    # build sent again while the first was slow): a claim is one
                    # per instance, so the one scheduling found is the winner's.
                    if _unwanted(self._latest(instance_id)):
                        self.plane.placement.release(instance_id)
                    return
                instance = scheduled
            host_record = self.plane.hosts.find(instance.host)
            if host_record is None:
                self.fail(instance_id, "spawning", f"host {instance.host} is not registered")
                return
            address = host_record.address
            self._nudge_hosts(instance.project, {n.nic.network_id for n in guest.nics},
                              {instance.host} | self._group_hosts(instance))
            try:
                power = self.plane.agents.spawn(address, instance, image,
                                                self.plane.config.spawn_timeout_s, guest)
                break
            except SpawnFailed as exc:
                # The agent cleaned up: try another host. The claim is given back
                # only once this copy has moved the instance on (another copy of
                # the task may have built it meanwhile: then the claim is its).
                attempts = [*instance.attempts,
                            Fault(message=str(exc), phase="spawning", host=instance.host)]
                if len(attempts) >= self.plane.config.max_build_attempts:
                    self.fail(instance_id, "spawning",
                              f"spawn failed on {len(attempts)} hosts; last, {instance.host}: {exc}",
                              attempts=attempts)
                    return
                log.warning("spawn of %s failed on %s, rescheduling: %s", instance_id,
                            instance.host, exc)
                rescheduled = self._advance(instance_id, Event.RESCHEDULE, host="", attempts=attempts)
                if rescheduled is None:
                    return
                self.plane.placement.release(instance_id)
                instance = rescheduled
            except Unavailable as exc:
                if not give_up_on_unreachable:
                    raise  # retried by Celery
                self.fail(instance_id, "spawning", f"host {instance.host} unreachable: {exc}")
                return

        active = self._advance(instance_id, Event.SPAWNED, power_state=PowerState(power),
                               launched_at=time.time())
        if active is None:
            self._lost_spawn(address, instance_id, instance.host)
            return
        log.info("instance %s is active on %s", instance_id, instance.host)

    def _group_hosts(self, instance: Instance) -> set[str]:
        """The hosts whose firewall names this instance's address: those of its
        groups' members and of members of groups whose rules name its groups as
        remote (on other networks too: the network nudge misses those)."""
        ids = {ref.id for ref in instance.security_groups}
        return self.plane.security_groups.hosts_of(instance.project, ids, remote_too=True) if ids else set()

    def _nudge_hosts(self, project: str, network_ids: set[str], also: set[str] | None = None) -> None:
        """Ask every host that has these networks (and the hosts in `also`) to
        converge them now: a port just came (before its spawn: the guest's DHCP
        lease, and its peers' forwarding entries to it, are there before it
        boots) or went. In parallel and best effort (control/network/nudge.py)."""
        if not network_ids:
            return
        hosts = self.plane.networks.hosts_of(project, network_ids) | (also or set())

        def nudge(name: str) -> None:
            found = self.plane.hosts.find(name)
            if found is not None:
                self.plane.agents.sync_networks(found.address, NUDGE_TIMEOUT_S)

        nudge_in_parallel(hosts, nudge, f"networks {', '.join(sorted(network_ids))}")

    def _schedule(self, instance: Instance, group_key: str) -> str:
        try:
            return self.plane.scheduler.schedule(self._allocation(instance),
                                                 self._request(instance), group_key)
        except ResourceExhausted:
            # Another copy of this task may have claimed meanwhile, taking the
            # last room: a claim is one per instance, so that one is ours too.
            claimed = self.plane.placement.allocation(instance.id)
            if claimed is None:
                raise
            return claimed.host

    def _latest(self, instance_id: str) -> Instance | None:
        record = self._record(instance_id)
        return Instance(**record.value) if record else None

    def _lost_spawn(self, address: str, instance_id: str, host: str) -> None:
        """The guest runs on `host`, but the instance moved on meanwhile. Deleted
        or failed by the reconciler: the guest we started goes, and the claim.
        Placed on another host: the guest here is nobody's and goes; the claim
        is the other host's and stays. Live on this host: another copy of this
        task got there first (the agent ran our spawn after its own and found
        the guest running): it is the instance's guest, and stays."""
        latest = self._latest(instance_id)
        if _unwanted(latest) or (latest is not None and latest.host != host):
            log.warning("instance %s moved on while spawning on %s; destroying the guest",
                        instance_id, host)
            self.plane.agents.destroy(address, instance_id)
        if _unwanted(latest):
            self.plane.placement.release(instance_id)

    def _resize(self, address: str, instance: Instance) -> str:
        """Stop (if running), redefine with the new flavor, start again (if it was)."""
        agents, running = self.plane.agents, instance.vm_state is VmState.ACTIVE
        assert instance.scaling_to is not None and instance.resize is not None
        if running:
            agents.stop(address, instance.id, self.plane.config.stop_timeout_s)
        try:
            power = agents.resize(address, instance, instance.scaling_to,
                                  instance.resize["max_vcpus"], instance.resize["max_memory_mb"])
        finally:
            if running:
                power = agents.start(address, instance.id)  # as it was, even if the resize failed
        return power

    def finish_build_action(self, instance_id: str, action_key: str) -> None:
        record = self._record(instance_id)
        if record is None or not action_key:
            return
        instance = Instance(**record.value)
        if instance.vm_state is VmState.ACTIVE:
            actions.finish(self.plane.store, action_key)
        elif instance.vm_state is VmState.ERROR:
            actions.finish(self.plane.store, action_key,
                           instance.fault.message if instance.fault else "failed")

    # ---------------------------------------------------------------- operations

    def operate(self, instance_id: str, event: Event, action_key: str,
                options: dict[str, Any]) -> None:
        """Carry out a stop, start, reboot or scale the API recorded."""
        record = self._record(instance_id)
        if record is None:
            actions.finish(self.plane.store, action_key, "the instance was deleted")
            return
        instance = Instance(**record.value)
        if instance.task_state is TaskState.DELETING:
            # A delete overtook it: the action ends here (the delete has its own).
            actions.finish(self.plane.store, action_key, "the instance is being deleted")
            return
        if instance.task_state is not OPERATION_TASK_STATES[event]:
            return  # done already (a redelivered task), or undone by the reconciler
        agents, config = self.plane.agents, self.plane.config
        host = self.plane.hosts.find(instance.host)
        if host is None:
            undo_operation(self.plane.store, self.plane.quotas, self.plane.placement, instance_id,
                           action_key, f"host {instance.host} is not registered")
            return
        address = host.address
        try:
            if event is Event.STOP:
                power = agents.stop(address, instance_id, config.stop_timeout_s)
            elif event is Event.START:
                power = agents.start(address, instance_id)
            elif event is Event.REBOOT:
                power = agents.reboot(address, instance_id, bool(options.get("hard")))
            elif event is Event.SCALE:
                power = agents.scale(address, instance_id, options["vcpus"], options["memory_mb"],
                                     options["disk_gb"])
            else:
                power = self._resize(address, instance)
        except AgentRefused as exc:
            undo_operation(self.plane.store, self.plane.quotas, self.plane.placement, instance_id,
                           action_key, f"host {instance.host}: {exc}")
            return
        changes: dict[str, Any] = {"power_state": PowerState(power)}
        if event in (Event.SCALE, Event.RESIZE) and instance.scaling_to is not None:
            changes.update(resources=instance.scaling_to, scaling_to=None)
        if event is Event.RESIZE and instance.resize:
            changes.update(flavor=instance.resize["flavor"], resize=None,
                           max_vcpus=instance.resize["max_vcpus"],
                           max_memory_mb=instance.resize["max_memory_mb"])
        self._advance(instance_id, DONE[event], **changes)
        actions.finish(self.plane.store, action_key)
        log.info("instance %s: %s done", instance_id, event.value)

    # ---------------------------------------------------------------- delete

    def delete(self, instance_id: str, skip_agent: bool = False) -> None:
        """Destroy the guest, give back its claims and remove the record. With
        skip_agent (the reconciler, for a host that is down or gone), the guest is
        left to the host: if it comes back, its domain is a stray and reaped."""
        record = self._record(instance_id)
        if record is None:
            self.plane.placement.release(instance_id)
            return
        instance = Instance(**record.value)
        if instance.task_state is not TaskState.DELETING:
            return
        if instance.host and not skip_agent:
            host = self.plane.hosts.find(instance.host)
            address = host.address if host else ""  # a host gone took its guests with it
            if address:
                self.plane.agents.destroy(address, instance_id)
        self.plane.placement.release(instance_id)

        def change(current: Record) -> Txn:
            txn = Txn()
            latest = records.delete_into(txn, current, time.time())  # its last interval ends now
            guest_data.delete_user_data_into(txn, instance.project, instance_id)
            # Its addresses go back, and its floating IPs are detached, with its record.
            ipam.release_nics_into(txn, latest)
            detach_instance_into(self.plane.store, txn, latest)
            leave_into(txn, latest)  # and its security groups
            if latest.quota_held:
                # A scale in flight has claimed its new sizes already.
                held = latest.scaling_to or latest.resources
                self.plane.quotas.release_into(txn, latest.project, QuotaValues.of(held))
            if latest.group:
                group = self.plane.store.get(keys.server_group(latest.project, latest.group))
                if group is not None:
                    txn.merge(without_member(group, instance_id))
            return txn

        # The hosts to tell, read while the instance (its host, its NICs) is still there.
        networks = {n.network_id for n in instance.nics}
        hosts = self.plane.networks.hosts_of(instance.project, networks) if networks else set()
        hosts |= self._group_hosts(instance)
        self.plane.store.update(record.key, change)
        log.info("instance %s deleted", instance_id)
        self._nudge_hosts(instance.project, networks, hosts | {instance.host} - {""})


def register_tasks(app: Celery, plane: ControlPlane) -> None:
    work = InstanceWork(plane)

    @app.task(name=BUILD_INSTANCE, bind=True, max_retries=AGENT_RETRIES)
    def build_instance(self: Task, instance_id: str, action_key: str = "") -> None:
        last_try = self.request.retries >= AGENT_RETRIES
        try:
            work.build(instance_id, give_up_on_unreachable=last_try)
        except Unavailable as exc:
            raise self.retry(exc=exc, countdown=min(2 ** self.request.retries, 30)) from exc
        except Conflict as exc:
            # Lost too many races for a host: try again a little later, then give up
            # with a fault rather than leave the instance in BUILD.
            if last_try:
                work.fail(instance_id, "scheduling", str(exc))
            else:
                raise self.retry(exc=exc, countdown=0.2 * (self.request.retries + 1)) from exc
        work.finish_build_action(instance_id, action_key)

    @app.task(name=INSTANCE_OPERATION, bind=True, max_retries=AGENT_RETRIES)
    def instance_operation(self: Task, instance_id: str, event: str, action_key: str,
                           options: str) -> None:
        try:
            work.operate(instance_id, Event(event), action_key, json.loads(options))
        except Unavailable as exc:
            if self.request.retries >= AGENT_RETRIES:
                undo_operation(plane.store, plane.quotas, plane.placement, instance_id,
                               action_key, str(exc))
                return
            raise self.retry(exc=exc, countdown=min(2 ** self.request.retries, 30)) from exc

    @app.task(name=DELETE_INSTANCE, bind=True, max_retries=None)
    def delete_instance(self: Task, instance_id: str, action_key: str = "") -> None:
        try:
            work.delete(instance_id)
            actions.finish(plane.store, action_key)
        except CloudError as exc:
            # A delete must finish: keep trying (the agent or etcd will come back).
            raise self.retry(exc=exc, countdown=min(2 ** self.request.retries, 30)) from exc
