"""gRPC servicers: translate messages to calls on the control plane and back.

No business logic here; that lives in control.instances, control.catalog,
control.images and control.hosts. Errors propagate as CloudError and are mapped by the interceptor.
"""

from __future__ import annotations

from collections import Counter

import grpc
from cloudapi.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    compute_pb2,
    compute_pb2_grpc,
    identity_pb2,
    identity_pb2_grpc,
)

from control import actions
from control.aggregates import Aggregate
from control.api import convert
from control.api.interceptors import current_caller
from control.api.paging import paged
from control.api.scaling_servicer import record_report
from control.errors import InvalidArgument, NotFound
from control.images import NewImage
from control.models import Flavor, Host, Resources, validate_name
from control.plane import ControlPlane
from control.quota import FIELDS
from control.scheduler import flavor_request
from control.states import VmState

CONSOLE_DEFAULT_BYTES = 64 * 1024


def caller_project(context: grpc.ServicerContext) -> str:
    """The project the caller's token acts in: every tenant query is scoped to it."""
    return current_caller().project


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


class ImageServicer(compute_pb2_grpc.ImageServiceServicer):
    def __init__(self, plane: ControlPlane):
        self.plane = plane

    def ListImages(self, request, context):
        images, token = paged("ListImages", self.plane.images.list(current_caller()),
                              lambda i: (i.name, i.project, i.id), request)
        return compute_pb2.ListImagesResponse(images=[convert.image(i) for i in images],
                                              next_page_token=token)

    def GetImage(self, request, context):
        return convert.image(self.plane.images.get(current_caller(), request.id_or_name))

    def CreateImage(self, request_iterator, context):
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("item") != "info":
            raise InvalidArgument("an image upload starts with the image's info")
        info = first.info
        new = NewImage(name=info.name, disk_format=info.disk_format, os=info.os,
                       visibility=info.visibility, min_disk_gb=info.min_disk_gb,
                       min_memory_mb=info.min_memory_mb, cmdline=info.cmdline)

        def data():
            for message in request_iterator:
                if message.WhichOneof("item") != "data":
                    raise InvalidArgument("an image upload has one info message, first")
                yield message.data.part, message.data.chunk

        return convert.image(self.plane.images.create(current_caller(), new, data()))

    def DeleteImage(self, request, context):
        self.plane.images.delete(current_caller(), request.id_or_name)
        return compute_pb2.DeleteImageResponse()


class InstanceServicer(compute_pb2_grpc.InstanceServiceServicer):
    def __init__(self, plane: ControlPlane):
        self.plane = plane

    def CreateInstance(self, request, context):
        instance = self.plane.instances.create(
            current_caller(), request.name, request.flavor, request.image, request.request_id,
            request.group, request.key_name, request.user_data)
        return convert.instance(instance)

    def CreateInstances(self, request, context):
        made = self.plane.scale_out.create(current_caller(), request.name, request.flavor,
                                           request.image, request.count, request.min_count,
                                           request.request_id, request.key_name,
                                           request.user_data, request.group)
        return compute_pb2.ListInstancesResponse(instances=[convert.instance(i) for i in made])

    def PreviewPlacement(self, request, context):
        caller = current_caller()
        validate_name(request.name, "instance name")
        flavor = self.plane.catalog.flavor(request.flavor, caller.project, caller.is_admin)
        self.plane.images.bootable(caller, request.image or self.plane.config.default_image)
        decision = self.plane.scheduler.preview(flavor_request(flavor))
        return compute_pb2.PlacementPreview(host=decision.hosts[0] if decision.hosts else "",
                                            summary=decision.summary, candidates=decision.hosts)

    def GetInstance(self, request, context):
        return convert.instance(self.plane.instances.get(caller_project(context),
                                                         request.id_or_name))

    def ListInstances(self, request, context):
        instances, token = paged("ListInstances", self.plane.instances.list(caller_project(context)),
                                 lambda i: (i.created_at, i.name, i.id), request)
        return compute_pb2.ListInstancesResponse(instances=[convert.instance(i) for i in instances],
                                                 next_page_token=token)

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

    def GetInstanceStats(self, request, context):
        instance = self.plane.instances.get(caller_project(context), request.id_or_name)
        if not instance.host or instance.vm_state is VmState.BUILDING:
            # No guest to ask yet (the agent may not have defined it).
            return agent_pb2.InstanceStats(power_state=instance.power_state.value)
        try:
            address = self.plane.hosts.get(instance.host).address
        except KeyError:
            raise NotFound(f"host of instance {request.id_or_name!r} is gone") from None
        return self.plane.agents.stats(address, instance.id)

    def GetConsoleOutput(self, request, context):
        instance = self.plane.instances.get(caller_project(context), request.id_or_name)
        if not instance.host:
            return compute_pb2.ConsoleOutput(output="")
        try:
            address = self.plane.hosts.get(instance.host).address
        except KeyError:
            raise NotFound(f"host of instance {request.id_or_name!r} is gone") from None
        output = self.plane.agents.console(address, instance.id,
                                           request.max_bytes or CONSOLE_DEFAULT_BYTES)
        return compute_pb2.ConsoleOutput(output=output.decode("utf-8", errors="replace"))


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


