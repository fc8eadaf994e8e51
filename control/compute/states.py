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
    STOPPED = "stopped"
    ERROR = "error"
    DELETED = "deleted"


class TaskState(StrEnum):
    NONE = ""
    SCHEDULING = "scheduling"
    SPAWNING = "spawning"
    POWERING_OFF = "powering-off"
    POWERING_ON = "powering-on"
    REBOOTING = "rebooting"
    SCALING = "scaling"
    RESIZING = "resizing"
    DELETING = "deleting"


class PowerState(StrEnum):
    NOSTATE = "nostate"
    RUNNING = "running"
    PAUSED = "paused"
    SHUTOFF = "shutoff"
    CRASHED = "crashed"


class Status(StrEnum):
    """The one word a user sees (see `status`)."""

    BUILD = "BUILD"
    ACTIVE = "ACTIVE"
    SHUTOFF = "SHUTOFF"
    REBOOT = "REBOOT"
    RESIZE = "RESIZE"
    ERROR = "ERROR"
    DELETING = "DELETING"
    DELETED = "DELETED"


class Event(StrEnum):
    SCHEDULED = "scheduled"        # a host was claimed; spawning starts
    SPAWNED = "spawned"            # the guest is running
    FAILED = "failed"              # the operation in flight failed
    RESCHEDULE = "reschedule"      # the spawn failed on a host: try another
    DELETE = "delete"              # a delete was requested
    DELETED = "deleted"            # the delete finished
    STOP = "stop"
    STOPPED = "stopped"
    START = "start"
    STARTED = "started"
    REBOOT = "reboot"
    REBOOTED = "rebooted"
    SCALE = "scale"                # change vCPUs, memory or disk (live when running)
    SCALED = "scaled"
    RESIZE = "resize"              # to another flavor, with a restart (cold)
    RESIZED = "resized"
    ABORTED = "aborted"            # a stop/start/reboot/scale failed: as it was before
    POWERED_OFF = "powered-off"    # observed: the guest shut itself down (reconciler)
    POWERED_ON = "powered-on"      # observed: the guest runs although stopped (reconciler)


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
    (VmState.ACTIVE, TaskState.NONE): {
        Event.STOP: State(VmState.ACTIVE, TaskState.POWERING_OFF),
        Event.REBOOT: State(VmState.ACTIVE, TaskState.REBOOTING),
        Event.SCALE: State(VmState.ACTIVE, TaskState.SCALING),
        Event.RESIZE: State(VmState.ACTIVE, TaskState.RESIZING),
        Event.POWERED_OFF: State(VmState.STOPPED),
    },
    (VmState.STOPPED, TaskState.NONE): {
        Event.POWERED_ON: State(VmState.ACTIVE),
        Event.START: State(VmState.STOPPED, TaskState.POWERING_ON),
        Event.SCALE: State(VmState.STOPPED, TaskState.SCALING),
        Event.RESIZE: State(VmState.STOPPED, TaskState.RESIZING),
    },
    (VmState.ACTIVE, TaskState.RESIZING): {
        Event.RESIZED: State(VmState.ACTIVE), Event.ABORTED: State(VmState.ACTIVE)},
    (VmState.STOPPED, TaskState.RESIZING): {
        Event.RESIZED: State(VmState.STOPPED), Event.ABORTED: State(VmState.STOPPED)},
    (VmState.ACTIVE, TaskState.POWERING_OFF): {
        Event.STOPPED: State(VmState.STOPPED), Event.ABORTED: State(VmState.ACTIVE)},
    (VmState.STOPPED, TaskState.POWERING_ON): {
        Event.STARTED: State(VmState.ACTIVE), Event.ABORTED: State(VmState.STOPPED)},
    (VmState.ACTIVE, TaskState.REBOOTING): {
        Event.REBOOTED: State(VmState.ACTIVE), Event.ABORTED: State(VmState.ACTIVE)},
    (VmState.ACTIVE, TaskState.SCALING): {
        Event.SCALED: State(VmState.ACTIVE), Event.ABORTED: State(VmState.ACTIVE)},
    (VmState.STOPPED, TaskState.SCALING): {
        Event.SCALED: State(VmState.STOPPED), Event.ABORTED: State(VmState.STOPPED)},
    **{(vm, TaskState.DELETING): {Event.DELETED: State(VmState.DELETED)}
       for vm in (VmState.BUILDING, VmState.ACTIVE, VmState.STOPPED, VmState.ERROR)},
}

# What each operation's task does once the agent has done it.
DONE = {Event.STOP: Event.STOPPED, Event.START: Event.STARTED, Event.REBOOT: Event.REBOOTED,
        Event.SCALE: Event.SCALED, Event.RESIZE: Event.RESIZED}

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


# The operations a user asks for, each the event it starts (rename and reading
# the console change no state: they are always allowed).
OPERATIONS: dict[str, Event] = {"start": Event.START, "stop": Event.STOP, "reboot": Event.REBOOT,
                                "scale": Event.SCALE, "resize": Event.RESIZE, "delete": Event.DELETE}


def allowed_operations(state: State) -> list[str]:
    """The operations legal now, in OPERATIONS' order: what the API would accept
    (clients show these instead of rules of their own)."""
    found = []
    for name, event in OPERATIONS.items():
        try:
            transition(state, event)
        except InvalidTransition:
            continue
        found.append(name)
    return found


def status(state: State) -> Status:
    """The one word a user sees, as in Nova: BUILD, ACTIVE, SHUTOFF, REBOOT, RESIZE,
    ERROR, DELETING, DELETED."""
    if state.task is TaskState.DELETING:
        return Status.DELETING
    if state.vm is VmState.BUILDING:
        return Status.BUILD
    if state.task is TaskState.REBOOTING:
        return Status.REBOOT
    if state.task in (TaskState.SCALING, TaskState.RESIZING):
        return Status.RESIZE
    if state.vm is VmState.STOPPED:
        return Status.SHUTOFF
    return Status(state.vm.value.upper())
