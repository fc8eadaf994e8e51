"""Models (control.models) to and from their protobuf messages."""

from __future__ import annotations

from cloudapi.v1 import compute_pb2 as pb
from google.protobuf.timestamp_pb2 import Timestamp

from control.models import Flavor, Image, Instance
from control.states import status


def _ts(seconds: float | None) -> Timestamp | None:
    if seconds is None:
        return None
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def flavor(f: Flavor) -> pb.Flavor:
    return pb.Flavor(name=f.name, vcpus=f.vcpus, memory_mb=f.memory_mb, disk_gb=f.disk_gb)


def image(i: Image) -> pb.Image:
    return pb.Image(id=i.id, name=i.name, os=i.os, min_disk_gb=i.min_disk_gb,
                    min_memory_mb=i.min_memory_mb, status=i.status.upper())


def instance(i: Instance) -> pb.Instance:
    msg = pb.Instance(
        id=i.id, name=i.name, project=i.project, status=status(i.state),
        vm_state=i.vm_state.value, task_state=i.task_state.value, power_state=i.power_state.value,
        flavor=i.flavor, vcpus=i.resources.vcpus, memory_mb=i.resources.memory_mb,
        disk_gb=i.resources.disk_gb, image=i.image, host=i.host, addresses=i.addresses,
        created_at=_ts(i.created_at), updated_at=_ts(i.updated_at),
        launched_at=_ts(i.launched_at))
    if i.fault:
        msg.fault.CopyFrom(pb.Fault(message=i.fault.message, phase=i.fault.phase,
                                    time=_ts(i.fault.time)))
    return msg
