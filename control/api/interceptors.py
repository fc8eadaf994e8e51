"""Cross-cutting concerns of every RPC, in one place: a request id for the logs,
authentication and the role check, and domain errors mapped to gRPC codes."""

from __future__ import annotations

import contextvars
import logging
import uuid
from collections.abc import Callable

import grpc

from control import deadlines, errors
from control.api.streams import StreamGuard, StreamOwner, peer_address, touching
from control.identity import policy
from control.identity.accounts import Caller

log = logging.getLogger("control.api")

CODES: list[tuple[type[errors.CloudError], grpc.StatusCode]] = [
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.Conflict, grpc.StatusCode.ABORTED),
    (errors.InvalidTransition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (errors.OutOfRange, grpc.StatusCode.OUT_OF_RANGE),
    (errors.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
]

_caller: contextvars.ContextVar[Caller] = contextvars.ContextVar("caller")


def current_caller() -> Caller:
    """The authenticated caller of the RPC being served."""
    return _caller.get()




def caller_project(context: grpc.ServicerContext) -> str:
    """The project the caller's token acts in: every tenant query is scoped to it."""
    return current_caller().project

def status_code(exc: errors.CloudError) -> grpc.StatusCode:
    for cls, code in CODES:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


# An error message echoes the request's input (a name, an id): it is cut to this
# many characters, so that the grpc-message header (percent-encoded: up to 12
# bytes a character) stays under gRPC's 8 KiB metadata limit. Past it, clients
# get RESOURCE_EXHAUSTED "metadata size exceeds" instead of the real status.
MAX_ERROR_CHARS = 500


def bounded(message: str) -> str:
    if len(message) <= MAX_ERROR_CHARS:
        return message
    return f"{message[:MAX_ERROR_CHARS]}... ({len(message)} characters)"


def bearer_token(metadata: dict[str, str]) -> str:
    value = metadata.get("authorization", "")
    return value[len("Bearer "):].strip() if value.startswith("Bearer ") else ""


def rewrap(handler, make, call):
    """A method handler like `handler` (same (de)serializers) that runs `call`."""
    return make(call, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)


class ApiInterceptor(grpc.ServerInterceptor):
    """For each call, streaming or not: request id (from `x-request-id`
    metadata, or a new one); the caller from the bearer token, checked against
    the policy; and CloudError turned into the matching status code.

    The public API server has no `check_host`: the agents' calls
    (policy.AGENT_PREFIXES) are refused there. The agent listener
    (control/api/host_auth.py) has one, called with (method, request, context)
    to check the peer's certificate, and serves nothing else.

    With a `guard`, every streaming call (public ones too) first takes a slot
    of its caller's share of the server's threads (control/api/streams.py)."""

    def __init__(self, authenticate: Callable[[str], Caller],
                 check_host: Callable[[str, object, grpc.ServicerContext], None] | None = None,
                 guard: StreamGuard | None = None):
        self.authenticate = authenticate
        self.check_host = check_host
        self.guard = guard

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        guard = self.guard
        if handler.unary_unary is None and policy.is_public(method):
            # gRPC's health Watch and reflection streams: no login, a small share.
            return handler if guard is None else _anonymous_stream(handler, method, guard)
        metadata = dict(handler_call_details.invocation_metadata or ())
        call_id = metadata.get("x-request-id") or uuid.uuid4().hex[:12]

        def enter(request, context) -> contextvars.Token | None:
            """Authenticate and authorize the call; the caller's context token."""
            if policy.is_agent_call(method):
                if self.check_host is None:
                    raise errors.PermissionDenied(
                        f"{method.rsplit('/', 1)[1]} is not served here (host calls go to the "
                        "control plane's agent listener, over mutual TLS)")
                self.check_host(method, request, context)
            elif self.check_host is not None and not policy.is_public(method):
                raise errors.PermissionDenied("the agent listener serves host calls only")
            elif not policy.is_public(method):
                caller = self.authenticate(bearer_token(metadata))
                action = policy.action_of(method)
                needed = policy.role_for(action)
                if not caller.has_role(needed):
                    raise errors.PermissionDenied(
                        f"role {caller.role} may not call {method.rsplit('/', 1)[1]} "
                        f"({action or 'an unlisted action'} needs {needed})")
                return _caller.set(caller)
            return None

        def fail(exc: Exception, context) -> None:
            if context.code() is not None:
                raise exc  # the servicer aborted with its own status: keep it
            if isinstance(exc, errors.CloudError):
                code = status_code(exc)
                message = bounded(str(exc))
                log.info("req=%s %s -> %s: %s", call_id, method, code.name, message)
                context.abort(code, message)
            log.exception("req=%s %s failed", call_id, method, exc_info=exc)
            context.abort(grpc.StatusCode.INTERNAL, f"internal error (request {call_id})")

        def open_stream(context, waits_on_client: bool):
            """This call's slot among the streams, if it is one (None otherwise)."""
            if guard is None or policy.is_agent_call(method):
                return None
            caller = current_caller()
            owner = StreamOwner(peer_address(context.peer()), caller.username, caller.project)
            return guard.open(owner, method, context.cancel, waits_on_client)

        def one_response(inner, streaming_request: bool = False):
            # Unary and client-streaming calls: one answer.
            def call(request, context):
                token = stream = None
                deadline = deadlines.start(context.time_remaining())
                try:
                    token = enter(request, context)
                    deadlines.check("nothing: it waited for a worker past its deadline")
                    if streaming_request and (stream := open_stream(context, True)) is not None:
                        request = touching(stream, request)
                    return inner(request, context)
                except Exception as exc:
                    fail(exc, context)
                finally:
                    if stream is not None:
                        guard.close(stream)
                    deadlines.end(deadline)
                    if token is not None:
                        _caller.reset(token)
            return call

        def response_stream(inner):
            # Server-streaming calls: errors can come while the answer streams.
            def call(request, context):
                token = stream = None
                deadline = deadlines.start(context.time_remaining())
                try:
                    token = enter(request, context)
                    deadlines.check("nothing: it waited for a worker past its deadline")
                    stream = open_stream(context, False)
                    yield from inner(request, context)
                except Exception as exc:
                    fail(exc, context)
                finally:
                    if stream is not None:
                        guard.close(stream)
                    deadlines.end(deadline)
                    if token is not None:
                        _caller.reset(token)
            return call

        if handler.unary_unary:
            return rewrap(handler, grpc.unary_unary_rpc_method_handler, one_response(handler.unary_unary))
        if handler.stream_unary:
            return rewrap(handler, grpc.stream_unary_rpc_method_handler,
                              one_response(handler.stream_unary, streaming_request=True))
        if handler.unary_stream:
            return rewrap(handler, grpc.unary_stream_rpc_method_handler,
                              response_stream(handler.unary_stream))
        return rewrap(handler, grpc.stream_stream_rpc_method_handler,
                          response_stream(handler.stream_stream))


def _anonymous_stream(handler, method: str, guard: StreamGuard):
    """A public streaming handler behind the guard's share for calls without a
    login; a stream of requests is cancelled when its client goes idle."""

    def guarded(inner, waits_on_client: bool):
        def call(request, context):
            try:
                stream = guard.open(StreamOwner(peer_address(context.peer())), method,
                                    context.cancel, waits_on_client)
            except errors.ResourceExhausted as exc:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
            try:
                requests = touching(stream, request) if waits_on_client else request
                yield from touching(stream, inner(requests, context))
            finally:
                guard.close(stream)
        return call

    if handler.unary_stream:
        return rewrap(handler, grpc.unary_stream_rpc_method_handler, guarded(handler.unary_stream, False))
    if handler.stream_stream:
        return rewrap(handler, grpc.stream_stream_rpc_method_handler,
                          guarded(handler.stream_stream, True))
    return handler  # no public call streams its requests for one answer
