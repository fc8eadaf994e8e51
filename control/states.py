"""Instance states, and the one function that moves an instance between them.

Three separate dimensions, as in Nova:
  - vm_state: the stable state the instance is in (building, active, error, deleted);
  - task_state: the operation in flight, if any (scheduling, spawning, deleting);
  - power_state: what the hypervisor last reported (running, shutoff, ...), written
    by observations only and never used to decide what is legal.

Every change of vm_state/task_state goes through `transition`. An event that is
not legal in the current state raises InvalidTransition. Delete is legal from
every state (except an instance already being deleted or gone).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from control.errors import InvalidTransition


class VmState(StrEnum):
    BUILDING = "building"
    ACTIVE = "active"
    ERROR = "error"
    DELETED = "deleted"


class TaskState(StrEnum):
    NONE = ""
    SCHEDULING = "scheduling"
    SPAWNING = "spawning"
    DELETING = "deleting"


class PowerState(StrEnum):
    NOSTATE = "nostate"
    RUNNING = "running"
    PAUSED = "paused"
    SHUTOFF = "shutoff"
    CRASHED = "crashed"


class Event(StrEnum):
    SCHEDULED = "scheduled"        # a host was claimed; spawning starts
    SPAWNED = "spawned"            # the guest is running
    FAILED = "failed"              # the operation in flight failed
    RESCHEDULE = "reschedule"      # the spawn failed on a host: try another
    DELETE = "delete"              # a delete was requested
    DELETED = "deleted"            # the delete finished


@dataclass(frozen=True)
class State:
    vm: VmState
    task: TaskState = TaskState.NONE


# (vm_state, task_state) -> {event: new state}
_TRANSITIONS: dict[tuple[VmState, TaskState], dict[Event, State]] = {
    (VmState.BUILDING, TaskState.SCHEDULING): {
        Event.SCHEDULED: State(VmState.BUILDING, TaskState.SPAWNING),
        Event.FAILED: State(VmState.ERROR),
    },
    (VmState.BUILDING, TaskState.SPAWNING): {
        Event.SPAWNED: State(VmState.ACTIVE),
        Event.FAILED: State(VmState.ERROR),
        Event.RESCHEDULE: State(VmState.BUILDING, TaskState.SCHEDULING),
    },
    (VmState.BUILDING, TaskState.DELETING): {Event.DELETED: State(VmState.DELETED)},
    (VmState.ACTIVE, TaskState.DELETING): {Event.DELETED: State(VmState.DELETED)},
    (VmState.ERROR, TaskState.DELETING): {Event.DELETED: State(VmState.DELETED)},
}

INITIAL = State(VmState.BUILDING, TaskState.SCHEDULING)


def transition(current: State, event: Event) -> State:
    """The state after `event`, or InvalidTransition if it is not legal now."""
    if event is Event.DELETE:
        if current.task is TaskState.DELETING or current.vm is VmState.DELETED:
            raise InvalidTransition(f"instance is already being deleted ({current.vm})")
        return State(current.vm, TaskState.DELETING)
    try:
        return _TRANSITIONS[(current.vm, current.task)][event]
    except KeyError:
        task = f"/{current.task}" if current.task else ""
        raise InvalidTransition(f"cannot {event} an instance that is {current.vm}{task}") from None


def status(state: State) -> str:
    """The one word a user sees, as in Nova: BUILD, ACTIVE, ERROR, DELETING, DELETED."""
    if state.task is TaskState.DELETING:
        return "DELETING"
    if state.vm is VmState.BUILDING:
        return "BUILD"
    return state.vm.value.upper()
