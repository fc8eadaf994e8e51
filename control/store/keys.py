"""Every etcd key the control plane uses is built here, and only here.

Layout (all under one prefix so a cloud can share an etcd cluster):

    /cloud/flavors/{name}                          flavor record
    /cloud/images/{id}                             image record
    /cloud/image-names/{scope}/{name}              name -> id; scope: "public" or the owner project
    /cloud/hosts/{name}                            host registration and last heartbeat
    /cloud/placement/providers/{host}              a host's inventory and usage (CAS target of claims)
    /cloud/placement/allocations/{instance_id}     the one allocation an instance holds
    /cloud/placement/aggregates/{name}             hosts sharing traits and maybe a zone
    /cloud/projects/{project}/instances/{id}       instance record
    /cloud/projects/{project}/instance-names/{name}  name -> id (names unique per project)
    /cloud/projects/{project}/requests/{request_id}  request id -> result (idempotency)
    /cloud/projects/{project}/server-groups/{name}   policy and members -> their hosts
    /cloud/projects/{project}/actions/{instance_id}/{seq}  what was done to an instance
    /cloud/projects/{project}/keypairs/{name}      SSH public keys for guests
    /cloud/projects/{project}/user-data/{instance_id}  an instance's user data (apart: it is large)
    /cloud/projects/{project}/usage/{instance_id}/{start_ms}  a closed usage interval (billing)
    /cloud/projects/{project}/scaling-groups/{name}  scaling group: spec, desired size, status
    /cloud/projects/{project}/networks/{id}        a tenant network
    /cloud/projects/{project}/network-names/{name}   name -> id (names unique per project)
    /cloud/projects/{project}/fixed-ips/{network_id}/{ip}  an address IPAM gave a NIC (one per address)
    /cloud/projects/{project}/floating-ips/{address}  a floating IP the project holds, and its NIC
    /cloud/projects/{project}/security-groups/{id}  a security group and its rules
    /cloud/projects/{project}/security-group-names/{name}  name -> id (names unique per project)
    /cloud/projects/{project}/security-group-members/{group_id}/{instance_id}  an instance in the group
    /cloud/network-index/{id}                      id -> project (every network, for the hosts' view)
    /cloud/network-vnis/{vni}                      a VXLAN id taken, cloud-wide -> its network
    /cloud/external-ips/{address}                  an external address taken (SNAT or floating) -> owner
    /cloud/instance-index/{id}                     id -> project (lets tasks find an instance by id)
    /cloud/scaling-group-index/{project}/{name}    every project's scaling groups, for the controller
    /cloud/leaders/{name}                          holder of a singleton loop's lock (on a lease)
    /cloud/identity/projects/{name}                project record
    /cloud/identity/users/{name}                   user record (password hash)
    /cloud/identity/roles/{user}/{project}         the user's role in that project
    /cloud/identity/tokens/{sha256 of token}       token record (the token itself is never stored)
    /cloud/quota/limits/{project}                  a project's quota overrides
    /cloud/quota/usage/{project}                   what a project's instances hold (CAS target)
    /cloud/strays/{host}/{instance_id}             a domain no instance owns, first seen at (reconciler)
    /cloud/schema                                  the stored state's schema version (control/store/schema.py)
"""

from __future__ import annotations

PREFIX = "/cloud"


def _part(value: str) -> str:
    # Key parts are ids and validated names; a "/" would escape the namespace.
    if not value or "/" in value:
        raise ValueError(f"invalid key part: {value!r}")
    return value


def flavor(name: str) -> str:
    return f"{PREFIX}/flavors/{_part(name)}"


def flavors() -> str:
    return f"{PREFIX}/flavors/"


def image(image_id: str) -> str:
    return f"{PREFIX}/images/{_part(image_id)}"


def images() -> str:
    return f"{PREFIX}/images/"


def image_name(scope: str, name: str) -> str:
    """Image names are unique among public images, and among a project's own."""
    return f"{PREFIX}/image-names/{_part(scope)}/{_part(name)}"


def image_names(scope: str) -> str:
    """The names of a scope's images: a project's own, or the public ones."""
    return f"{PREFIX}/image-names/{_part(scope)}/"


def host(name: str) -> str:
    return f"{PREFIX}/hosts/{_part(name)}"


def hosts() -> str:
    return f"{PREFIX}/hosts/"


def provider(host_name: str) -> str:
    return f"{PREFIX}/placement/providers/{_part(host_name)}"


