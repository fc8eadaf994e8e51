"""How big anything a caller sends may be: one table, checked at the edge.

Every string and bytes field of every request message the control plane's
services accept (and of the messages nested in them) has a maximum length
here, and every repeated or map field a maximum number of items. The server's
LimitsInterceptor checks each request against the table before any servicer
code runs (each message of a client stream as it is read), so an oversized
field is refused INVALID_ARGUMENT, naming the field and its limit, and nothing
is written. Why: every etcd revision is kept until compaction, so 20 imports
and deletes of a 955 KB "ssh-rsa" key grew etcd's database from 17 to 39 MiB
with nothing left stored, and an image's `os` took 1 MB (issue 15).

A string's limit counts characters (as the validators below the API do, e.g.
identity.MAX_PASSWORD); a bytes field's counts bytes. Where the code below the
API has a limit of its own (names, request ids, passwords, descriptions, kernel
command lines, user data), the table uses that same number, so the two never
disagree; that code keeps its finer checks (the name pattern, a key's format).

The table names each field as `Message.field` (package left off; nested
messages as `Outer.Inner`). tests/unit/test_limits.py walks the request types
of every RPC of every service in the generated descriptors and fails on a
field without an entry here (and on an entry naming no field), so a new
proto field forces a decision. The API reference (docs/api.md) shows each
field's limit.

The servers' gRPC receive limit (`receive_limit`) is derived from the table:
the largest request it allows, plus headroom so that a field some way over its
limit still reaches the check and gets a message that names it, instead of
gRPC's bare RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import grpc
from cloudapi.v1 import (
    agent_pb2,
    compute_pb2,
    events_pb2,
    identity_pb2,
    network_pb2,
    scaling_pb2,
    security_group_pb2,
    usage_pb2,
)
from google.protobuf.descriptor import Descriptor, FieldDescriptor, ServiceDescriptor
from google.protobuf.message import Message

from control.api.interceptors import rewrap
from control.compute.guest_data import MAX_USER_DATA_BYTES
from control.errors import InvalidArgument
from control.identity.accounts import MAX_DESCRIPTION, MAX_PASSWORD
from control.images.catalog import MAX_CMDLINE

KiB = 1024
MiB = 1024 * KiB
PACKAGE = "cloudapi.v1"


@dataclass(frozen=True)
class Limit:
    """`length`: at most this many characters (string) or bytes (bytes field),
    of each item if the field is repeated; `items`: at most this many items of
    a repeated or map field. 0 where it does not apply."""

    length: int = 0
    items: int = 0


def many(each: Limit, count: int) -> Limit:
    """A repeated string or bytes field: at most `count` items, each within `each`."""
    return Limit(each.length, count)


def items(count: int) -> Limit:
    """A repeated field of messages or enums: at most `count` of them."""
    return Limit(items=count)


# ---------------------------------------------------------------- kinds of field

NAME = Limit(63)              # control.models.validate_name: 1 to 63 of A-Z a-z 0-9 . _ -
ID = Limit(64)                # ids are UUIDs (36); event_servicer accepts up to 64
ID_OR_NAME = Limit(64)        # either of the above
HOST_NAME = Limit(253)        # a DNS name, as control/pki.py's host certificates
HOST_ADDRESS = Limit(261)     # host:port of an agent: "[" + 253 + "]:" + 5 digits
IP_ADDRESS = Limit(45)        # an IPv4 or IPv6 address (INET6_ADDRSTRLEN - 1)
REQUEST_ID = Limit(128)       # control.instances.REQUEST_ID_PATTERN: 1 to 128 characters
PAGE_TOKEN = Limit(1024)      # what control/api/paging.py hands out is under 400
CIDR = Limit(49)              # an IPv4 or IPv6 network: an address, "/", a prefix length
MAC = Limit(17)               # aa:bb:cc:dd:ee:ff
KEYWORD = Limit(32)           # one of a few words: a role, policy, format, part, state
SHA256 = Limit(64)            # hex digest
OS = Limit(64)                # an image's operating system, e.g. linux, debian-12
FREE_TEXT = Limit(255)        # a short note: a host's disabled_reason, hypervisor version
DESCRIPTION = Limit(MAX_DESCRIPTION)  # control.identity.accounts: a project's description
PASSWORD = Limit(MAX_PASSWORD)        # control.identity.accounts
CMDLINE = Limit(MAX_CMDLINE)          # control.images.catalog: a kernel command line
# OpenSSH keys: RSA at most 16384 bits (about 2.8 KB in base64); room for a comment.
SSH_PUBLIC_KEY = Limit(16 * KiB)
USER_DATA = Limit(MAX_USER_DATA_BYTES)  # 64 KiB, as Nova (control.compute.guest_data)
# One message of an image upload; cloudctl sends 1 MiB (control.client.UPLOAD_CHUNK_BYTES).
IMAGE_CHUNK = Limit(1 * MiB)

# Counts. A heartbeat or metrics report carries a host's instances: a host
# running more would be refused its heartbeat, so this is far above what a host
# holds (its vCPUs times the CPU allocation ratio).
HOST_INSTANCES = 1024
ADDRESSES = 8                 # of one instance
TRAITS = 64                   # of a flavor, an aggregate, or one host update
PROJECTS = 1000               # a private flavor's projects
HOSTS = 1000                  # an aggregate's hosts

# ---------------------------------------------------------------- the table

LIMITS: dict[str, Limit] = {
    # agent.proto: HostService (the control plane's agent listener)
    "RegisterHostRequest.name": HOST_NAME,
    "RegisterHostRequest.address": HOST_ADDRESS,
    "RegisterHostRequest.virt_type": KEYWORD,
    "RegisterHostRequest.hypervisor": FREE_TEXT,
    "HeartbeatRequest.name": HOST_NAME,
    "HeartbeatRequest.instances": items(HOST_INSTANCES),
    "InstanceObservation.instance_id": ID,
    "InstanceObservation.power_state": KEYWORD,
    "InstanceObservation.addresses": many(IP_ADDRESS, ADDRESSES),
    "FetchImageFileRequest.image_id": ID,
    "FetchImageFileRequest.part": KEYWORD,
    "ReportMetricsRequest.name": HOST_NAME,
    "ReportMetricsRequest.samples": items(HOST_INSTANCES),
    "InstanceSample.instance_id": ID,
    # agent.proto: ComputeAgent (served by the agents; the control plane builds
    # these from fields checked above, so the same limits hold)
    "SpawnRequest.instance_id": ID,
    "SpawnRequest.name": NAME,
    "SpawnRequest.hostname": NAME,
    "SpawnRequest.public_keys": many(SSH_PUBLIC_KEY, 16),
    "SpawnRequest.user_data": USER_DATA,
    "SpawnRequest.nics": items(16),           # what one guest's PCI slots and a domain hold
    "SpawnRequest.block_devices": items(16),
    "GuestNic.network_id": ID,
    "GuestNic.mac": MAC,
    "GuestNic.fixed_ip": IP_ADDRESS,
    "NetworkSegment.id": ID,
    "NetworkSegment.project": NAME,
    "NetworkSegment.cidr": CIDR,
    "NetworkSegment.gateway_ip": IP_ADDRESS,
    "NetworkSegment.router_host": HOST_NAME,
    "NetworkSegment.snat_ip": IP_ADDRESS,
    "BlockDevice.volume_id": ID,
    "ImageSource.id": ID,
    "ImageSource.cmdline": CMDLINE,
    "ImageSource.disk_format": KEYWORD,
    "ImageSource.disk_sha256": SHA256,
    "ImageSource.kernel_sha256": SHA256,
    "ImageSource.initrd_sha256": SHA256,
    "InstanceRef.instance_id": ID,
    "StopRequest.instance_id": ID,
    "RebootRequest.instance_id": ID,
    "ResizeRequest.instance_id": ID,
    "ScaleRequest.instance_id": ID,
    "AgentConsoleRequest.instance_id": ID,

    # compute.proto: FlavorService
    "ListFlavorsRequest.page_token": PAGE_TOKEN,
    "GetFlavorRequest.name": NAME,
    "Flavor.name": NAME,
    "Flavor.projects": many(NAME, PROJECTS),
    "Flavor.required_traits": many(NAME, TRAITS),
    "Flavor.forbidden_traits": many(NAME, TRAITS),
    "Flavor.zone": NAME,
    "DeleteFlavorRequest.name": NAME,
    # ImageService
    "ListImagesRequest.page_token": PAGE_TOKEN,
    "GetImageRequest.id_or_name": ID_OR_NAME,
    "ImageInfo.name": NAME,
    "ImageInfo.disk_format": KEYWORD,
    "ImageInfo.os": OS,
    "ImageInfo.visibility": KEYWORD,
    "ImageInfo.cmdline": CMDLINE,
    "ImageData.part": KEYWORD,
    "ImageData.chunk": IMAGE_CHUNK,
    "DeleteImageRequest.id_or_name": ID_OR_NAME,
    # InstanceService
    "CreateInstanceRequest.name": NAME,
    "CreateInstanceRequest.flavor": NAME,
    "CreateInstanceRequest.image": ID_OR_NAME,
    "CreateInstanceRequest.request_id": REQUEST_ID,
    "CreateInstanceRequest.group": NAME,
    "CreateInstanceRequest.key_name": NAME,
    "CreateInstanceRequest.user_data": USER_DATA,
    "CreateInstanceRequest.networks": many(ID_OR_NAME, 16),  # as SpawnRequest.nics
    "CreateInstanceRequest.security_groups": many(ID_OR_NAME, 16),  # security_groups.MAX_GROUPS_PER_INSTANCE
    "SetInstanceSecurityGroupsRequest.id_or_name": ID_OR_NAME,
    "SetInstanceSecurityGroupsRequest.security_groups": many(ID_OR_NAME, 16),
    "CreateInstancesRequest.name": NAME,
    "CreateInstancesRequest.flavor": NAME,
    "CreateInstancesRequest.image": ID_OR_NAME,
    "CreateInstancesRequest.request_id": REQUEST_ID,
    "CreateInstancesRequest.key_name": NAME,
    "CreateInstancesRequest.user_data": USER_DATA,
    "CreateInstancesRequest.group": NAME,
    "CreateInstancesRequest.security_groups": many(ID_OR_NAME, 16),
    "GetInstanceRequest.id_or_name": ID_OR_NAME,
    "ListInstancesRequest.page_token": PAGE_TOKEN,
    "DeleteInstanceRequest.id_or_name": ID_OR_NAME,
    "DeleteInstanceRequest.request_id": REQUEST_ID,
    "GetConsoleOutputRequest.id_or_name": ID_OR_NAME,
    "InstanceOperationRequest.id_or_name": ID_OR_NAME,
    "InstanceOperationRequest.request_id": REQUEST_ID,
    "ScaleInstanceRequest.id_or_name": ID_OR_NAME,
    "ScaleInstanceRequest.request_id": REQUEST_ID,
    "RenameInstanceRequest.id_or_name": ID_OR_NAME,
    "RenameInstanceRequest.name": NAME,
    "RenameInstanceRequest.request_id": REQUEST_ID,
    "ResizeInstanceRequest.id_or_name": ID_OR_NAME,
    "ResizeInstanceRequest.flavor": NAME,
    "ResizeInstanceRequest.request_id": REQUEST_ID,
    "ListInstanceActionsRequest.id_or_name": ID_OR_NAME,
    "ListInstanceActionsRequest.page_token": PAGE_TOKEN,
    # HostAdminService
    "ListHostsRequest.page_token": PAGE_TOKEN,
    "GetHostRequest.name": HOST_NAME,
    "UpdateHostRequest.name": HOST_NAME,
    "UpdateHostRequest.disabled_reason": FREE_TEXT,
    "UpdateHostRequest.zone": NAME,
    "UpdateHostRequest.add_traits": many(NAME, TRAITS),
    "UpdateHostRequest.remove_traits": many(NAME, TRAITS),
    "SetInventoryRequest.name": HOST_NAME,
    "SetInventoryRequest.resource_class": KEYWORD,
    "GetCapacityRequest.flavor": NAME,
    "Aggregate.name": NAME,
    "Aggregate.zone": NAME,
    "Aggregate.traits": many(NAME, TRAITS),
    "Aggregate.hosts": many(HOST_NAME, HOSTS),
    "ListAggregatesRequest.page_token": PAGE_TOKEN,
    "DeleteAggregateRequest.name": NAME,
    "AggregateHostRequest.aggregate": NAME,
    "AggregateHostRequest.host": HOST_NAME,
    # ServerGroupService
    "CreateServerGroupRequest.name": NAME,
    "CreateServerGroupRequest.policy": KEYWORD,
    "GetServerGroupRequest.name": NAME,
    "ListServerGroupsRequest.page_token": PAGE_TOKEN,
    "DeleteServerGroupRequest.name": NAME,
    # KeypairService
    "CreateKeypairRequest.name": NAME,
    "ImportKeypairRequest.name": NAME,
    "ImportKeypairRequest.public_key": SSH_PUBLIC_KEY,
    "ListKeypairsRequest.page_token": PAGE_TOKEN,
    "DeleteKeypairRequest.name": NAME,

    # events.proto
    "WatchRequest.project": NAME,
    "WatchRequest.kinds": items(16),
    "WatchRequest.instance_id": ID,

    # identity.proto: IdentityService
    "LoginRequest.username": NAME,
    "LoginRequest.password": PASSWORD,
    "LoginRequest.project": NAME,
    "RevokeUserTokensRequest.username": NAME,
    "CreateProjectRequest.name": NAME,
    "CreateProjectRequest.description": DESCRIPTION,
    "ListProjectsRequest.page_token": PAGE_TOKEN,
    "DeleteProjectRequest.name": NAME,
    "CreateUserRequest.name": NAME,
    "CreateUserRequest.password": PASSWORD,
    "CreateUserRequest.project": NAME,
    "CreateUserRequest.role": KEYWORD,
    "ListUsersRequest.page_token": PAGE_TOKEN,
    "DeleteUserRequest.name": NAME,
    "RoleRequest.username": NAME,
    "RoleRequest.project": NAME,
    "RoleRequest.role": KEYWORD,
    # QuotaService
    "GetQuotaRequest.project": NAME,
    "SetQuotaRequest.project": NAME,
    "SetQuotaRequest.resources": items(64),       # named quotas set at once
    "SetQuotaRequest.ResourcesEntry.key": NAME,   # a quota name (control/identity/quotas.py)

    # scaling.proto: MetricsService
    "GetInstanceMetricsRequest.id_or_name": ID_OR_NAME,
    "GetGroupMetricsRequest.name": NAME,
    # ScalingGroupService
    "CreateScalingGroupRequest.name": NAME,
    "CreateScalingGroupRequest.flavor": NAME,
    "CreateScalingGroupRequest.image": ID_OR_NAME,
    "CreateScalingGroupRequest.key_name": NAME,
    "CreateScalingGroupRequest.server_group_policy": KEYWORD,
    "CreateScalingGroupRequest.request_id": REQUEST_ID,
    "TargetTrackingPolicy.metric": KEYWORD,
    "GetScalingGroupRequest.name": NAME,
    "ListScalingGroupsRequest.page_token": PAGE_TOKEN,
    "SetDesiredRequest.name": NAME,
    "SetDesiredRequest.request_id": REQUEST_ID,
    "DeleteScalingGroupRequest.name": NAME,
    "DeleteScalingGroupRequest.request_id": REQUEST_ID,

    # network.proto: NetworkService
    "CreateNetworkRequest.name": NAME,
    "CreateNetworkRequest.cidr": CIDR,
    "GetNetworkRequest.id_or_name": ID_OR_NAME,
    "ListNetworksRequest.page_token": PAGE_TOKEN,
    "DeleteNetworkRequest.id_or_name": ID_OR_NAME,
    "CreateFloatingIpRequest.request_id": REQUEST_ID,
    "ListFloatingIpsRequest.page_token": PAGE_TOKEN,
    "AttachFloatingIpRequest.address": IP_ADDRESS,
    "AttachFloatingIpRequest.instance": ID_OR_NAME,
    "AttachFloatingIpRequest.network": ID_OR_NAME,
    "FloatingIpRequest.address": IP_ADDRESS,

    # security_group.proto: SecurityGroupService
    "CreateSecurityGroupRequest.name": NAME,
    "CreateSecurityGroupRequest.description": FREE_TEXT,  # security_groups.MAX_DESCRIPTION
    "CreateSecurityGroupRequest.request_id": REQUEST_ID,
    "GetSecurityGroupRequest.id_or_name": ID_OR_NAME,
    "ListSecurityGroupsRequest.page_token": PAGE_TOKEN,
    "DeleteSecurityGroupRequest.id_or_name": ID_OR_NAME,
    "CreateSecurityGroupRuleRequest.security_group": ID_OR_NAME,
    "CreateSecurityGroupRuleRequest.direction": KEYWORD,
    "CreateSecurityGroupRuleRequest.protocol": KEYWORD,
    "CreateSecurityGroupRuleRequest.remote_cidr": CIDR,
    "CreateSecurityGroupRuleRequest.remote_group": ID_OR_NAME,
    "CreateSecurityGroupRuleRequest.request_id": REQUEST_ID,
    "DeleteSecurityGroupRuleRequest.id": ID,

    # usage.proto
    "GetProjectUsageRequest.project": NAME,
    "ListUsageRecordsRequest.project": NAME,
    "ListUsageRecordsRequest.instance_id": ID,
    "ListUsageRecordsRequest.page_token": PAGE_TOKEN,
}

# ---------------------------------------------------------------- services

_FILES = (agent_pb2, compute_pb2, events_pb2, identity_pb2, network_pb2, scaling_pb2,
          security_group_pb2, usage_pb2)


def all_services() -> list[ServiceDescriptor]:
    """Every service of the API's protos (the agents' ComputeAgent included)."""
    return [s for module in _FILES for s in module.DESCRIPTOR.services_by_name.values()]


def agent_listener_services() -> list[ServiceDescriptor]:
    """What the control plane's agent listener serves (control/api/host_auth.py)."""
    return [agent_pb2.DESCRIPTOR.services_by_name["HostService"]]


