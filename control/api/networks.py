"""Networks and floating IPs of the caller's project (NetworkService).

Messages to calls on the control plane and back; no business logic here.
Errors propagate as CloudError and are mapped by the interceptor.
"""

from __future__ import annotations

from cloudapi.v1 import network_pb2, network_pb2_grpc

from control.api import convert
from control.api.interceptors import caller_project, current_caller
from control.api.paging import paged
from control.plane import ControlPlane


class NetworkServicer(network_pb2_grpc.NetworkServiceServicer):
    def __init__(self, plane: ControlPlane):
        self.networks = plane.networks
        self.floating_ips = plane.floating_ips

    def _network(self, network) -> network_pb2.Network:
        return convert.network(network, self.networks.usage(network))

    def CreateNetwork(self, request, context):
        return self._network(self.networks.create(caller_project(context), request.name,
                                                  request.cidr))

    def GetNetwork(self, request, context):
        return self._network(self.networks.get(caller_project(context), request.id_or_name))

    def ListNetworks(self, request, context):
        networks, token = paged("ListNetworks", self.networks.list(caller_project(context)),
                                lambda n: (n.name,), request)
        return network_pb2.ListNetworksResponse(networks=[self._network(n) for n in networks],
                                                next_page_token=token)

    def DeleteNetwork(self, request, context):
        self.networks.delete(caller_project(context), request.id_or_name)
        return network_pb2.DeleteNetworkResponse()

    def CreateFloatingIp(self, request, context):
        return convert.floating_ip(self.floating_ips.create(current_caller(), request.request_id))

    def ListFloatingIps(self, request, context):
        found, token = paged("ListFloatingIps", self.floating_ips.list(caller_project(context)),
                             lambda f: (f.address,), request)
        return network_pb2.ListFloatingIpsResponse(
            floating_ips=[convert.floating_ip(f) for f in found], next_page_token=token)

    def AttachFloatingIp(self, request, context):
        return convert.floating_ip(self.floating_ips.attach(
            caller_project(context), request.address, request.instance, request.network))

    def DetachFloatingIp(self, request, context):
        return convert.floating_ip(self.floating_ips.detach(caller_project(context), request.address))

    def DeleteFloatingIp(self, request, context):
        self.floating_ips.delete(caller_project(context), request.address)
        return network_pb2.DeleteFloatingIpResponse()
