"""Identity: login and tokens, projects, users and roles.

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
from control.api.paging import paged
from control.plane import ControlPlane


class IdentityServicer(identity_pb2_grpc.IdentityServiceServicer):
    def __init__(self, plane: ControlPlane):
        self.plane = plane
        self.identity = plane.identity

    def Login(self, request, context):
        secret, caller = self.identity.login(request.username, request.password, request.project)
        return convert.token(caller, secret)

    def Logout(self, request, context):
        self.identity.revoke(current_caller().token_hash)
        return identity_pb2.LogoutResponse()

    def WhoAmI(self, request, context):
        return convert.token(current_caller())

    def RevokeUserTokens(self, request, context):
        self.identity.user(request.username)
        return identity_pb2.RevokeUserTokensResponse(
            revoked=self.identity.revoke_user(request.username))

    def CreateProject(self, request, context):
        return convert.project(self.identity.create_project(request.name, request.description))

    def ListProjects(self, request, context):
        projects, token = paged("ListProjects", self.identity.projects(), lambda p: (p.name,),
                                request)
        return identity_pb2.ListProjectsResponse(projects=[convert.project(p) for p in projects],
                                                 next_page_token=token)

    def DeleteProject(self, request, context):
        self.identity.delete_project(request.name)
        return identity_pb2.DeleteProjectResponse()

    def _user(self, name: str) -> identity_pb2.User:
        return convert.user(self.identity.user(name), self.identity.roles_of(name))

    def CreateUser(self, request, context):
        user, generated = self.identity.create_user(request.name, request.password,
                                                    request.project, request.role or "member")
        return identity_pb2.CreateUserResponse(user=self._user(user.name),
                                               generated_password=generated)

    def ListUsers(self, request, context):
        users, token = paged("ListUsers", self.identity.users(), lambda u: (u.name,), request)
        return identity_pb2.ListUsersResponse(
            users=[convert.user(u, self.identity.roles_of(u.name)) for u in users],
            next_page_token=token)

    def DeleteUser(self, request, context):
        self.identity.delete_user(request.name)
        return identity_pb2.DeleteUserResponse()

    def AddRole(self, request, context):
        self.identity.add_role(request.username, request.project, request.role)
        return self._user(request.username)

    def RemoveRole(self, request, context):
        self.identity.remove_role(request.username, request.project)
        return self._user(request.username)