def public_services() -> list[ServiceDescriptor]:
    """What the public API server serves: every service but the agents' ones."""
    return [s for s in all_services() if s.file is not agent_pb2.DESCRIPTOR]


def type_name(descriptor: Descriptor) -> str:
    """A message's name in the table: `Image`, `Usage.ByStateEntry`, or the full
    name of a message of another package (`google.protobuf.Timestamp`)."""
    full = descriptor.full_name
    return full[len(PACKAGE) + 1:] if full.startswith(PACKAGE + ".") else full


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def needs_limit(field: FieldDescriptor) -> bool:
    """String, bytes, repeated and map fields need an entry; others (numbers,
    bools, enums, single messages) are bounded by their type or their own fields."""
    return field.is_repeated or field.type in (FieldDescriptor.TYPE_STRING,
                                               FieldDescriptor.TYPE_BYTES)


def request_types(services: Iterable[ServiceDescriptor]) -> list[Descriptor]:
    """The request message of every RPC of these services, and every message
    nested in one (through message, repeated and map fields), each once."""
    found: dict[str, Descriptor] = {}

    def visit(descriptor: Descriptor) -> None:
        if descriptor.full_name in found:
            return
        found[descriptor.full_name] = descriptor
        for field in descriptor.fields:
            if field.message_type is not None:
                visit(field.message_type)

    for service in services:
        for method in service.methods:
            visit(method.input_type)
    return list(found.values())


