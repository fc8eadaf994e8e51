"""Flavors (instance types): listing for tenants, changes for admins.

Messages to calls on the control plane and back; no business logic here.
Errors propagate as CloudError and are mapped by the interceptor.
"""


from __future__ import annotations

from cloudapi.v1 import (
    compute_pb2,
    compute_pb2_grpc,
)

from control.api import convert
from control.api.interceptors import current_caller
from control.api.paging import paged
from control.models import Flavor
from control.plane import ControlPlane


class FlavorServicer(compute_pb2_grpc.FlavorServiceServicer):
    def __init__(self, plane: ControlPlane):
        self.plane = plane

    def ListFlavors(self, request, context):
        caller = current_caller()
        flavors, token = paged("ListFlavors", self.plane.catalog.flavors(caller.project, caller.is_admin),
                               lambda f: (f.memory_mb, f.vcpus, f.disk_gb, f.name), request)
        return compute_pb2.ListFlavorsResponse(flavors=[convert.flavor(f) for f in flavors],
                                               next_page_token=token)

    def GetFlavor(self, request, context):
        caller = current_caller()
        return convert.flavor(self.plane.catalog.flavor(request.name, caller.project,
                                                        caller.is_admin))

    def CreateFlavor(self, request, context):
        f = request.flavor
        for project in f.projects:
            self.plane.identity.project(project)
        return convert.flavor(self.plane.catalog.create_flavor(Flavor(
            name=f.name, vcpus=f.vcpus, memory_mb=f.memory_mb, disk_gb=f.disk_gb,
            public=f.public, projects=list(f.projects), required_traits=list(f.required_traits),
            forbidden_traits=list(f.forbidden_traits), zone=f.zone)))

    def DeleteFlavor(self, request, context):
        self.plane.catalog.delete_flavor(request.name)
        return compute_pb2.DeleteFlavorResponse()
