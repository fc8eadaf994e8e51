"""What compute agents call (over mTLS): register, heartbeat, metrics, image files.

Messages to calls on the control plane and back; no business logic here.
Errors propagate as CloudError and are mapped by the interceptor.
"""


from __future__ import annotations

import grpc
from cloudapi.v1 import (
    agent_pb2,
    agent_pb2_grpc,
)

from control.api import convert
from control.api.scaling import record_report
from control.models import Resources
from control.plane import ControlPlane


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
        record_report(self.plane, request)  # into Redis, not etcd: control/metering/metrics.py
        return agent_pb2.ReportMetricsResponse()

    def FetchImageFile(self, request, context):
        self.plane.images.by_id(request.image_id)  # NOT_FOUND for an unknown (or deleted) image
        for chunk in self.plane.images.files.read(request.image_id, request.part):
            yield agent_pb2.ImageFileChunk(data=chunk)

    def GetHostNetworks(self, request, context):
        # The host is the one its certificate names: a host learns only what it
        # must make, never another's view. (host_auth imports this module.)
        from control.api.host_auth import peer_identity

        return convert.host_networks(self.plane.networks.host_view(peer_identity(context).name))