def providers() -> str:
    return f"{PREFIX}/placement/providers/"


def aggregate(name: str) -> str:
    return f"{PREFIX}/placement/aggregates/{_part(name)}"


def aggregates() -> str:
    return f"{PREFIX}/placement/aggregates/"


def allocations() -> str:
    return f"{PREFIX}/placement/allocations/"


def allocation(instance_id: str) -> str:
    return f"{PREFIX}/placement/allocations/{_part(instance_id)}"


def instance(project: str, instance_id: str) -> str:
    return f"{PREFIX}/projects/{_part(project)}/instances/{_part(instance_id)}"


def instances(project: str) -> str:
    return f"{PREFIX}/projects/{_part(project)}/instances/"


def project_data(project: str) -> str:
    """Everything a project owns: instances, names, request ids."""
    return f"{PREFIX}/projects/{_part(project)}/"


def instance_name(project: str, name: str) -> str:
    return f"{PREFIX}/projects/{_part(project)}/instance-names/{_part(name)}"


def server_group(project: str, name: str) -> str:
    return f"{PREFIX}/projects/{_part(project)}/server-groups/{_part(name)}"


def server_groups(project: str) -> str:
    return f"{PREFIX}/projects/{_part(project)}/server-groups/"


def action(project: str, instance_id: str, sequence: str) -> str:
    return f"{PREFIX}/projects/{_part(project)}/actions/{_part(instance_id)}/{_part(sequence)}"


def actions(project: str, instance_id: str) -> str:
    return f"{PREFIX}/projects/{_part(project)}/actions/{_part(instance_id)}/"


def keypair(project: str, name: str) -> str:
    return f"{PREFIX}/projects/{_part(project)}/keypairs/{_part(name)}"


def keypairs(project: str) -> str:
    return f"{PREFIX}/projects/{_part(project)}/keypairs/"


def user_data(project: str, instance_id: str) -> str:
    # Not under instances/: listing instances must not read user data.
    return f"{PREFIX}/projects/{_part(project)}/user-data/{_part(instance_id)}"


def request(project: str, request_id: str) -> str:
    return f"{PREFIX}/projects/{_part(project)}/requests/{_part(request_id)}"


def instance_index(instance_id: str) -> str:
    return f"{PREFIX}/instance-index/{_part(instance_id)}"


def project(name: str) -> str:
    return f"{PREFIX}/identity/projects/{_part(name)}"


def projects() -> str:
    return f"{PREFIX}/identity/projects/"


def user(name: str) -> str:
    return f"{PREFIX}/identity/users/{_part(name)}"


def users() -> str:
    return f"{PREFIX}/identity/users/"


def role(user_name: str, project_name: str) -> str:
    return f"{PREFIX}/identity/roles/{_part(user_name)}/{_part(project_name)}"


def roles_of(user_name: str) -> str:
    return f"{PREFIX}/identity/roles/{_part(user_name)}/"


def roles() -> str:
    return f"{PREFIX}/identity/roles/"


def token(token_hash: str) -> str:
    return f"{PREFIX}/identity/tokens/{_part(token_hash)}"


def tokens() -> str:
    return f"{PREFIX}/identity/tokens/"


def quota_limits(project_name: str) -> str:
    return f"{PREFIX}/quota/limits/{_part(project_name)}"


def quota_usage(project_name: str) -> str:
    return f"{PREFIX}/quota/usage/{_part(project_name)}"


def all_instances() -> str:
    return f"{PREFIX}/projects/"


# ---------------------------------------------------------------- usage metering (control/metering/usage.py)

USAGE_START_DIGITS = 15  # zero-padded milliseconds: keys sort by time until the year 33658


def usage_record(project: str, instance_id: str, start_ms: int) -> str:
    """A closed usage interval; keys sort by (instance, start)."""
    return (f"{PREFIX}/projects/{_part(project)}/usage/{_part(instance_id)}/"
            f"{start_ms:0{USAGE_START_DIGITS}d}")


def usage_records(project: str) -> str:
    return f"{PREFIX}/projects/{_part(project)}/usage/"


# ------------------------------------------------------- scaling groups (control/autoscaling/groups.py)

def scaling_group(project: str, name: str) -> str:
    return f"{PREFIX}/projects/{_part(project)}/scaling-groups/{_part(name)}"


def scaling_groups(project: str) -> str:
    return f"{PREFIX}/projects/{_part(project)}/scaling-groups/"


