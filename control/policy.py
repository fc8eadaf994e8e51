"""Who may call what: the least role each RPC needs.

An RPC missing from this table is refused to everyone but admins, so a new RPC
is closed until someone decides otherwise. Which *project's* resources a call
may touch is decided below the API, by the store layer's keys (every tenant
query is scoped by the caller's project).
"""

from __future__ import annotations

# No token needed: logging in, and gRPC's own health checking and reflection.
PUBLIC_PREFIXES = (
    "/cloudapi.v1.IdentityService/Login",
    "/grpc.health.v1.Health/",
    "/grpc.reflection.",
)

# Called by compute agents, not tenants, and served only on the control plane's
# agent listener: mutual TLS, each host's certificate speaking for that host
# only (control/api/host_auth.py). Refused on the public API port.
AGENT_PREFIXES = ("/cloudapi.v1.HostService/",)

READER, MEMBER, ADMIN = "reader", "member", "admin"

_SERVICES: dict[str, dict[str, str]] = {
    "InstanceService": {
        "CreateInstance": MEMBER, "DeleteInstance": MEMBER,
        "GetInstance": READER, "ListInstances": READER, "GetConsoleOutput": READER,
        "PreviewPlacement": MEMBER, "CreateInstances": MEMBER,
        "StopInstance": MEMBER, "StartInstance": MEMBER,
        "RebootInstance": MEMBER, "ScaleInstance": MEMBER, "RenameInstance": MEMBER,
        "ResizeInstance": MEMBER,
        "ListInstanceActions": READER, "GetInstanceStats": READER,
    },
    "ServerGroupService": {
        "CreateServerGroup": MEMBER, "DeleteServerGroup": MEMBER,
        "GetServerGroup": READER, "ListServerGroups": READER,
    },
    "KeypairService": {
        "CreateKeypair": MEMBER, "ImportKeypair": MEMBER, "DeleteKeypair": MEMBER,
        "ListKeypairs": READER,
    },
    "HostAdminService": {
        "ListHosts": ADMIN, "GetHost": ADMIN, "UpdateHost": ADMIN, "SetInventory": ADMIN,
        "GetCapacity": ADMIN, "CreateAggregate": ADMIN, "ListAggregates": ADMIN,
        "DeleteAggregate": ADMIN, "AddHostToAggregate": ADMIN, "RemoveHostFromAggregate": ADMIN,
        "GetStoreStatus": ADMIN,
    },
    "FlavorService": {
        "ListFlavors": READER, "GetFlavor": READER, "CreateFlavor": ADMIN, "DeleteFlavor": ADMIN,
    },
    "ImageService": {"ListImages": READER, "GetImage": READER, "CreateImage": MEMBER,
                     "DeleteImage": MEMBER},
    "IdentityService": {
        "Logout": READER, "WhoAmI": READER, "RevokeUserTokens": ADMIN,
        "CreateProject": ADMIN, "ListProjects": ADMIN, "DeleteProject": ADMIN,
        "CreateUser": ADMIN, "ListUsers": ADMIN, "DeleteUser": ADMIN,
        "AddRole": ADMIN, "RemoveRole": ADMIN,
    },
    "QuotaService": {"GetQuota": READER, "SetQuota": ADMIN},
    # Scaling groups and metrics of the caller's own project (control/scaling.py).
    "MetricsService": {"GetInstanceMetrics": READER, "GetGroupMetrics": READER},
    "ScalingGroupService": {
        "CreateScalingGroup": MEMBER, "SetDesired": MEMBER, "DeleteScalingGroup": MEMBER,
        "GetScalingGroup": READER, "ListScalingGroups": READER,
    },
    # Tenants see their own project's events; host events need admin (checked by the servicer).
    "EventService": {"Watch": READER},
    # Own project for tenants; another project for admins only (checked by the servicer).
    "UsageService": {"GetProjectUsage": READER, "ListUsageRecords": READER},
}

RULES: dict[str, str] = {
    f"/cloudapi.v1.{service}/{method}": role
    for service, methods in _SERVICES.items() for method, role in methods.items()
}


def is_public(method: str) -> bool:
    return method.startswith(PUBLIC_PREFIXES)


def is_agent_call(method: str) -> bool:
    return method.startswith(AGENT_PREFIXES)


def required_role(method: str) -> str:
    return RULES.get(method, ADMIN)
