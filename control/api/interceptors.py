"""Cross-cutting concerns of every RPC: request ids in logs, and domain errors
mapped to gRPC status codes in one place."""

from __future__ import annotations

import logging
import uuid

import grpc

from control import errors

log = logging.getLogger("control.api")

CODES: list[tuple[type[errors.CloudError], grpc.StatusCode]] = [
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.Conflict, grpc.StatusCode.ABORTED),
    (errors.InvalidTransition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
]


def status_code(exc: errors.CloudError) -> grpc.StatusCode:
    for cls, code in CODES:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


class ErrorInterceptor(grpc.ServerInterceptor):
    """Gives each call a request id (from `x-request-id` metadata, or a new
    one), logs it, and turns CloudError into the matching status code."""

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = handler_call_details.method
        metadata = dict(handler_call_details.invocation_metadata or ())
        call_id = metadata.get("x-request-id") or uuid.uuid4().hex[:12]
        inner = handler.unary_unary

        def call(request, context):
            try:
                return inner(request, context)
            except errors.CloudError as exc:
                code = status_code(exc)
                log.info("req=%s %s -> %s: %s", call_id, method, code.name, exc)
                context.abort(code, str(exc))
            except Exception:
                log.exception("req=%s %s failed", call_id, method)
                context.abort(grpc.StatusCode.INTERNAL, f"internal error (request {call_id})")

        return grpc.unary_unary_rpc_method_handler(
            call, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)
