"""Request size limits (control/api/limits.py): every string, bytes, repeated
and map field of every request message has one; the check names the field
and its limit; the interceptor refuses before the servicer runs, inside
ApiInterceptor (INVALID_ARGUMENT); the servers' receive limit fits the table."""

import importlib
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from cloudapi.v1 import agent_pb2 as apb
from cloudapi.v1 import compute_pb2 as pb
from cloudapi.v1 import events_pb2 as epb
from cloudapi.v1 import identity_pb2 as ipb
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import FieldDescriptor

from control import errors
from control.api import limits
from control.api.interceptors import ApiInterceptor
from control.api.limits import LIMITS, Limit, check
from control.identity.accounts import Caller

GEN = Path(__file__).resolve().parents[2] / "client" / "cloudapi" / "v1"


def refused(message) -> str:
    with pytest.raises(errors.InvalidArgument) as caught:
        check(message)
    return str(caught.value)


# ------------------------------------------------------------------ the table


def test_the_walk_covers_every_service_of_every_generated_proto():
    services = set()
    for path in GEN.glob("*_pb2.py"):
        module = importlib.import_module(f"cloudapi.v1.{path.stem}")
        services |= {s.full_name for s in module.DESCRIPTOR.services_by_name.values()}
    assert services == {s.full_name for s in limits.all_services()}
    assert {"cloudapi.v1.ImageService", "cloudapi.v1.HostService"} <= services


def test_every_request_field_has_a_limit_and_every_entry_names_a_field():
    problems = limits.table_problems()
    assert not problems, "\n".join(problems)


def test_the_walk_reaches_nested_repeated_and_oneof_fields():
    needed = limits.fields_needing_limits(limits.all_services())
    for name in ("ImageData.chunk",                   # in a oneof of a client stream
                 "ImageInfo.os",
                 "Flavor.projects",                   # a message inside the request
                 "InstanceObservation.addresses",     # repeated, in a repeated message
                 "WatchRequest.kinds",                # repeated enum
                 "ImageSource.cmdline",               # ComputeAgent's requests too
                 "CreateInstanceRequest.user_data"):
        assert name in needed
    assert "ImageUpload.info" not in needed  # a single message: its own fields are bounded
    assert "Image.os" not in needed          # a response, never a request


