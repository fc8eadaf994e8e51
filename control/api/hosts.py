"""Admins' view of the hosts: capacity, usage, maintenance, zones, traits, the store.

Messages to calls on the control plane and back; no business logic here.
Errors propagate as CloudError and are mapped by the interceptor.
"""


from __future__ import annotations

from collections import Counter

from cloudapi.v1 import (
    compute_pb2,
    compute_pb2_grpc,
)

from control.api import convert
from control.api.paging import paged
from control.errors import InvalidArgument
from control.models import Host
from control.placement.aggregates import Aggregate
from control.placement.scheduler import flavor_request
from control.plane import ControlPlane


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
        return self.plane.hosts.get(name)

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
