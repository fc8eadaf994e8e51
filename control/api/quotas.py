"""Quotas: a project's limits and what it uses.

Messages to calls on the control plane and back; no business logic here.
Errors propagate as CloudError and are mapped by the interceptor.
"""


from __future__ import annotations

from cloudapi.v1 import (
    identity_pb2,
    identity_pb2_grpc,
)

from control.api import convert
from control.api.interceptors import current_caller
from control.errors import InvalidArgument, NotFound
from control.identity.quotas import FIELDS
from control.plane import ControlPlane


class QuotaServicer(identity_pb2_grpc.QuotaServiceServicer):
    def __init__(self, plane: ControlPlane):
        self.plane = plane

    def _quota(self, project: str) -> identity_pb2.Quota:
        return identity_pb2.Quota(
            project=project, limits=convert.quota_values(self.plane.quotas.limits(project)),
            usage=convert.quota_values(self.plane.quotas.usage(project)))

    def GetQuota(self, request, context):
        caller = current_caller()
        project = request.project or caller.project
        if project != caller.project and not caller.is_admin:
            raise NotFound(f"project {project!r} not found")
        self.plane.identity.project(project)
        return self._quota(project)

    def SetQuota(self, request, context):
        self.plane.identity.project(request.project)
        changes = {f: getattr(request, f) for f in FIELDS if request.HasField(f)}
        for field, value in changes.items():
            if value < -1:
                raise InvalidArgument(f"quota {field} must be -1 (unlimited) or more, not {value}")
        self.plane.quotas.set_limits(request.project, changes)
        return self._quota(request.project)