def fields_needing_limits(services: Iterable[ServiceDescriptor]) -> dict[str, FieldDescriptor]:
    """`Message.field` -> field, for every field of the request types that needs a limit."""
    return {f"{type_name(d)}.{f.name}": f for d in request_types(services) for f in d.fields
            if needs_limit(f)}


def table_problems(table: dict[str, Limit] = LIMITS,
                   services: Iterable[ServiceDescriptor] | None = None) -> list[str]:
    """What is wrong with the table: fields without a limit, entries that name
    no such field, and limits of the wrong kind. Empty when all is well."""
    needed = fields_needing_limits(all_services() if services is None else services)
    problems = [f"{name}: no limit (add it to control/api/limits.py LIMITS)"
                for name in needed if name not in table]
    for name, limit in table.items():
        field = needed.get(name)
        if field is None:
            problems.append(f"{name}: no such string, bytes, repeated or map field in a request")
            continue
        text = field.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES)
        if text and limit.length <= 0:
            problems.append(f"{name}: a string or bytes field needs a length")
        if not text and limit.length:
            problems.append(f"{name}: a length, but the field is not a string or bytes field")
        if field.is_repeated and limit.items <= 0:
            problems.append(f"{name}: a repeated or map field needs a number of items")
        if not field.is_repeated and limit.items:
            problems.append(f"{name}: a number of items, but the field is not repeated")
    return problems


