"""The one mapping between the state machine's enums (control.compute.states) and
the proto's (compute.proto: InstanceStatus, VmState, TaskState, PowerState).

A wire value is the internal member's name with the proto enum's prefix
(VmState.BUILDING is VM_STATE_BUILDING), so the tables build themselves; a state
added on one side only fails at import here, and in tests/unit/test_state_enums.py.
"""

from __future__ import annotations

from enum import StrEnum

from cloudapi.v1 import compute_pb2 as pb
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

from control.compute.states import PowerState, Status, TaskState, VmState

# internal enum -> (its proto enum, the prefix of the proto's value names)
WIRE_ENUMS: dict[type[StrEnum], tuple[EnumTypeWrapper, str]] = {
    Status: (pb.InstanceStatus, "INSTANCE_STATUS_"),
    VmState: (pb.VmState, "VM_STATE_"),
    TaskState: (pb.TaskState, "TASK_STATE_"),
    PowerState: (pb.PowerState, "POWER_STATE_"),
}


def _table(internal: type[StrEnum]) -> dict[StrEnum, str]:
    wire, prefix = WIRE_ENUMS[internal]
    missing = [m.name for m in internal if prefix + m.name not in wire.keys()]
    if missing:
        raise RuntimeError(f"compute.proto has no value for {internal.__name__} {missing}")
    return {member: prefix + member.name for member in internal}


TO_WIRE: dict[type[StrEnum], dict[StrEnum, str]] = {e: _table(e) for e in WIRE_ENUMS}


def to_wire(member: StrEnum) -> str:
    """The proto enum value's name for an internal state (a message's constructor
    takes an enum field's value by name)."""
    return TO_WIRE[type(member)][member]


def from_wire(internal: type[StrEnum], number: int) -> StrEnum:
    """The internal state for a proto enum's number, as a message field holds it
    (KeyError for UNSPECIFIED or a value this version does not know)."""
    wire, prefix = WIRE_ENUMS[internal]
    name = wire.Name(number) if number in wire.values() else ""
    if not name.startswith(prefix) or name == prefix + "UNSPECIFIED":
        raise KeyError(f"{internal.__name__}: no state for {number}")
    return internal[name.removeprefix(prefix)]
