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
from control.identity.quotas import FIELDS, NAME, UNLIMITED
from control.plane import ControlPlane

INT32_MAX = 2**31 - 1


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
        # Other named resources first: an instance quota set by its own field wins.
        changes = {**request.resources, **{f: getattr(request, f) for f in FIELDS if request.HasField(f)}}
        for name, value in changes.items():
            if not NAME.fullmatch(name):
                raise InvalidArgument(f"invalid quota name {name!r}: 1 to 63 of a-z 0-9 _, "
                                      "starting with a letter")
            if value < UNLIMITED:
                raise InvalidArgument(f"quota {name} must be -1 (unlimited) or more, not {value}")
            if name in FIELDS and value > INT32_MAX:  # their wire fields are int32
                raise InvalidArgument(f"quota {name} must be at most {INT32_MAX}, not {value}")
        self.plane.quotas.set_limits(request.project, changes)
        return self._quota(request.project)
