"""UsageService: metered usage for billing (control/metering/usage.py), over gRPC.

A tenant (reader and up) sees its own project; only admins may name another,
and anyone else gets NOT_FOUND for it, as for any other tenant's resource."""

from __future__ import annotations

from cloudapi.v1 import usage_pb2 as pb
from cloudapi.v1 import usage_pb2_grpc
from google.protobuf.timestamp_pb2 import Timestamp

from control.api import paging
from control.api.interceptors import current_caller
from control.errors import InvalidArgument, NotFound
from control.metering.usage import Amounts, FlavorUsage, Metering, UsageRecord, record_order
from control.metering.usage import Usage as UsageModel
from control.plane import ControlPlane


def _ts(ms: int) -> Timestamp:
    ts = Timestamp()
    ts.FromMilliseconds(ms)
    return ts


def _ms(message, name: str) -> int | None:
    """A request's timestamp in milliseconds; INVALID_ARGUMENT for one outside
    what a Timestamp may hold (years 1 to 9999, nanos 0 to 999,999,999)."""
    if not message.HasField(name):
        return None
    try:
        return getattr(message, name).ToMilliseconds()
    except ValueError as exc:
        raise InvalidArgument(f"invalid {name}: {exc}") from None


def amounts(a: Amounts) -> pb.UsageAmounts:
    return pb.UsageAmounts(instance_ms=a.instance_ms, vcpu_ms=a.vcpu_ms, ram_mib_ms=a.ram_mib_ms,
                           disk_gib_ms=a.disk_gib_ms, instance_hours=a.instance_hours,
                           vcpu_hours=a.vcpu_hours, ram_gib_hours=a.ram_gib_hours,
                           disk_gib_hours=a.disk_gib_hours)


def usage(u: UsageModel) -> pb.Usage:
    return pb.Usage(total=amounts(u.total),
                    by_state={state: amounts(a) for state, a in u.by_state.items()})


def flavor_usage(f: FlavorUsage) -> pb.FlavorUsage:
    return pb.FlavorUsage(flavor=f.flavor, instances=len(f.instance_ids), usage=usage(f.usage))


def record(r: UsageRecord) -> pb.UsageRecord:
    whole = Amounts()
    whole.add(r, r.end_ms - r.start_ms)
    return pb.UsageRecord(project=r.project, instance_id=r.instance_id, name=r.name,
                          flavor=r.flavor, state=r.state, vcpus=r.vcpus, memory_mb=r.memory_mb,
                          disk_gb=r.disk_gb, start=_ts(r.start_ms), end=_ts(r.end_ms), open=r.open,
                          usage=amounts(whole))


class UsageServicer(usage_pb2_grpc.UsageServiceServicer):
    def __init__(self, plane: ControlPlane):
        self.plane = plane
        self.metering = Metering(plane.store)

    def _project(self, asked: str) -> str:
        caller = current_caller()
        project = asked or caller.project
        if project != caller.project and not caller.is_admin:
            raise NotFound(f"project {project!r} not found")
        self.plane.identity.project(project)  # NOT_FOUND for a project that does not exist
        return project

    def GetProjectUsage(self, request, context):
        project = self._project(request.project)
        report = self.metering.project_usage(project, _ms(request, "start"), _ms(request, "end"))
        instances = []
        for i in sorted(report.instances.values(), key=lambda i: i.instance_id):
            instances.append(pb.InstanceUsage(
                instance_id=i.instance_id, name=i.name, live=i.live, first=_ts(i.first_ms),
                last=_ts(i.last_ms), usage=usage(i.usage),
                flavors=[pb.FlavorUsage(flavor=name, instances=1, usage=usage(u))
                         for name, u in sorted(i.flavors.items())]))
        return pb.GetProjectUsageResponse(
            project=project, start=_ts(report.start_ms), end=_ts(report.end_ms),
            computed_at=_ts(report.now_ms), usage=usage(report.usage),
            flavors=[flavor_usage(f) for _, f in sorted(report.flavors.items())],
            instances=instances)

    def ListUsageRecords(self, request, context):
        project = self._project(request.project)
        records = self.metering.records(project, _ms(request, "start"), _ms(request, "end"),
                                        request.instance_id, request.include_open)
        page, token = paging.paged("ListUsageRecords", records, record_order, request)
        return pb.ListUsageRecordsResponse(records=[record(r) for r in page],
                                           next_page_token=token)
