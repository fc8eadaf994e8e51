"""Instances: create (one or many), lifecycle, stats, console, actions.

Messages to calls on the control plane and back; no business logic here.
Errors propagate as CloudError and are mapped by the interceptor.
"""


from __future__ import annotations

from cloudapi.v1 import (
    agent_pb2,
    compute_pb2,
    compute_pb2_grpc,
)

from control.api import convert
from control.api.interceptors import caller_project, current_caller
from control.api.paging import paged
from control.compute import actions
from control.compute.states import VmState
from control.errors import InvalidArgument, NotFound
from control.models import validate_name
from control.placement.scheduler import flavor_request
from control.plane import ControlPlane

CONSOLE_DEFAULT_BYTES = 64 * 1024


class InstanceServicer(compute_pb2_grpc.InstanceServiceServicer):
    def __init__(self, plane: ControlPlane):
        self.plane = plane

    def CreateInstance(self, request, context):
        instance = self.plane.instances.create(
            current_caller(), request.name, request.flavor, request.image, request.request_id,
            request.group, request.key_name, request.user_data, networks=list(request.networks),
            security_groups=list(request.security_groups))
        return convert.instance(instance)

    def CreateInstances(self, request, context):
        made = self.plane.scale_out.create(current_caller(), request.name, request.flavor,
                                           request.image, request.count, request.min_count,
                                           request.request_id, request.key_name,
                                           request.user_data, request.group,
                                           list(request.security_groups))
        return compute_pb2.ListInstancesResponse(instances=[convert.instance(i) for i in made])

    def PreviewPlacement(self, request, context):
        caller = current_caller()
        validate_name(request.name, "instance name")
        flavor = self.plane.catalog.flavor(request.flavor, caller.project, caller.is_admin)
        self.plane.images.bootable(caller, request.image or self.plane.config.default_image)
        decision = self.plane.scheduler.preview(flavor_request(flavor))
        return compute_pb2.PlacementPreview(host=decision.hosts[0] if decision.hosts else "",
                                            summary=decision.summary, candidates=decision.hosts)

    def _floating(self, project: str, instances) -> dict[tuple[str, str], str]:
        """The floating IPs on these instances' NICs (read only if one has NICs)."""
        if not any(i.nics for i in instances):
            return {}
        return self.plane.floating_ips.of_instances(project)

    def GetInstance(self, request, context):
        project = caller_project(context)
        instance = self.plane.instances.get(project, request.id_or_name)
        return convert.instance(instance, self._floating(project, [instance]))

    def ListInstances(self, request, context):
        project = caller_project(context)
        instances, token = paged("ListInstances", self.plane.instances.list(project),
                                 lambda i: (i.created_at, i.name, i.id), request)
        floating = self._floating(project, instances)
        return compute_pb2.ListInstancesResponse(
            instances=[convert.instance(i, floating) for i in instances], next_page_token=token)

    def DeleteInstance(self, request, context):
        caller = current_caller()
        return convert.instance(self.plane.instances.delete(caller.project, request.id_or_name,
                                                            caller.username, request.request_id))

    def StopInstance(self, request, context):
        return convert.instance(self.plane.lifecycle.stop(current_caller(), request.id_or_name,
                                                          request.request_id))

    def StartInstance(self, request, context):
        return convert.instance(self.plane.lifecycle.start(current_caller(), request.id_or_name,
                                                           request.request_id))

    def RebootInstance(self, request, context):
        return convert.instance(self.plane.lifecycle.reboot(current_caller(), request.id_or_name,
                                                            request.hard, request.request_id))

    def ScaleInstance(self, request, context):
        return convert.instance(self.plane.lifecycle.scale(
            current_caller(), request.id_or_name, request.vcpus, request.memory_mb, request.disk_gb,
            request.request_id))

    def ResizeInstance(self, request, context):
        return convert.instance(self.plane.lifecycle.resize(current_caller(), request.id_or_name,
                                                            request.flavor, request.request_id))

    def RenameInstance(self, request, context):
        return convert.instance(self.plane.lifecycle.rename(current_caller(), request.id_or_name,
                                                            request.name, request.request_id))

    def ListInstanceActions(self, request, context):
        project = caller_project(context)
        instance = self.plane.instances.get(project, request.id_or_name)
        # Actions are only ever appended: their position is a stable key.
        page, token = paged("ListInstanceActions",
                            list(enumerate(actions.history(self.plane.store, project, instance.id))),
                            lambda p: (p[0],), request)
        return compute_pb2.ListInstanceActionsResponse(
            actions=[convert.action(a) for _, a in page], next_page_token=token)

    def _host_address(self, instance, id_or_name: str) -> str:
        host = self.plane.hosts.find(instance.host)
        if host is None:
            raise NotFound(f"host of instance {id_or_name!r} is gone")
        return host.address

    def GetInstanceStats(self, request, context):
        instance = self.plane.instances.get(caller_project(context), request.id_or_name)
        if not instance.host or instance.vm_state is VmState.BUILDING:
            # No guest to ask yet (the agent may not have defined it).
            return agent_pb2.InstanceStats(power_state=instance.power_state.value)
        address = self._host_address(instance, request.id_or_name)
        return self.plane.agents.stats(address, instance.id)

    def SetInstanceSecurityGroups(self, request, context):
        project = caller_project(context)
        if not self.plane.config.tenant_networks:
            raise InvalidArgument("this cloud has no tenant networks (tenant_networks is off): "
                                  "instances have no security groups")
        instance = self.plane.security_groups.set_for_instance(
            project, lambda: self.plane.instances.record(project, request.id_or_name),
            list(request.security_groups))
        return convert.instance(instance, self._floating(project, [instance]))

    def GetConsoleOutput(self, request, context):
        instance = self.plane.instances.get(caller_project(context), request.id_or_name)
        if not instance.host:
            return compute_pb2.ConsoleOutput(output="")
        address = self._host_address(instance, request.id_or_name)
        output = self.plane.agents.console(address, instance.id,
                                           request.max_bytes or CONSOLE_DEFAULT_BYTES)
        return compute_pb2.ConsoleOutput(output=output.decode("utf-8", errors="replace"))