# ---------------------------------------------------------------- the check

def _too_long(where: str, field: FieldDescriptor, value, limit: Limit) -> None:
    if field.type == FieldDescriptor.TYPE_STRING and len(value) > limit.length:
        raise InvalidArgument(f"{where} is {len(value)} characters; at most {limit.length}")
    if field.type == FieldDescriptor.TYPE_BYTES and len(value) > limit.length:
        n = limit.length
        size = f" ({n // 2**20} MiB)" if n % 2**20 == 0 else f" ({n // 1024} KiB)" if n % 1024 == 0 else ""
        raise InvalidArgument(f"{where} is {len(value)} bytes; at most {limit.length}{size}")


def check(message: Message, table: dict[str, Limit] = LIMITS, path: str = "") -> None:
    """InvalidArgument naming the first field of `message` (or of a message in
    it) over its limit, e.g. "user_data is 70000 bytes; at most 65536"; fields
    are named from the request down (`info.os`, `instances[3].addresses[0]`).
    A field the table has no limit for is a bug of the table: RuntimeError."""
    name = type_name(message.DESCRIPTOR)
    for field, value in message.ListFields():
        where = f"{path}{field.name}"
        if not needs_limit(field):
            if field.message_type is not None:
                check(value, table, where + ".")
            continue
        limit = table.get(f"{name}.{field.name}")
        if limit is None:
            raise RuntimeError(f"{name}.{field.name} has no size limit in control/api/limits.py")
        if not field.is_repeated:
            _too_long(where, field, value, limit)
            continue
        if len(value) > limit.items:
            raise InvalidArgument(f"{where} has {len(value)} items; at most {limit.items}")
        if _is_map(field):
            entry = field.message_type
            key, item = entry.fields_by_name["key"], entry.fields_by_name["value"]
            entry_name = type_name(entry)
            for k in value:
                shown = f"{where}[{k!r}]" if len(str(k)) <= 64 else f"{where}[...]"
                for part, v in ((key, k), (item, value[k])):
                    _check_item(f"{shown}.{part.name}", part, v, table, f"{entry_name}.{part.name}")
        elif field.message_type is not None:
            for i, item in enumerate(value):
                check(item, table, f"{where}[{i}].")
        else:
            for i, item in enumerate(value):
                _too_long(f"{where}[{i}]", field, item, limit)


