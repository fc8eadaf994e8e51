"""gRPC servicers: translate messages to calls on the control plane and back.

No business logic here; that lives in control.instances, control.catalog and
control.hosts. Errors propagate as CloudError and are mapped by the interceptor.
"""

from __future__ import annotations

import grpc
from cloudapi.v1 import agent_pb2, agent_pb2_grpc, compute_pb2, compute_pb2_grpc

from control.api import convert
from control.models import Resources
from control.plane import ControlPlane

# Until identity lands (projects, users, tokens), every caller acts in this project.
DEFAULT_PROJECT = "default"

CONSOLE_DEFAULT_BYTES = 64 * 1024


def caller_project(context: grpc.ServicerContext) -> str:
    return DEFAULT_PROJECT


class FlavorServicer(compute_pb2_grpc.FlavorServiceServicer):
    def __init__(self, plane: ControlPlane):
        self.plane = plane

    def ListFlavors(self, request, context):
        return compute_pb2.ListFlavorsResponse(
            flavors=[convert.flavor(f) for f in self.plane.catalog.flavors()])

    def GetFlavor(self, request, context):
        return convert.flavor(self.plane.catalog.flavor(request.name))


class ImageServicer(compute_pb2_grpc.ImageServiceServicer):
    def __init__(self, plane: ControlPlane):
        self.plane = plane

    def ListImages(self, request, context):
        return compute_pb2.ListImagesResponse(
            images=[convert.image(i) for i in self.plane.catalog.images()])

    def GetImage(self, request, context):
        return convert.image(self.plane.catalog.image(request.id_or_name))


class InstanceServicer(compute_pb2_grpc.InstanceServiceServicer):
    def __init__(self, plane: ControlPlane):
        self.plane = plane

    def CreateInstance(self, request, context):
        instance = self.plane.instances.create(
            caller_project(context), request.name, request.flavor, request.image,
            request.request_id)
        return convert.instance(instance)

    def GetInstance(self, request, context):
        return convert.instance(self.plane.instances.get(caller_project(context),
                                                         request.id_or_name))

    def ListInstances(self, request, context):
        instances = self.plane.instances.list(caller_project(context))
        return compute_pb2.ListInstancesResponse(instances=[convert.instance(i) for i in instances])

    def DeleteInstance(self, request, context):
        return convert.instance(self.plane.instances.delete(caller_project(context),
                                                            request.id_or_name))

    def GetConsoleOutput(self, request, context):
        instance = self.plane.instances.get(caller_project(context), request.id_or_name)
        if not instance.host:
            return compute_pb2.ConsoleOutput(output="")
        address = self.plane.hosts.get(instance.host).address
        output = self.plane.agents.console(address, instance.id,
                                           request.max_bytes or CONSOLE_DEFAULT_BYTES)
        return compute_pb2.ConsoleOutput(output=output.decode("utf-8", errors="replace"))


class HostServicer(agent_pb2_grpc.HostServiceServicer):
    """Called by compute agents, not tenants."""

    def __init__(self, plane: ControlPlane):
        self.plane = plane

    def RegisterHost(self, request, context):
        inv = request.inventory
        self.plane.hosts.register(
            request.name, request.address,
            Resources(vcpus=inv.vcpus, memory_mb=inv.memory_mb, disk_gb=inv.disk_gb),
            request.virt_type, request.hypervisor)
        return agent_pb2.RegisterHostResponse(
            heartbeat_interval_s=self.plane.config.heartbeat_interval_s)

    def Heartbeat(self, request, context):
        known = self.plane.hosts.heartbeat(
            request.name,
            [(o.instance_id, o.power_state, list(o.addresses)) for o in request.instances])
        if not known:
            context.abort(grpc.StatusCode.NOT_FOUND, f"host {request.name} is not registered")
        return agent_pb2.HeartbeatResponse()