def scaling_group_index(project: str, name: str) -> str:
    """Lets the controller find every project's groups with one read."""
    return f"{PREFIX}/scaling-group-index/{_part(project)}/{_part(name)}"


def scaling_group_indexes() -> str:
    return f"{PREFIX}/scaling-group-index/"


def scaling_group_indexes_of(project: str) -> str:
    return f"{PREFIX}/scaling-group-index/{_part(project)}/"


def leader(name: str) -> str:
    """The lock of a loop that runs in one API replica at a time (control/store/leader.py)."""
    return f"{PREFIX}/leaders/{_part(name)}"


# ------------------------------------------------------- reliability (control/reconcile/reconciler.py)

def instance_indexes() -> str:
    """Every instance's id -> project record."""
    return f"{PREFIX}/instance-index/"


def quota_usages() -> str:
    """Every project's quota usage record."""
    return f"{PREFIX}/quota/usage/"


def stray(host_name: str, instance_id: str) -> str:
    """A domain that host reported and no instance owns: when it was first seen."""
    return f"{PREFIX}/strays/{_part(host_name)}/{_part(instance_id)}"


def strays() -> str:
    return f"{PREFIX}/strays/"


def schema_version() -> str:
    """The version of the stored records' shapes (control/store/schema.py)."""
    return f"{PREFIX}/schema"


# ------------------------------------------------------- tenant networks (control/network/)

def network(project: str, network_id: str) -> str:
    return f"{PREFIX}/projects/{_part(project)}/networks/{_part(network_id)}"


def networks(project: str) -> str:
    return f"{PREFIX}/projects/{_part(project)}/networks/"


def network_name(project: str, name: str) -> str:
    return f"{PREFIX}/projects/{_part(project)}/network-names/{_part(name)}"


def fixed_ip(project: str, network_id: str, address: str) -> str:
    """One allocated address of a network: written absent-only, so never given twice."""
    return f"{PREFIX}/projects/{_part(project)}/fixed-ips/{_part(network_id)}/{_part(address)}"


def fixed_ips(project: str, network_id: str) -> str:
    """Every address allocated on a network (empty: no NIC is on it)."""
    return f"{PREFIX}/projects/{_part(project)}/fixed-ips/{_part(network_id)}/"


def floating_ip(project: str, address: str) -> str:
    return f"{PREFIX}/projects/{_part(project)}/floating-ips/{_part(address)}"


def floating_ips(project: str) -> str:
    return f"{PREFIX}/projects/{_part(project)}/floating-ips/"


def network_index(network_id: str) -> str:
    return f"{PREFIX}/network-index/{_part(network_id)}"


def network_indexes() -> str:
    return f"{PREFIX}/network-index/"


def network_vni(vni: int) -> str:
    """A VXLAN network identifier in use: one network in the whole cloud has it."""
    return f"{PREFIX}/network-vnis/{vni}"


def external_ip(address: str) -> str:
    """An address of the external network in use (a router's SNAT address or a
    floating IP): one key per address, so no address is held twice."""
    return f"{PREFIX}/external-ips/{_part(address)}"


def external_ips() -> str:
    return f"{PREFIX}/external-ips/"


# ------------------------------------------------------- security groups (control/network/security_groups.py)

def security_group(project: str, group_id: str) -> str:
    """A group with its rules (a rule's create or delete rewrites the group's record)."""
    return f"{PREFIX}/projects/{_part(project)}/security-groups/{_part(group_id)}"


def security_groups(project: str) -> str:
    return f"{PREFIX}/projects/{_part(project)}/security-groups/"


def security_group_name(project: str, name: str) -> str:
    """Name -> id; written at the group's create, deleted at its delete, never
    changed in between: what an instance joining the group compares."""
    return f"{PREFIX}/projects/{_part(project)}/security-group-names/{_part(name)}"


def security_group_member(project: str, group_id: str, instance_id: str) -> str:
    """An instance in the group: a key per member, so a group's members are one
    prefix read (the hosts' view) and a delete can compare the prefix empty."""
    return (f"{PREFIX}/projects/{_part(project)}/security-group-members/{_part(group_id)}/"
            f"{_part(instance_id)}")


def security_group_members(project: str, group_id: str) -> str:
    return f"{PREFIX}/projects/{_part(project)}/security-group-members/{_part(group_id)}/"


def security_group_memberships(project: str) -> str:
    """Every membership of every group of the project."""
    return f"{PREFIX}/projects/{_part(project)}/security-group-members/"
