"""The API interceptor on every kind of call: authentication first, CloudError
mapped to its status code, a servicer's own abort kept, for unary and
streaming handlers alike."""

from concurrent import futures

import grpc
import pytest

from control import errors
from control.api.interceptors import ApiInterceptor
from control.identity.accounts import Caller

SERVICE = "cloudapi.v1.ImageService"  # any service the policy knows: members may call these


def authenticate(token: str) -> Caller:
    if token != "good":
        raise errors.Unauthenticated("bad token")
    return Caller(username="u", project="p", role="member")


def unary(request, context):
    if request == b"abort":
        context.abort(grpc.StatusCode.NOT_FOUND, "servicer's own")
    raise errors.InvalidArgument("bad input")


def client_stream(request_iterator, context):
    return b"".join(request_iterator)


def server_stream(request, context):
    yield b"one"
    raise errors.NotFound("gone midway")


@pytest.fixture(scope="module")
def channel():
    server = grpc.server(futures.ThreadPoolExecutor(4),
                         interceptors=[ApiInterceptor(authenticate)])
    handlers = {
        "GetImage": grpc.unary_unary_rpc_method_handler(unary),
        "CreateImage": grpc.stream_unary_rpc_method_handler(client_stream),
        "ListImages": grpc.unary_stream_rpc_method_handler(server_stream),
    }
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield grpc.insecure_channel(f"127.0.0.1:{port}")
    server.stop(0)


def call(channel, kind, method, request, token="good"):
    stub = getattr(channel, kind)(f"/{SERVICE}/{method}")
    return stub(request, metadata=[("authorization", f"Bearer {token}")], timeout=5)


def code_of(thunk) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        thunk()
    return caught.value.code()


def test_unary_errors_map_and_a_servicers_abort_is_kept(channel):
    assert code_of(lambda: call(channel, "unary_unary", "GetImage", b"x")) == \
        grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(lambda: call(channel, "unary_unary", "GetImage", b"abort")) == \
        grpc.StatusCode.NOT_FOUND


def test_client_streams_are_authenticated(channel):
    assert call(channel, "stream_unary", "CreateImage", iter([b"a", b"b"])) == b"ab"
    assert code_of(lambda: call(channel, "stream_unary", "CreateImage", iter([b"a"]), token="bad")) \
        == grpc.StatusCode.UNAUTHENTICATED


def test_server_streams_map_errors_raised_midway(channel):
    responses = call(channel, "unary_stream", "ListImages", b"")
    assert next(responses) == b"one"
    assert code_of(lambda: next(responses)) == grpc.StatusCode.NOT_FOUND
    assert code_of(lambda: list(call(channel, "unary_stream", "ListImages", b"", token="bad"))) == \
        grpc.StatusCode.UNAUTHENTICATED