class KeypairServicer(compute_pb2_grpc.KeypairServiceServicer):
    def __init__(self, plane: ControlPlane):
        self.keypairs = plane.keypairs

    def CreateKeypair(self, request, context):
        keypair, private_key = self.keypairs.create(caller_project(context), request.name)
        return compute_pb2.CreatedKeypair(keypair=convert.keypair(keypair), private_key=private_key)

    def ImportKeypair(self, request, context):
        return convert.keypair(self.keypairs.import_(caller_project(context), request.name,
                                                     request.public_key))

    def ListKeypairs(self, request, context):
        keypairs, token = paged("ListKeypairs", self.keypairs.list(caller_project(context)),
                                lambda k: (k.name,), request)
        return compute_pb2.ListKeypairsResponse(keypairs=[convert.keypair(k) for k in keypairs],
                                                next_page_token=token)

    def DeleteKeypair(self, request, context):
        self.keypairs.delete(caller_project(context), request.name)
        return compute_pb2.DeleteKeypairResponse()


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


class HostAdminServicer(compute_pb2_grpc.HostAdminServiceServicer):
    """Admins' view of the hosts: capacity, usage, maintenance, zones, traits."""

    def __init__(self, plane: ControlPlane):
        self.plane = plane

    def _infos(self, hosts: list[Host]) -> list[compute_pb2.HostInfo]:
        """Hosts with their inventory, usage, instance count and aggregates
        (each read once for the whole list)."""
        placement = self.plane.placement
        counts = Counter(a.host for a in placement.allocations())
        providers = {p.host: p for p in placement.providers()} if len(hosts) > 1 else {
            h.name: found[0] for h in hosts if (found := placement.provider(h.name))}
        aggregates = self.plane.aggregates.all()
        down_after = self.plane.config.host_down_after_s
        return [convert.host_info(h, providers.get(h.name), counts.get(h.name, 0),
                                  h.is_up(down_after), aggregates) for h in hosts]

    def _info(self, host: Host) -> compute_pb2.HostInfo:
        return self._infos([host])[0]

    def _host(self, name: str) -> Host:
        try:
            return self.plane.hosts.get(name)
        except KeyError:
            raise NotFound(f"host {name!r} not found") from None

    def ListHosts(self, request, context):
        hosts, token = paged("ListHosts", self.plane.hosts.all(), lambda h: (h.name,), request)
        return compute_pb2.ListHostsResponse(hosts=self._infos(hosts) if hosts else [],
                                             next_page_token=token)

    def GetHost(self, request, context):
        return self._info(self._host(request.name))

    def UpdateHost(self, request, context):
        host = self.plane.hosts.update(
            request.name, enabled=request.enabled if request.HasField("enabled") else None,
            disabled_reason=request.disabled_reason,
            zone=request.zone if request.HasField("zone") else None,
            add_traits=list(request.add_traits), remove_traits=list(request.remove_traits))
        self.plane.scheduler.table.refresh(request.name)
        return self._info(host)

    def SetInventory(self, request, context):
        self._host(request.name)
        if request.HasField("allocation_ratio") and request.allocation_ratio <= 0:
            raise InvalidArgument("allocation_ratio must be above 0")
        if request.HasField("reserved") and request.reserved < 0:
            raise InvalidArgument("reserved must be 0 or more")
        self.plane.placement.set_inventory(
            request.name, request.resource_class,
            reserved=request.reserved if request.HasField("reserved") else None,
            allocation_ratio=request.allocation_ratio if request.HasField("allocation_ratio") else None)
        self.plane.scheduler.table.refresh(request.name)
        return self._info(self._host(request.name))

    def GetCapacity(self, request, context):
        flavor = self.plane.catalog.flavor(request.flavor, "", is_admin=True)
        slots = self.plane.scheduler.free_slots(flavor_request(flavor))
        hosts = [compute_pb2.HostCapacity(host=h, fits=n) for h, n in sorted(slots.items())]
        return compute_pb2.Capacity(flavor=flavor.name, total=sum(h.fits for h in hosts),
                                    hosts=hosts)

    def CreateAggregate(self, request, context):
        a = request.aggregate
        created = self.plane.aggregates.create(Aggregate(name=a.name, zone=a.zone,
                                                         traits=list(a.traits)))
        self.plane.scheduler.table.refresh()
        return convert.aggregate(created)

    def ListAggregates(self, request, context):
        aggregates, token = paged("ListAggregates", self.plane.aggregates.all(),
                                  lambda a: (a.name,), request)
        return compute_pb2.ListAggregatesResponse(
            aggregates=[convert.aggregate(a) for a in aggregates], next_page_token=token)

    def DeleteAggregate(self, request, context):
        self.plane.aggregates.delete(request.name)
        self.plane.scheduler.table.refresh()
        return compute_pb2.DeleteAggregateResponse()

    def AddHostToAggregate(self, request, context):
        return self._membership(request, True)

    def RemoveHostFromAggregate(self, request, context):
        return self._membership(request, False)

    def _membership(self, request, member: bool) -> compute_pb2.Aggregate:
        updated = self.plane.aggregates.set_member(request.aggregate, request.host, member)
        self.plane.scheduler.table.refresh()
        return convert.aggregate(updated)

    def GetStoreStatus(self, request, context):
        store, config = self.plane.store, self.plane.config
        members = [compute_pb2.StoreMember(
            endpoint=m.endpoint, id=f"{m.member_id:x}" if m.member_id else "", version=m.version,
            db_size_bytes=m.db_size, db_size_in_use_bytes=m.db_size_in_use, leader=m.is_leader,
            revision=m.revision, error=m.error) for m in store.member_statuses()]
        alarms = [f"{alarm} on {member_id:x}" for member_id, alarm in store.alarms()]
        return compute_pb2.StoreStatus(members=members, quota_bytes=config.etcd_quota_bytes,
                                       alarms=alarms, history=config.etcd_history)