def _proto_with_a_map():
    """A service whose request has a map of messages, a nested repeated message
    and strings: what the protos may grow into."""
    file = descriptor_pb2.FileDescriptorProto(name="limits_test.proto", package="limitstest",
                                              syntax="proto3")
    label, optional = FieldDescriptor.LABEL_REPEATED, FieldDescriptor.LABEL_OPTIONAL
    string, message = FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_MESSAGE
    inner = file.message_type.add(name="Inner")
    inner.field.add(name="text", number=1, type=string, label=optional)
    request = file.message_type.add(name="Request")
    entry = request.nested_type.add(name="TagsEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=string, label=optional)
    entry.field.add(name="value", number=2, type=message, label=optional,
                    type_name=".limitstest.Inner")
    request.field.add(name="tags", number=1, type=message, label=label,
                      type_name=".limitstest.Request.TagsEntry")
    request.field.add(name="name", number=2, type=string, label=optional)
    service = file.service.add(name="Things")
    service.method.add(name="Put", input_type=".limitstest.Request", output_type=".limitstest.Inner")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    fd = pool.FindFileByName(file.name)
    return fd.services_by_name["Things"], message_factory.GetMessageClass(
        fd.message_types_by_name["Request"])


def test_a_field_without_a_limit_fails_the_walk():
    service, _ = _proto_with_a_map()
    problems = limits.table_problems({}, [service])
    assert sorted(p.split(":")[0] for p in problems) == [
        "limitstest.Inner.text", "limitstest.Request.TagsEntry.key", "limitstest.Request.name",
        "limitstest.Request.tags"]
    table = {"limitstest.Inner.text": Limit(10), "limitstest.Request.TagsEntry.key": Limit(5),
             "limitstest.Request.name": Limit(8), "limitstest.Request.tags": Limit(items=2)}
    assert limits.table_problems(table, [service]) == []


def test_entries_naming_no_field_or_of_the_wrong_kind_are_problems():
    table = {**LIMITS, "ImageInfo.nope": Limit(10), "Image.os": Limit(10),
             "ImportKeypairRequest.name": Limit(63, items=3),
             "Flavor.projects": Limit(63), "ImageData.chunk": Limit(items=2)}
    problems = "\n".join(limits.table_problems(table))
    assert "ImageInfo.nope: no such" in problems
    assert "Image.os: no such" in problems  # a response field
    assert "ImportKeypairRequest.name: a number of items, but" in problems
    assert "Flavor.projects: a repeated or map field needs a number of items" in problems
    assert "ImageData.chunk: a string or bytes field needs a length" in problems


def test_limits_agree_with_the_validators_below_the_api():
    from cloudclient.client import UPLOAD_CHUNK_BYTES

    from control.compute import guest_data
    from control.compute.instances import REQUEST_ID_PATTERN
    from control.identity import accounts as identity
    from control.images import catalog as images
    from control.models import validate_name

    validate_name("n" * limits.NAME.length)
    with pytest.raises(errors.InvalidArgument):
        validate_name("n" * (limits.NAME.length + 1))
    assert REQUEST_ID_PATTERN.fullmatch("r" * limits.REQUEST_ID.length)
    assert not REQUEST_ID_PATTERN.fullmatch("r" * (limits.REQUEST_ID.length + 1))
    assert limits.PASSWORD.length == identity.MAX_PASSWORD
    assert limits.DESCRIPTION.length == identity.MAX_DESCRIPTION
    assert limits.CMDLINE.length == images.MAX_CMDLINE
    assert limits.USER_DATA.length == guest_data.MAX_USER_DATA_BYTES == 64 * 1024
    assert LIMITS["CreateInstanceRequest.user_data"] == LIMITS["CreateInstancesRequest.user_data"] \
        == LIMITS["SpawnRequest.user_data"] == limits.USER_DATA
    assert UPLOAD_CHUNK_BYTES <= LIMITS["ImageData.chunk"].length
    assert LIMITS["ImportKeypairRequest.public_key"].length == 16 * 1024
    assert LIMITS["ImageInfo.os"].length <= 64


# ------------------------------------------------------------------ the check


def test_at_the_limit_passes_one_over_is_refused_naming_field_and_limit():
    check(pb.CreateInstanceRequest(name="n" * 63, user_data=b"u" * 65536))
    assert refused(pb.CreateInstanceRequest(user_data=b"u" * 70000)) == \
        "user_data is 70000 bytes; at most 65536 (64 KiB)"
    assert refused(pb.CreateInstanceRequest(name="n" * 64)) == "name is 64 characters; at most 63"
    check(pb.ImportKeypairRequest(name="k", public_key="k" * 16384))
    assert refused(pb.ImportKeypairRequest(public_key="k" * 955_000)) == \
        "public_key is 955000 characters; at most 16384"


def test_strings_count_characters_bytes_count_bytes():
    check(ipb.CreateProjectRequest(name="p", description="é" * 1024))  # 2048 bytes of UTF-8
    assert refused(ipb.CreateProjectRequest(description="\U0001f600" * 1025)) == \
        "description is 1025 characters; at most 1024"


def test_nested_repeated_and_streamed_fields_are_named_from_the_request_down():
    assert refused(pb.ImageUpload(info=pb.ImageInfo(name="i", os="x" * 1_000_000))) == \
        "info.os is 1000000 characters; at most 64"
    assert refused(pb.ImageUpload(data=pb.ImageData(part="disk", chunk=b"\0" * (2**20 + 1)))) == \
        "data.chunk is 1048577 bytes; at most 1048576 (1 MiB)"
    check(pb.ImageUpload(data=pb.ImageData(part="disk", chunk=b"\0" * 2**20)))
    assert refused(pb.CreateFlavorRequest(flavor=pb.Flavor(projects=["p"] * 1001))) == \
        "flavor.projects has 1001 items; at most 1000"
    assert refused(pb.CreateFlavorRequest(flavor=pb.Flavor(projects=["p", "q" * 64]))) == \
        "flavor.projects[1] is 64 characters; at most 63"
    beat = apb.HeartbeatRequest(name="h", instances=[
        apb.InstanceObservation(instance_id="a"), apb.InstanceObservation(addresses=["10.0.0.1", "x" * 46])])
    assert refused(beat) == "instances[1].addresses[1] is 46 characters; at most 45"
    assert refused(epb.WatchRequest(kinds=[1] * 17)) == "kinds has 17 items; at most 16"


def test_every_top_level_string_and_bytes_field_is_checked():
    for service in limits.all_services():
        for method in service.methods:
            cls = message_factory.GetMessageClass(method.input_type)
            for field in method.input_type.fields:
                if field.is_repeated or field.type not in (FieldDescriptor.TYPE_STRING,
                                                           FieldDescriptor.TYPE_BYTES):
                    continue
                limit = LIMITS[f"{limits.type_name(method.input_type)}.{field.name}"].length
                value = "x" * limit if field.type == FieldDescriptor.TYPE_STRING else b"x" * limit
                check(cls(**{field.name: value}))
                with pytest.raises(errors.InvalidArgument, match=f"^{field.name} is {limit + 1} "):
                    check(cls(**{field.name: value + value[:1]}))


def test_maps_are_counted_and_their_keys_and_values_checked():
    service, Request = _proto_with_a_map()
    table = {"limitstest.Inner.text": Limit(10), "limitstest.Request.TagsEntry.key": Limit(5),
             "limitstest.Request.name": Limit(8), "limitstest.Request.tags": Limit(items=2)}
    ok = Request(name="n")
    ok.tags["a"].text = "t" * 10
    ok.tags["b"].text = "t"
    check(ok, table)
    many = Request()
    for k in "abc":
        many.tags[k].text = ""
    with pytest.raises(errors.InvalidArgument, match="^tags has 3 items; at most 2$"):
        check(many, table)
    long_key = Request()
    long_key.tags["k" * 6].text = ""
    with pytest.raises(errors.InvalidArgument, match=r"^tags\['kkkkkk'\]\.key is 6 characters"):
        check(long_key, table)
    long_value = Request()
    long_value.tags["a"].text = "t" * 11
    with pytest.raises(errors.InvalidArgument, match=r"^tags\['a'\]\.value\.text is 11 characters"):
        check(long_value, table)


def test_a_field_missing_from_the_table_is_a_bug_not_the_callers_fault():
    with pytest.raises(RuntimeError, match="ImportKeypairRequest.public_key has no size limit"):
        check(pb.ImportKeypairRequest(public_key="k"), {})
    check(pb.ImportKeypairRequest(), {})  # unset fields need nothing


# ------------------------------------------------------------------ message sizes


def _filled(descriptor, table):
    """A message of this type with every field at its limit: strings of 4-byte
    characters, the most items, the largest numbers (of a oneof, the last member)."""
    cls = message_factory.GetMessageClass(descriptor)
    message = cls()
    for field in descriptor.fields:
        limit = table.get(f"{limits.type_name(descriptor)}.{field.name}", Limit())
        count = limit.items if field.is_repeated else 1
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            _fill_map(getattr(message, field.name), field.message_type, table, count)
            continue
        if field.message_type is not None:
            values = [_filled(field.message_type, table) for _ in range(count)]
            if field.is_repeated:
                getattr(message, field.name).extend(values)
            else:
                getattr(message, field.name).CopyFrom(values[0])
            continue
        if field.type == FieldDescriptor.TYPE_STRING:
            value = "\U0001f600" * limit.length
        elif field.type == FieldDescriptor.TYPE_BYTES:
            value = b"\xff" * limit.length
        elif field.type == FieldDescriptor.TYPE_BOOL:
            value = True
        elif field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
            value = -1.5
        elif field.type == FieldDescriptor.TYPE_ENUM:
            value = max(v.number for v in field.enum_type.values)
        elif field.type in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_UINT64,
                            FieldDescriptor.TYPE_FIXED32, FieldDescriptor.TYPE_FIXED64):
            value = 2**32 - 1 if field.type in (FieldDescriptor.TYPE_UINT32,
                                                FieldDescriptor.TYPE_FIXED32) else 2**64 - 1
        else:
            value = -1  # a negative int is the longest varint
        if field.is_repeated:
            getattr(message, field.name).extend([value] * count)
        else:
            setattr(message, field.name, value)
    return message