def _check_item(where: str, field: FieldDescriptor, value, table: dict[str, Limit],
                key: str) -> None:
    """A map entry's key or value."""
    if field.message_type is not None:
        check(value, table, where + ".")
    elif field.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
        limit = table.get(key)
        if limit is None:
            raise RuntimeError(f"{key} has no size limit in control/api/limits.py")
        _too_long(where, field, value, limit)


# ---------------------------------------------------------------- message sizes

_FIXED_SIZES = {FieldDescriptor.TYPE_BOOL: 1, FieldDescriptor.TYPE_DOUBLE: 8,
                FieldDescriptor.TYPE_FIXED64: 8, FieldDescriptor.TYPE_SFIXED64: 8,
                FieldDescriptor.TYPE_FLOAT: 4, FieldDescriptor.TYPE_FIXED32: 4,
                FieldDescriptor.TYPE_SFIXED32: 4}
_VARINT_MAX = 10  # any int, or an enum, as a varint
_UTF8_MAX = 4     # bytes of one character


def _varint_size(value: int) -> int:
    return max(1, (value.bit_length() + 6) // 7)


def largest_message(descriptor: Descriptor, table: dict[str, Limit] = LIMITS) -> int:
    """The most bytes a message of this type takes on the wire when every
    field is at its limit (strings of 4-byte characters; of a oneof, the
    largest member)."""
    return _largest(descriptor, table, ())


def _largest(descriptor: Descriptor, table: dict[str, Limit], within: tuple[str, ...]) -> int:
    if descriptor.full_name in within:
        raise ValueError(f"{descriptor.full_name} contains itself: no largest size")
    within = (*within, descriptor.full_name)
    total, oneofs = 0, dict[str, int]()
    for field in descriptor.fields:
        limit = table.get(f"{type_name(descriptor)}.{field.name}", Limit())
        one = _varint_size(field.number << 3) + _largest_value(field, limit, table, within)
        size = one * limit.items if field.is_repeated else one
        if field.containing_oneof is not None:
            name = field.containing_oneof.name
            oneofs[name] = max(oneofs.get(name, 0), size)
        else:
            total += size
    return total + sum(oneofs.values())


def _largest_value(field: FieldDescriptor, limit: Limit, table: dict[str, Limit],
                   within: tuple[str, ...]) -> int:
    if field.message_type is not None:
        size = _largest(field.message_type, table, within)
    elif field.type == FieldDescriptor.TYPE_STRING:
        size = limit.length * _UTF8_MAX
    elif field.type == FieldDescriptor.TYPE_BYTES:
        size = limit.length
    else:
        return _FIXED_SIZES.get(field.type, _VARINT_MAX)
    return _varint_size(size) + size


def largest_request(services: Iterable[ServiceDescriptor], table: dict[str, Limit] = LIMITS) -> int:
    """The largest single request message these services accept, by the table."""
    return max(largest_message(m.input_type, table) for s in services for m in s.methods)


# Past the largest request the table allows, a server still receives this much
# more, so that a field over its limit (a 2 MB description, say) is refused by
# the check, naming the field, rather than by gRPC with a bare RESOURCE_EXHAUSTED.
RECEIVE_HEADROOM = 1 * MiB


def receive_limit(services: Iterable[ServiceDescriptor]) -> int:
    """The grpc.max_receive_message_length of a server of these services: its
    largest request by the table, plus RECEIVE_HEADROOM, in whole 64 KiB."""
    needed = largest_request(services) + RECEIVE_HEADROOM
    return -(-needed // (64 * KiB)) * 64 * KiB


def server_options(services: Iterable[ServiceDescriptor]) -> list[tuple[str, int]]:
    """grpc.server(options=...) for a server of these services."""
    return [("grpc.max_receive_message_length", receive_limit(services))]


# ---------------------------------------------------------------- the interceptor

class LimitsInterceptor(grpc.ServerInterceptor):
    """Checks every request of these services against the table before the
    servicer runs; each message of a client stream as the servicer reads it.
    Raises InvalidArgument: put it after ApiInterceptor (`interceptors=[
    ApiInterceptor(...), LimitsInterceptor(...)]`), which maps it to
    INVALID_ARGUMENT. Calls of other services (health checking, reflection)
    pass unchecked: they write nothing, and gRPC's receive limit bounds them."""

    def __init__(self, services: Iterable[ServiceDescriptor] | None = None,
                 table: dict[str, Limit] = LIMITS):
        self.table = table
        self.methods = {f"/{s.full_name}/{m.name}"
                        for s in (all_services() if services is None else services)
                        for m in s.methods}

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method not in self.methods:
            return handler
        table = self.table

        def one(inner):
            def call(request, context):
                check(request, table)
                return inner(request, context)
            return call

        def each(inner):
            def call(request_iterator, context):
                return inner(_checked(request_iterator, table), context)
            return call

        if handler.unary_unary:
            return rewrap(handler, grpc.unary_unary_rpc_method_handler, one(handler.unary_unary))
        if handler.unary_stream:
            return rewrap(handler, grpc.unary_stream_rpc_method_handler, one(handler.unary_stream))
        if handler.stream_unary:
            return rewrap(handler, grpc.stream_unary_rpc_method_handler, each(handler.stream_unary))
        return rewrap(handler, grpc.stream_stream_rpc_method_handler, each(handler.stream_stream))


def _checked(requests: Iterator[Message], table: dict[str, Limit]) -> Iterator[Message]:
    for request in requests:
        check(request, table)
        yield request
