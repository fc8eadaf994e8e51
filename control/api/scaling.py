"""gRPC servicers of proto/cloudapi/v1/scaling.proto: MetricsService and
ScalingGroupService; and the agents' metrics reports (HostService.ReportMetrics).

Translation only: the logic is in control.metering.metrics and control.autoscaling.groups. Every
call is scoped to the caller's project: another project's instance or group is
NOT_FOUND, as it is for instances.
"""

from __future__ import annotations

from cloudapi.v1 import agent_pb2, scaling_pb2, scaling_pb2_grpc
from google.protobuf.timestamp_pb2 import Timestamp

from control.api.interceptors import current_caller
from control.api.paging import paged
from control.autoscaling.groups import ScalingGroup, TargetPolicy, member_status
from control.metering.metrics import RawSample, Summary
from control.models import Instance
from control.plane import ControlPlane


def _ts(seconds: float | None) -> Timestamp | None:
    if not seconds:
        return None
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def record_report(plane: ControlPlane, request: agent_pb2.ReportMetricsRequest) -> None:
    """An agent's report of its running instances' counters, into the metrics store."""
    plane.metrics.record(request.name, [
        RawSample(instance_id=s.instance_id, sampled_at=s.sampled_at, cpu_time_ns=s.cpu_time_ns,
                  vcpus=s.vcpus, memory_available_kb=s.memory_available_kb,
                  memory_unused_kb=s.memory_unused_kb, memory_usable_kb=s.memory_usable_kb,
                  disk_read_bytes=s.disk_read_bytes, disk_write_bytes=s.disk_write_bytes)
        for s in request.samples if s.instance_id])


def instance_metrics(summary: Summary, name: str, samples: bool) -> scaling_pb2.InstanceMetrics:
    msg = scaling_pb2.InstanceMetrics(
        instance_id=summary.instance_id, instance_name=name, window_s=summary.window_s,
        updated_at=_ts(summary.updated_at), fresh=summary.fresh, vcpus=summary.vcpus,
        cpu_utilisation=round(summary.cpu_utilisation, 2),
        memory_used_kb=summary.memory_used_kb, memory_available_kb=summary.memory_available_kb,
        disk_read_bytes_per_s=summary.disk_read_bytes_per_s,
        disk_write_bytes_per_s=summary.disk_write_bytes_per_s)
    if samples:
        msg.samples.extend(scaling_pb2.MetricSample(
            time=_ts(p.time), cpu_utilisation=round(p.cpu_utilisation, 2),
            memory_used_kb=p.memory_used_kb, memory_available_kb=p.memory_available_kb,
            disk_read_bytes_per_s=p.disk_read_bytes_per_s,
            disk_write_bytes_per_s=p.disk_write_bytes_per_s) for p in summary.points)
    return msg


def scaling_group(group: ScalingGroup, members: list[Instance]) -> scaling_pb2.ScalingGroup:
    msg = scaling_pb2.ScalingGroup(
        name=group.name, flavor=group.flavor, image=group.image, key_name=group.key_name,
        min_size=group.min_size, max_size=group.max_size, desired=group.desired,
        server_group_policy=group.server_group_policy, server_group=group.server_group,
        status=group.status, last_error=group.last_error, last_error_at=_ts(group.last_error_at),
        last_scaled_at=_ts(group.last_scaled_at), last_scaling_reason=group.last_scaling_reason,
        created_at=_ts(group.created_at),
        current=sum(1 for m in members if member_status(m) != "DELETING"))
    if group.policy is not None:
        msg.policy.CopyFrom(scaling_pb2.TargetTrackingPolicy(
            metric=group.policy.metric, target=group.policy.target,
            scale_out_cooldown_s=group.policy.scale_out_cooldown_s,
            scale_in_cooldown_s=group.policy.scale_in_cooldown_s))
    msg.members.extend(scaling_pb2.ScalingGroupMember(
        id=m.id, name=m.name, status=member_status(m), host=m.host, created_at=_ts(m.created_at),
        fault=m.fault.message if m.fault else "") for m in members)
    return msg


class MetricsServicer(scaling_pb2_grpc.MetricsServiceServicer):
    def __init__(self, plane: ControlPlane):
        self.plane = plane

    def GetInstanceMetrics(self, request, context):
        instance = self.plane.instances.get(current_caller().project, request.id_or_name)
        summary = self.plane.metrics.summary(instance.id, request.window_s)
        return instance_metrics(summary, instance.name, samples=True)

    def GetGroupMetrics(self, request, context):
        project = current_caller().project
        group = self.plane.scaling.get(project, request.name)
        members = [m for m in self.plane.scaling.members(project).get(group.name, [])
                   if member_status(m) != "DELETING"]
        summaries = self.plane.metrics.summaries([m.id for m in members], request.window_s)
        fresh = [s for s in summaries.values() if s.fresh]
        result = scaling_pb2.GroupMetrics(
            group=group.name, window_s=request.window_s or self.plane.metrics.window_s,
            members=len(members), reporting=len(fresh), desired=group.desired,
            min_size=group.min_size, max_size=group.max_size,
            instances=[instance_metrics(summaries[m.id], m.name, samples=False)
                       for m in members])
        if fresh:
            result.cpu_utilisation = round(sum(s.cpu_utilisation for s in fresh) / len(fresh), 2)
            result.memory_used_kb = sum(s.memory_used_kb for s in fresh) // len(fresh)
            result.disk_read_bytes_per_s = sum(s.disk_read_bytes_per_s for s in fresh) / len(fresh)
            result.disk_write_bytes_per_s = sum(s.disk_write_bytes_per_s for s in fresh) / len(fresh)
        return result


class ScalingGroupServicer(scaling_pb2_grpc.ScalingGroupServiceServicer):
    def __init__(self, plane: ControlPlane):
        self.plane = plane

    def _group(self, group: ScalingGroup) -> scaling_pb2.ScalingGroup:
        members = self.plane.scaling.members(group.project).get(group.name, [])
        return scaling_group(group, members)

    def CreateScalingGroup(self, request, context):
        policy = None
        if request.HasField("policy") and request.policy.target:
            p = request.policy
            policy = TargetPolicy(metric=p.metric or "cpu_utilisation", target=p.target,
                                  scale_out_cooldown_s=p.scale_out_cooldown_s,
                                  scale_in_cooldown_s=p.scale_in_cooldown_s)
        group = self.plane.scaling.create(
            current_caller(), request.name, request.flavor, request.image, request.key_name,
            request.min_size, request.max_size, request.desired, request.server_group_policy,
            policy, request.request_id)
        return self._group(group)

    def GetScalingGroup(self, request, context):
        return self._group(self.plane.scaling.get(current_caller().project, request.name))

    def ListScalingGroups(self, request, context):
        project = current_caller().project
        page, next_token = paged("ListScalingGroups", self.plane.scaling.list(project),
                                 lambda g: (g.name,), request)
        members = self.plane.scaling.members(project) if page else {}
        return scaling_pb2.ListScalingGroupsResponse(
            groups=[scaling_group(g, members.get(g.name, [])) for g in page],
            next_page_token=next_token)

    def SetDesired(self, request, context):
        caller = current_caller()
        self.plane.instances._check_request_id(request.request_id)
        return self._group(self.plane.scaling.set_desired(caller, request.name, request.desired))

    def DeleteScalingGroup(self, request, context):
        caller = current_caller()
        self.plane.instances._check_request_id(request.request_id)
        return self._group(self.plane.scaling.delete(caller, request.name))