def _fill_map(container, entry, table, count):
    """`count` entries, their keys distinct and at their limit, their values the largest."""
    key_length = table.get(f"{limits.type_name(entry)}.key", Limit(1)).length
    template = _filled(entry, table)
    for i in range(count):
        key = "\U0001f600" * (key_length - 1) + chr(0x1F600 + i)
        if entry.fields_by_name["value"].message_type is not None:
            container[key].CopyFrom(template.value)
        else:
            container[key] = template.value


@pytest.mark.parametrize("service", limits.all_services(), ids=lambda s: s.name)
def test_largest_message_bounds_every_request_at_its_limits(service):
    for method in service.methods:
        message = _filled(method.input_type, LIMITS)
        check(message)  # everything at its limit is allowed
        assert message.ByteSize() <= limits.largest_message(method.input_type), method.full_name


def test_receive_limits_fit_the_largest_request_and_stay_under_grpcs_default():
    for services in (limits.public_services(), limits.agent_listener_services()):
        receive = limits.receive_limit(services)
        assert receive >= limits.largest_request(services) + limits.RECEIVE_HEADROOM
        assert receive <= 4 * 1024 * 1024  # never above what gRPC allows by default
        assert limits.server_options(services) == [("grpc.max_receive_message_length", receive)]
    public = limits.receive_limit(limits.public_services())
    assert public >= LIMITS["ImageData.chunk"].length + limits.RECEIVE_HEADROOM
    assert "cloudapi.v1.HostService" not in {s.full_name for s in limits.public_services()}


# ------------------------------------------------------------------ through a server

SEEN: list = []


def import_keypair(request, context):
    SEEN.append(request.name)
    return pb.Keypair(name=request.name)


