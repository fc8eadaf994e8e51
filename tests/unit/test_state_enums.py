"""Every internal instance state has one proto enum value, and back; the API's
Instance message carries the same states as strings and as enums."""

import itertools

import pytest
from cloudapi.v1 import compute_pb2 as pb

from control.api import convert
from control.api.state_enums import WIRE_ENUMS, from_wire, to_wire
from control.compute.states import PowerState, State, Status, TaskState, VmState, status
from control.models import Instance, Resources


@pytest.mark.parametrize("internal", list(WIRE_ENUMS), ids=lambda e: e.__name__)
def test_every_state_has_a_wire_value_and_back(internal):
    wire, prefix = WIRE_ENUMS[internal]
    for member in internal:
        number = wire.Value(to_wire(member))
        assert number != 0, f"{member!r} maps to {prefix}UNSPECIFIED"
        assert from_wire(internal, number) is member
    # ... and every wire value but UNSPECIFIED is an internal state (none is left over).
    named = {v.name for v in wire.DESCRIPTOR.values if v.name != prefix + "UNSPECIFIED"}
    assert named == {to_wire(m) for m in internal}
    with pytest.raises(KeyError):
        from_wire(internal, 0)


def test_every_internal_state_enum_is_mapped():
    assert set(WIRE_ENUMS) == {Status, VmState, TaskState, PowerState}


def test_status_words_are_the_statuses_the_state_machine_shows():
    shown = {status(State(vm, task)) for vm, task in itertools.product(VmState, TaskState)}
    assert shown == set(Status)


@pytest.mark.parametrize("vm,task,power", [
    (VmState.BUILDING, TaskState.SCHEDULING, PowerState.NOSTATE),
    (VmState.ACTIVE, TaskState.NONE, PowerState.RUNNING),
    (VmState.STOPPED, TaskState.POWERING_ON, PowerState.SHUTOFF),
    (VmState.ACTIVE, TaskState.DELETING, PowerState.CRASHED),
])
def test_instance_message_carries_strings_and_enums_alike(vm, task, power):
    shown = convert.instance(Instance(
        id="i-1", name="web", project="p", flavor="small", image="img",
        resources=Resources(vcpus=1, memory_mb=512, disk_gb=2), vm_state=vm, task_state=task,
        power_state=power))
    assert pb.InstanceStatus.Name(shown.status_enum) == "INSTANCE_STATUS_" + shown.status
    assert pb.VmState.Name(shown.vm_state_enum) == "VM_STATE_" + shown.vm_state.upper()
    assert pb.TaskState.Name(shown.task_state_enum) == (
        "TASK_STATE_" + (shown.task_state.upper().replace("-", "_") or "NONE"))
    assert pb.PowerState.Name(shown.power_state_enum) == "POWER_STATE_" + shown.power_state.upper()
