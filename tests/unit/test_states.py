import pytest

from control.compute.states import INITIAL, Event, State, TaskState, VmState, status, transition
from control.errors import InvalidTransition


def test_build_path_reaches_active():
    state = transition(INITIAL, Event.SCHEDULED)
    assert state == State(VmState.BUILDING, TaskState.SPAWNING)
    state = transition(state, Event.SPAWNED)
    assert state == State(VmState.ACTIVE)
    assert status(state) == "ACTIVE"


@pytest.mark.parametrize("task", [TaskState.SCHEDULING, TaskState.SPAWNING])
def test_failure_while_building_is_error(task):
    assert transition(State(VmState.BUILDING, task), Event.FAILED) == State(VmState.ERROR)


@pytest.mark.parametrize("state", [
    State(VmState.BUILDING, TaskState.SCHEDULING), State(VmState.BUILDING, TaskState.SPAWNING),
    State(VmState.ACTIVE), State(VmState.ERROR)])
def test_delete_is_legal_from_every_state(state):
    deleting = transition(state, Event.DELETE)
    assert deleting.task is TaskState.DELETING
    assert status(deleting) == "DELETING"
    assert transition(deleting, Event.DELETED).vm is VmState.DELETED


def test_delete_twice_is_refused():
    deleting = transition(State(VmState.ACTIVE), Event.DELETE)
    with pytest.raises(InvalidTransition):
        transition(deleting, Event.DELETE)


@pytest.mark.parametrize("state,event", [
    (State(VmState.ACTIVE), Event.SPAWNED),
    (State(VmState.ACTIVE), Event.SCHEDULED),
    (State(VmState.ERROR), Event.SPAWNED),
    (INITIAL, Event.SPAWNED),
    (State(VmState.BUILDING, TaskState.DELETING), Event.SPAWNED),
    (State(VmState.ACTIVE), Event.DELETED),
])
def test_illegal_moves_raise(state, event):
    with pytest.raises(InvalidTransition):
        transition(state, event)


def test_status_words():
    assert status(INITIAL) == "BUILD"
    assert status(State(VmState.ERROR)) == "ERROR"


@pytest.mark.parametrize("state, allowed", [
    (State(VmState.ACTIVE), ["stop", "reboot", "scale", "resize", "delete"]),
    (State(VmState.STOPPED), ["start", "scale", "resize", "delete"]),
    (State(VmState.BUILDING, TaskState.SPAWNING), ["delete"]),
    (State(VmState.ACTIVE, TaskState.POWERING_OFF), ["delete"]),
    (State(VmState.ERROR), ["delete"]),
    (State(VmState.ACTIVE, TaskState.DELETING), []),
])
def test_allowed_operations_are_the_state_machines(state, allowed):
    from control.compute.states import OPERATIONS, allowed_operations

    assert allowed_operations(state) == allowed
    for name, event in OPERATIONS.items():  # exactly what transition() accepts
        if name not in allowed:
            with pytest.raises(InvalidTransition):
                transition(state, event)


def test_instances_on_the_wire_carry_their_allowed_actions():
    from control.api.convert import instance
    from control.models import Instance, Resources

    stopped = Instance(id="i", project="p", name="n", flavor="tiny", image="img",
                       resources=Resources(vcpus=1, memory_mb=256, disk_gb=1),
                       vm_state=VmState.STOPPED, task_state=TaskState.NONE)
    assert list(instance(stopped).allowed_actions) == ["start", "scale", "resize", "delete"]