def create_image(request_iterator, context):
    for message in request_iterator:
        SEEN.append(message.WhichOneof("item"))
    return pb.Image(name="done")


def watch(request, context):
    SEEN.append("watch")
    yield epb.Event(revision=1)


def authenticate(token: str) -> Caller:
    return Caller(username="u", project="p", role="member")


def handlers_of(service: str, methods: dict) -> grpc.GenericRpcHandler:
    descriptor = {s.full_name: s for s in limits.all_services()}[service]
    made = {}
    for name, (make, function) in methods.items():
        method = descriptor.methods_by_name[name]
        request = message_factory.GetMessageClass(method.input_type)
        response = message_factory.GetMessageClass(method.output_type)
        made[name] = make(function, request_deserializer=request.FromString,
                          response_serializer=response.SerializeToString)
    return grpc.method_handlers_generic_handler(service, made)


@pytest.fixture(scope="module")
def channel():
    services = limits.public_services()
    server = grpc.server(futures.ThreadPoolExecutor(4), options=limits.server_options(services),
                         interceptors=[ApiInterceptor(authenticate),
                                       limits.LimitsInterceptor(services)])
    server.add_generic_rpc_handlers([
        handlers_of("cloudapi.v1.KeypairService",
                    {"ImportKeypair": (grpc.unary_unary_rpc_method_handler, import_keypair)}),
        handlers_of("cloudapi.v1.ImageService",
                    {"CreateImage": (grpc.stream_unary_rpc_method_handler, create_image)}),
        handlers_of("cloudapi.v1.EventService",
                    {"Watch": (grpc.unary_stream_rpc_method_handler, watch)}),
    ])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[
        ("grpc.max_send_message_length", -1)])
    yield channel
    channel.close()
    server.stop(0)


def rpc(channel, kind, method, response):
    return getattr(channel, kind)(method, request_serializer=lambda m: m.SerializeToString(),
                                  response_deserializer=response.FromString)


def status(thunk) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        thunk()
    return caught.value.code(), caught.value.details()


METADATA = [("authorization", "Bearer t")]


def test_an_oversized_unary_request_is_invalid_argument_and_the_servicer_never_runs(channel):
    SEEN.clear()
    stub = rpc(channel, "unary_unary", "/cloudapi.v1.KeypairService/ImportKeypair", pb.Keypair)
    assert stub(pb.ImportKeypairRequest(name="ok", public_key="ssh-ed25519 AAAA"),
                metadata=METADATA, timeout=5).name == "ok"
    code, details = status(lambda: stub(pb.ImportKeypairRequest(name="big", public_key="k" * 955_000),
                                        metadata=METADATA, timeout=5))
    assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT,
                               "public_key is 955000 characters; at most 16384")
    assert SEEN == ["ok"]


def test_each_message_of_a_client_stream_is_checked_as_it_is_read(channel):
    SEEN.clear()
    stub = rpc(channel, "stream_unary", "/cloudapi.v1.ImageService/CreateImage", pb.Image)
    good = [pb.ImageUpload(info=pb.ImageInfo(name="i", os="linux")),
            pb.ImageUpload(data=pb.ImageData(part="disk", chunk=b"\0" * 2**20))]
    assert stub(iter(good), metadata=METADATA, timeout=10).name == "done"
    SEEN.clear()
    bad = [good[0], good[1], pb.ImageUpload(data=pb.ImageData(part="disk", chunk=b"\0" * (2**20 + 1))),
           good[1]]
    code, details = status(lambda: stub(iter(bad), metadata=METADATA, timeout=10))
    assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT,
                               "data.chunk is 1048577 bytes; at most 1048576 (1 MiB)")
    assert SEEN == ["info", "data"]  # the servicer saw what came before, nothing after


def test_a_server_streaming_request_is_checked_before_the_stream_starts(channel):
    SEEN.clear()
    stub = rpc(channel, "unary_stream", "/cloudapi.v1.EventService/Watch", epb.Event)
    code, details = status(lambda: list(stub(epb.WatchRequest(instance_id="i" * 65),
                                             metadata=METADATA, timeout=5)))
    assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT,
                               "instance_id is 65 characters; at most 64")
    assert SEEN == []


def test_the_receive_limit_refuses_only_far_oversized_requests(channel):
    stub = rpc(channel, "unary_unary", "/cloudapi.v1.KeypairService/ImportKeypair", pb.Keypair)
    receive = limits.receive_limit(limits.public_services())
    # Over its limit, but within the headroom: the check names the field.
    code, details = status(lambda: stub(pb.ImportKeypairRequest(public_key="k" * 2_000_000),
                                        metadata=METADATA, timeout=5))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "public_key" in details
    code, _ = status(lambda: stub(pb.ImportKeypairRequest(public_key="k" * receive),
                                  metadata=METADATA, timeout=5))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
