"""Security groups and their rules, of the caller's project (SecurityGroupService).

Messages to calls on the control plane and back; no business logic here.
Errors propagate as CloudError and are mapped by the interceptor.
"""

from __future__ import annotations

from cloudapi.v1 import security_group_pb2, security_group_pb2_grpc

from control.api import convert
from control.api.interceptors import caller_project
from control.api.paging import paged
from control.models import SecurityGroup
from control.plane import ControlPlane


class SecurityGroupServicer(security_group_pb2_grpc.SecurityGroupServiceServicer):
    def __init__(self, plane: ControlPlane):
        self.groups = plane.security_groups

    def _group(self, group: SecurityGroup, names: dict[str, str] | None = None,
               ) -> security_group_pb2.SecurityGroup:
        # Remote groups' names: only read when a rule names another group.
        if names is None:
            names = {group.id: group.name}
            if any(r.remote_group_id not in ("", group.id) for r in group.rules):
                names = self.groups.names(group.project)
        return convert.security_group(group, names)

    def CreateSecurityGroup(self, request, context):
        return self._group(self.groups.create(caller_project(context), request.name,
                                              request.description, request.request_id))

    def GetSecurityGroup(self, request, context):
        return self._group(self.groups.get(caller_project(context), request.id_or_name))

    def ListSecurityGroups(self, request, context):
        everyone = self.groups.list(caller_project(context))
        names = {g.id: g.name for g in everyone}
        found, token = paged("ListSecurityGroups", everyone, lambda g: (g.name,), request)
        return security_group_pb2.ListSecurityGroupsResponse(
            security_groups=[self._group(g, names) for g in found], next_page_token=token)

    def DeleteSecurityGroup(self, request, context):
        self.groups.delete(caller_project(context), request.id_or_name)
        return security_group_pb2.DeleteSecurityGroupResponse()

    def CreateSecurityGroupRule(self, request, context):
        project = caller_project(context)
        group, rule = self.groups.create_rule(
            project, request.security_group, request.direction, request.protocol, request.port_min,
            request.port_max, request.remote_cidr, request.remote_group, request.request_id)
        names = {group.id: group.name}
        if rule.remote_group_id not in ("", group.id):
            names = self.groups.names(project)
        return convert.security_group_rule(group.id, rule, names)

    def DeleteSecurityGroupRule(self, request, context):
        self.groups.delete_rule(caller_project(context), request.id)
        return security_group_pb2.DeleteSecurityGroupRuleResponse()
