"""Who may do what: the least role each action needs, by action name.

An action missing from the table is refused to everyone but admins, so a new
RPC is closed until someone decides otherwise. Which *project's* resources a call
may touch is decided below the API, by the store layer's keys (every tenant
query is scoped by the caller's project).
"""

from __future__ import annotations

import re

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

# Every action of the cloud by name, "<area>:<verb>_<thing>", and the least role
# it needs. A front end maps each of its requests to one of these names once
# (the gRPC API: action_of below; a REST front end would map its routes) and
# checks the caller's role against it. An action missing here needs admin.
ACTIONS: dict[str, str] = {
    # InstanceService
    "compute:create_instance": MEMBER, "compute:delete_instance": MEMBER,
    "compute:get_instance": READER, "compute:list_instances": READER,
    "compute:get_console_output": READER, "compute:preview_placement": MEMBER,
    "compute:create_instances": MEMBER, "compute:stop_instance": MEMBER,
    "compute:start_instance": MEMBER, "compute:reboot_instance": MEMBER,
    "compute:scale_instance": MEMBER, "compute:rename_instance": MEMBER,
    "compute:resize_instance": MEMBER, "compute:list_instance_actions": READER,
    "compute:get_instance_stats": READER, "compute:set_instance_security_groups": MEMBER,
    # ServerGroupService
    "compute:create_server_group": MEMBER, "compute:delete_server_group": MEMBER,
    "compute:get_server_group": READER, "compute:list_server_groups": READER,
    # KeypairService
    "compute:create_keypair": MEMBER, "compute:import_keypair": MEMBER,
    "compute:delete_keypair": MEMBER, "compute:list_keypairs": READER,
    # HostAdminService
    "placement:list_hosts": ADMIN, "placement:get_host": ADMIN, "placement:update_host": ADMIN,
    "placement:set_inventory": ADMIN, "placement:get_capacity": ADMIN,
    "placement:create_aggregate": ADMIN, "placement:list_aggregates": ADMIN,
    "placement:delete_aggregate": ADMIN, "placement:add_host_to_aggregate": ADMIN,
    "placement:remove_host_from_aggregate": ADMIN, "placement:get_store_status": ADMIN,
    # FlavorService
    "compute:list_flavors": READER, "compute:get_flavor": READER, "compute:create_flavor": ADMIN,
    "compute:delete_flavor": ADMIN,
    # ImageService
    "image:list_images": READER, "image:get_image": READER, "image:create_image": MEMBER,
    "image:delete_image": MEMBER,
    # IdentityService
    "identity:logout": READER, "identity:who_am_i": READER, "identity:revoke_user_tokens": ADMIN,
    "identity:create_project": ADMIN, "identity:list_projects": ADMIN,
    "identity:delete_project": ADMIN, "identity:create_user": ADMIN, "identity:list_users": ADMIN,
    "identity:delete_user": ADMIN, "identity:add_role": ADMIN, "identity:remove_role": ADMIN,
    # QuotaService
    "identity:get_quota": READER, "identity:set_quota": ADMIN,
    # MetricsService
    "scaling:get_instance_metrics": READER, "scaling:get_group_metrics": READER,
    # ScalingGroupService
    "scaling:create_scaling_group": MEMBER, "scaling:set_desired": MEMBER,
    "scaling:delete_scaling_group": MEMBER, "scaling:get_scaling_group": READER,
    "scaling:list_scaling_groups": READER,
    # EventService
    "events:watch": READER,
    # UsageService
    "usage:get_project_usage": READER, "usage:list_usage_records": READER,
    # NetworkService: members manage their project's networks and floating IPs
    "network:create_network": MEMBER, "network:delete_network": MEMBER,
    "network:get_network": READER, "network:list_networks": READER,
    "network:create_floating_ip": MEMBER, "network:delete_floating_ip": MEMBER,
    "network:attach_floating_ip": MEMBER, "network:detach_floating_ip": MEMBER,
    "network:list_floating_ips": READER,
    # SecurityGroupService: members manage their project's groups and rules
    "network:create_security_group": MEMBER, "network:delete_security_group": MEMBER,
    "network:get_security_group": READER, "network:list_security_groups": READER,
    "network:create_security_group_rule": MEMBER, "network:delete_security_group_rule": MEMBER,
}

# An RPC of the gRPC API is the action "<its service's area>:<its name in
# snake_case>": /cloudapi.v1.InstanceService/CreateInstance is compute:create_instance.
AREAS: dict[str, str] = {
    "InstanceService": "compute", "ServerGroupService": "compute", "KeypairService": "compute",
    "FlavorService": "compute", "ImageService": "image", "HostAdminService": "placement",
    "IdentityService": "identity", "QuotaService": "identity", "MetricsService": "scaling",
    "ScalingGroupService": "scaling", "EventService": "events", "UsageService": "usage",
    "NetworkService": "network", "SecurityGroupService": "network",
}


def action_of(method: str) -> str:
    """The action a gRPC method path performs ("" for one not of the API)."""
    service, _, name = method.removeprefix("/cloudapi.v1.").partition("/")
    area = AREAS.get(service)
    return f"{area}:{re.sub(r'(?<!^)(?=[A-Z])', '_', name).lower()}" if area and name else ""


def role_for(action: str) -> str:
    """The least role an action needs (admin for one not in ACTIONS)."""
    return ACTIONS.get(action, ADMIN)


def is_public(method: str) -> bool:
    return method.startswith(PUBLIC_PREFIXES)


def is_agent_call(method: str) -> bool:
    return method.startswith(AGENT_PREFIXES)


def required_role(method: str) -> str:
    return role_for(action_of(method))
