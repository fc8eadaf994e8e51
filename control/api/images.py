"""Images: upload (streamed), listing, deletion.

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
from control.errors import InvalidArgument
from control.images.catalog import NewImage
from control.plane import ControlPlane


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
