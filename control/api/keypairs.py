"""Keypairs: SSH public keys given to guests.

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
