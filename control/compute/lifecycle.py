"""Operations on an existing instance, API side: stop, start, reboot, scale,
rename. Each validates, records the intent and an action in one transaction,
and queues the task that does it (control/compute/tasks.py). A scale that grows the
instance claims its project's quota and its host's capacity in that same
transaction: it either fits entirely or nothing is changed."""

from __future__ import annotations

import json
import logging

from control import deadlines
from control.compute import actions, records
from control.compute.instances import Instances
from control.compute.states import Event, TaskState, transition
from control.errors import AlreadyExists, Conflict, InvalidArgument, Unavailable
from control.identity.accounts import Caller
from control.identity.quotas import Quotas, QuotaValues
from control.models import Fault, Instance, Resources, validate_name
from control.placement.allocations import Placement
from control.queue import INSTANCE_OPERATION, TaskQueue
from control.store.etcd import CAS_ATTEMPTS, Record, Store, Txn

log = logging.getLogger(__name__)

OPERATIONS = {Event.STOP: "stop", Event.START: "start", Event.REBOOT: "reboot",
              Event.SCALE: "scale", Event.RESIZE: "resize"}


class Lifecycle:
    def __init__(self, store: Store, queue: TaskQueue, instances: Instances, quotas: Quotas,
                 placement: Placement):
        self.store = store
        self.queue = queue
        self.instances = instances
        self.quotas = quotas
        self.placement = placement

    def _operate(self, caller: Caller, id_or_name: str, event: Event, request_id: str,
                 options: dict[str, object], prepare=None) -> Instance:
        """Move the instance into `event`'s operation, record the action, queue the task.
        `prepare(instance, txn)` adds claims to the transaction (scale) and returns
        more changes of the instance."""
        for attempt in range(CAS_ATTEMPTS):
            if attempt:
                deadlines.check(f"the {event.value} of {id_or_name!r}")
            record = self.instances.record(caller.project, id_or_name)
            instance = Instance(**record.value)
            transition(instance.state, event)  # a wrong state is told before bad sizes
            txn = Txn()
            changes = {"fault": None, **(prepare(instance, txn) if prepare else {})}
            written = records.change_into(txn, record, event, changes, actions.Begin(
                OPERATIONS[event], request_id, caller.username))
            if self.store.commit(txn):
                break
        else:
            raise Conflict(f"instance {id_or_name!r} is changing too often; try again")
        try:
            self.queue.send(INSTANCE_OPERATION, instance.id, event.value, written.action_key,
                            json.dumps(options))
        except Unavailable:
            # No task will run: undo, so nothing is left half-started.
            undo_operation(self.store, self.quotas, self.placement, instance.id,
                           written.action_key, "task queue (Redis) unavailable")
            raise
        log.info("instance %s: %s requested", instance.id, event.value)
        return written.instance

    def stop(self, caller: Caller, id_or_name: str, request_id: str = "") -> Instance:
        return self._operate(caller, id_or_name, Event.STOP, request_id, {})

    def start(self, caller: Caller, id_or_name: str, request_id: str = "") -> Instance:
        return self._operate(caller, id_or_name, Event.START, request_id, {})

    def reboot(self, caller: Caller, id_or_name: str, hard: bool, request_id: str = "") -> Instance:
        return self._operate(caller, id_or_name, Event.REBOOT, request_id, {"hard": hard})

    def scale(self, caller: Caller, id_or_name: str, vcpus: int, memory_mb: int, disk_gb: int,
              request_id: str = "") -> Instance:
        """Change vCPUs, memory or disk (0 keeps one as it is): live, without a
        restart, when running. Growth is claimed from quota and the host first."""
        if vcpus < 0 or memory_mb < 0 or disk_gb < 0:
            raise InvalidArgument("sizes must be positive")

        def prepare(instance: Instance, txn: Txn) -> dict[str, object]:
            current = instance.resources
            new = Resources(vcpus=vcpus or current.vcpus, memory_mb=memory_mb or current.memory_mb,
                            disk_gb=disk_gb or current.disk_gb)
            if new.vcpus > instance.max_vcpus or new.memory_mb > instance.max_memory_mb:
                raise InvalidArgument(
                    f"beyond this instance's maximum of {instance.max_vcpus} vCPUs and "
                    f"{instance.max_memory_mb} MiB (set when it was created)")
            if new.memory_mb < 128:
                raise InvalidArgument("memory must be at least 128 MiB")
            if new.disk_gb < current.disk_gb:
                raise InvalidArgument(f"a disk can only grow ({current.disk_gb} GiB now)")
            if new == current:
                raise InvalidArgument("nothing to change: those are its sizes already")
            self.quotas.claim_into(txn, instance.project, QuotaValues.of(new - current, instances=0))
            self.placement.resize_into(txn, instance.id, new)
            return {"scaling_to": new}

        return self._operate(caller, id_or_name, Event.SCALE, request_id,
                             {"vcpus": vcpus, "memory_mb": memory_mb, "disk_gb": disk_gb}, prepare)

    def resize(self, caller: Caller, id_or_name: str, flavor_name: str,
               request_id: str = "") -> Instance:
        """Cold resize to another flavor: its sizes and maximums, with a restart.
        Growth is claimed from quota and the host first, as for a scale."""
        flavor = self.instances.catalog.flavor(flavor_name, caller.project, caller.is_admin)
        config = self.instances.config

        def prepare(instance: Instance, txn: Txn) -> dict[str, object]:
            if flavor.name == instance.flavor:
                raise InvalidArgument(f"the instance is of flavor {flavor.name} already")
            if flavor.disk_gb < instance.resources.disk_gb:
                raise InvalidArgument(f"cannot resize to a smaller disk: flavor {flavor.name} has "
                                      f"{flavor.disk_gb} GiB, the instance {instance.resources.disk_gb}")
            new = flavor.resources
            self.quotas.claim_into(txn, instance.project,
                                   QuotaValues.of(new - instance.resources, instances=0))
            self.placement.resize_into(txn, instance.id, new)
            return {"scaling_to": new, "resize": {
                "flavor": flavor.name,
                "max_vcpus": max(flavor.vcpus, flavor.max_vcpus or config.default_max_vcpus),
                "max_memory_mb": max(flavor.memory_mb,
                                     flavor.max_memory_mb or config.default_max_memory_mb)}}

        return self._operate(caller, id_or_name, Event.RESIZE, request_id, {}, prepare)

    def rename(self, caller: Caller, id_or_name: str, new_name: str, request_id: str = "") -> Instance:
        validate_name(new_name, "instance name")
        project = caller.project
        for attempt in range(CAS_ATTEMPTS):
            if attempt:
                deadlines.check(f"the rename of {id_or_name!r}")
            record = self.instances.record(project, id_or_name)
            instance = Instance(**record.value)
            if instance.name == new_name:
                return instance
            txn = Txn()
            renamed = records.rename_into(txn, record, new_name, actions.Begin(
                "rename", request_id, caller.username))
            if self.store.commit(txn):
                actions.finish(self.store, renamed.action_key)
                return renamed.instance
            if records.name_taken(self.store, project, new_name):
                raise AlreadyExists(f"an instance named {new_name!r} already exists")
        raise Conflict(f"instance {id_or_name!r} is changing too often; try again")


def undo_operation(store: Store, quotas: Quotas, placement: Placement, instance_id: str,
                   action_key: str, error: str) -> None:
    """An operation that failed (or could not be queued) leaves the instance as it
    was: back to its stable state with the fault recorded, and a scale's claims
    on quota and host given back, in one transaction."""
    def change(record: Record) -> tuple[Txn | None, None]:
        instance = Instance(**record.value)
        if instance.task_state in (TaskState.NONE, TaskState.DELETING):
            return None, None
        phase = instance.task_state.value
        txn = Txn()
        records.change_into(txn, record, Event.ABORTED, {
            "scaling_to": None, "resize": None,
            "fault": Fault(message=error, phase=phase, host=instance.host)})
        if instance.scaling_to is not None:
            quotas.claim_into(txn, instance.project,
                              QuotaValues.of(instance.resources - instance.scaling_to, instances=0))
            placement.resize_into(txn, instance_id, instance.resources)
        return txn, None

    records.update(store, instance_id, change)
    actions.finish(store, action_key, error)
