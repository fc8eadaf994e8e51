"""Server groups: affinity and anti-affinity of a project's instances.

Messages to calls on the control plane and back; no business logic here.
Errors propagate as CloudError and are mapped by the interceptor.
"""


from __future__ import annotations

from cloudapi.v1 import (
    compute_pb2,
    compute_pb2_grpc,
)

from control.api import convert
from control.api.interceptors import caller_project
from control.api.paging import paged
from control.plane import ControlPlane


class ServerGroupServicer(compute_pb2_grpc.ServerGroupServiceServicer):
    def __init__(self, plane: ControlPlane):
        self.groups = plane.groups

    def CreateServerGroup(self, request, context):
        return convert.server_group(self.groups.create(caller_project(context), request.name,
                                                       request.policy))

    def GetServerGroup(self, request, context):
        return convert.server_group(self.groups.get(caller_project(context), request.name))

    def ListServerGroups(self, request, context):
        groups, token = paged("ListServerGroups", self.groups.list(caller_project(context)),
                              lambda g: (g.name,), request)
        return compute_pb2.ListServerGroupsResponse(
            groups=[convert.server_group(g) for g in groups], next_page_token=token)

    def DeleteServerGroup(self, request, context):
        self.groups.delete(caller_project(context), request.name)
        return compute_pb2.DeleteServerGroupResponse()