class HostServicer(agent_pb2_grpc.HostServiceServicer):
    """Called by compute agents, not tenants."""

    def __init__(self, plane: ControlPlane):
        self.plane = plane

    def RegisterHost(self, request, context):
        inv = request.inventory
        totals = Resources(vcpus=inv.vcpus, memory_mb=inv.memory_mb, disk_gb=inv.disk_gb)
        self.plane.hosts.register(request.name, request.address, totals, request.virt_type,
                                  request.hypervisor)
        self.plane.placement.report_inventory(request.name, totals)
        return agent_pb2.RegisterHostResponse(
            heartbeat_interval_s=self.plane.config.heartbeat_interval_s,
            metrics_interval_s=self.plane.config.metrics_interval_s)

    def Heartbeat(self, request, context):
        known = self.plane.hosts.heartbeat(
            request.name,
            [(o.instance_id, o.power_state, list(o.addresses)) for o in request.instances],
            request.observed_at)
        if not known:
            context.abort(grpc.StatusCode.NOT_FOUND, f"host {request.name} is not registered")
        return agent_pb2.HeartbeatResponse()

    def ReportMetrics(self, request, context):
        record_report(self.plane, request)  # into Redis, not etcd: control/metrics.py
        return agent_pb2.ReportMetricsResponse()

    def FetchImageFile(self, request, context):
        self.plane.images.by_id(request.image_id)  # NOT_FOUND for an unknown (or deleted) image
        for chunk in self.plane.images.files.read(request.image_id, request.part):
            yield agent_pb2.ImageFileChunk(data=chunk)
