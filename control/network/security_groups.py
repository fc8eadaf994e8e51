"""Security groups: which traffic may reach or leave a project's instances' NICs.

A group is one record holding its rules (keys.security_group), a name key
(name -> id, unique in the project, written at the create and deleted at the
delete, never changed between) and a key per member instance
(keys.security_group_member). A rule's create or delete rewrites the group's
record under a compare of it, so two rule changes of one group never lose one.
Rules are validated here (`parse_rule`, pure) before anything is read or written.

Membership. An instance's groups are in its record (Instance.security_groups,
ids and names) and, per group, as a member key: both written in the same
transaction (the instance's create, SetInstanceSecurityGroups, its delete),
which also compares each joined group's name key, so a group deleted meanwhile
is never joined. A group's delete compares its member prefix empty, and every
other group of the project unchanged (none of their rules added a reference
to it meanwhile), so "in use" is never checked-then-written.

The "default" group. Every project has one, made by the project's first
instance create or group create (the name key absent-only: two first uses make
one): all egress allowed (one egress rule, any protocol, anyone) and ingress
only from its own members (one ingress rule whose remote group is itself). It
can be changed (its rules), never deleted; a tenant's group cannot take the
name. It counts in the quotas like any group, as Neutron's does: a group
create makes the default first, so a tenant's own groups never crowd it out.

Quotas: `security_groups` (one per group) and `security_group_rules` (one per
rule, a new group's egress rule included), charged and given back in the
transaction that writes the group or the rule.

What the hosts get (networks.py's host_view, through `host_groups`): each port
its instance's group ids; every group of the host's ports and every group
their rules name as remote, with its rules and its members' fixed IPs. After a
change the hosts whose view changed are nudged to converge their firewall
(SyncNetworks with firewall_only: nothing else of theirs changed), in parallel
and best effort (nudge.py): agents also converge on their timer. Each host's
firewall (compute-agent's tenant/firewall.py) enforces the groups with nftables.
"""

from __future__ import annotations

import builtins
import ipaddress
import logging
import random
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from control import deadlines
from control.compute import records
from control.compute.states import TaskState
from control.errors import (
    AlreadyExists,
    Conflict,
    InvalidArgument,
    InvalidTransition,
    NotFound,
)
from control.identity.quotas import Quotas, QuotaValues
from control.models import Instance, SecurityGroup, SecurityGroupRef, SecurityGroupRule, validate_name
from control.network.nudge import nudge_in_parallel
from control.store import keys, lookup
from control.store.etcd import Record, Store, Txn

log = logging.getLogger(__name__)

DEFAULT_GROUP = "default"
GROUPS_QUOTA = "security_groups"
RULES_QUOTA = "security_group_rules"
DIRECTIONS = ("ingress", "egress")
PROTOCOLS = ("tcp", "udp", "icmp", "any")
PORTED = ("tcp", "udp")  # the protocols a rule may give ports for
MAX_DESCRIPTION = 255
MAX_GROUPS_PER_INSTANCE = 16  # as control/api/limits.py's for the request
# Creates race with the other writers of the project's quota record.
ATTEMPTS = 50
# The request ids' kinds (control/compute/instances.py's recorded_request).
CREATE_GROUP = "CreateSecurityGroup"
CREATE_RULE = "CreateSecurityGroupRule"



# ---------------------------------------------------------------- validation (pure)


def parse_rule(direction: str, protocol: str, port_min: int = 0, port_max: int = 0,
               remote_cidr: str = "", remote_group_id: str = "") -> SecurityGroupRule:
    """A rule from what a caller asked, or InvalidArgument saying what is wrong.
    Ports: tcp and udp only, 1..65535, min <= max; port_max 0 with a port_min is
    that one port; both 0: every port. remote_cidr: an IPv4 network, no host
    bits set (stored normalised). At most one of remote_cidr and remote_group_id."""
    if direction not in DIRECTIONS:
        raise InvalidArgument(f"invalid direction {direction!r}: ingress or egress")
    if protocol not in PROTOCOLS:
        raise InvalidArgument(f"invalid protocol {protocol!r}: one of {', '.join(PROTOCOLS)}")
    if port_min or port_max:
        if protocol not in PORTED:
            raise InvalidArgument(f"ports are for tcp and udp only, not protocol {protocol}: "
                                  "leave them out")
        port_max = port_max or port_min
        if not (1 <= port_min <= 65535 and 1 <= port_max <= 65535):
            raise InvalidArgument(f"invalid port range {port_min}-{port_max}: ports are 1 to 65535")
        if port_min > port_max:
            raise InvalidArgument(f"invalid port range {port_min}-{port_max}: the first port is "
                                  "above the last")
    if remote_cidr and remote_group_id:
        raise InvalidArgument("give remote_cidr or remote_group, not both")
    return SecurityGroupRule(id=str(uuid.uuid4()), direction=direction, protocol=protocol,
                             port_min=port_min, port_max=port_max,
                             remote_cidr=parse_remote_cidr(remote_cidr) if remote_cidr else "",
                             remote_group_id=remote_group_id)


def parse_remote_cidr(text: str) -> str:
    """An IPv4 network as a rule's remote, normalised; InvalidArgument if it is
    not one (an address without a prefix, IPv6, host bits set: refused, not
    silently changed, as the caller may have meant another range)."""
    if "/" not in text:
        raise InvalidArgument(f"invalid remote_cidr {text!r}: an IPv4 network like 192.0.2.0/24")
    try:
        network = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise InvalidArgument(f"invalid remote_cidr {text!r}: {exc}") from None
    if not isinstance(network, ipaddress.IPv4Network):
        raise InvalidArgument(f"invalid remote_cidr {text!r}: IPv4 only")
    return str(network)


def same_rule(a: SecurityGroupRule, b: SecurityGroupRule) -> bool:
    """Whether two rules allow the same thing (ids aside)."""
    return a.model_dump(exclude={"id"}) == b.model_dump(exclude={"id"})


def default_rules(group_id: str) -> builtins.list[SecurityGroupRule]:
    """The default group's: anything out; in, anything from its own members."""
    return [SecurityGroupRule(id=str(uuid.uuid4()), direction="egress", protocol="any"),
            SecurityGroupRule(id=str(uuid.uuid4()), direction="ingress", protocol="any",
                              remote_group_id=group_id)]


def new_group_rules() -> builtins.list[SecurityGroupRule]:
    """A new group's: anything out, nothing in."""
    return [SecurityGroupRule(id=str(uuid.uuid4()), direction="egress", protocol="any")]


def charge(groups: int, rules: int) -> QuotaValues:
    return QuotaValues(resources={GROUPS_QUOTA: groups, RULES_QUOTA: rules})


# ---------------------------------------------------------------- what hosts get


@dataclass(frozen=True)
class HostGroup:
    """A group as a host applies it (agent.proto's HostSecurityGroup)."""

    id: str
    rules: builtins.list[SecurityGroupRule]
    member_ips: builtins.list[str]


def host_groups(groups: Iterable[SecurityGroup], instances: Iterable[Instance],
                local: Iterable[Instance]) -> builtins.list[HostGroup]:
    """The groups a host must have for its `local` instances (those with a NIC
    on it), from one project's `groups` and `instances`: every group of a local
    instance, and every group those groups' rules name as remote, each with its
    rules and the fixed IPs of every NIC of its members (on any host)."""
    by_id = {g.id: g for g in groups}
    wanted = {ref.id for i in local for ref in i.security_groups if ref.id in by_id}
    wanted |= {r.remote_group_id for g in list(wanted) for r in by_id[g].rules
               if r.remote_group_id in by_id}
    members: dict[str, builtins.list[str]] = {g: [] for g in wanted}
    for instance in instances:
        for ref in instance.security_groups:
            if ref.id in members:
                members[ref.id].extend(n.fixed_ip for n in instance.nics)
    return [HostGroup(g, by_id[g].rules, sorted(set(members[g]), key=ipaddress.IPv4Address))
            for g in sorted(wanted)]


@dataclass(frozen=True)
class Joined:
    """A group an instance is about to join: its name key (what the joining
    transaction compares) and the group."""

    name_record: Record
    group: SecurityGroup

    @property
    def ref(self) -> SecurityGroupRef:
        return SecurityGroupRef(id=self.group.id, name=self.group.name)


class SecurityGroups:
    def __init__(self, store: Store, quotas: Quotas):
        self.store = store
        self.quotas = quotas
        # nudge(host name): ask that host's agent to converge its firewall now
        # (control/plane.py wires it once the agents' client exists).
        self.nudge: Callable[[str], object] = lambda host: None

    # ---------------------------------------------------------------- reads

    def record(self, project: str, id_or_name: str) -> Record:
        """The group's record, by id or name, in this project only (another
        project's group is NOT_FOUND, like one that does not exist)."""
        return lookup.by_id_or_name(self.store, id_or_name, lambda i: keys.security_group(project, i),
                                    lambda n: keys.security_group_name(project, n), "security group")

    def get(self, project: str, id_or_name: str) -> SecurityGroup:
        return SecurityGroup(**self.record(project, id_or_name).value)

    def list(self, project: str) -> builtins.list[SecurityGroup]:
        return sorted((SecurityGroup(**r.value) for r in self.store.list(keys.security_groups(project))),
                      key=lambda g: g.name)

    def names(self, project: str) -> dict[str, str]:
        """id -> name of the project's groups."""
        return {g.id: g.name for g in self.list(project)}

    # ---------------------------------------------------------------- groups

    def _replay(self, project: str, request_id: str, kind: str) -> dict | None:
        # Imported here: control.compute.instances imports networks.py, which imports this module.
        from control.compute.instances import REQUEST_ID_PATTERN, recorded_request

        if request_id and not REQUEST_ID_PATTERN.fullmatch(request_id):
            raise InvalidArgument("invalid request_id: 1 to 128 characters from A-Z a-z 0-9 . _ : -")
        return recorded_request(self.store, project, request_id, kind)

    def _replayed_group(self, project: str, recorded: dict) -> SecurityGroup:
        current = self.store.get(keys.security_group(project, recorded["id"]))
        return SecurityGroup(**(current.value if current else recorded["group"]))

    def create(self, project: str, name: str, description: str = "",
               request_id: str = "") -> SecurityGroup:
        """Make a group with one egress rule, charged to the project's quotas in
        the same transaction. Bad input: INVALID_ARGUMENT; name taken (the
        "default" name always is): ALREADY_EXISTS; over quota:
        RESOURCE_EXHAUSTED; nothing written on any refusal."""
        validate_name(name, "security group name")
        if len(description) > MAX_DESCRIPTION:
            raise InvalidArgument(f"description too long: at most {MAX_DESCRIPTION} characters")
        if (earlier := self._replay(project, request_id, CREATE_GROUP)) is not None:
            return self._replayed_group(project, earlier)
        self.default(project)  # first: the tenant's own groups never crowd it out of the quota
        return self._create(project, name, description, new_group_rules(), request_id)

    def _create(self, project: str, name: str, description: str,
                rules: builtins.list[SecurityGroupRule], request_id: str = "",
                group_id: str = "") -> SecurityGroup:
        group = SecurityGroup(id=group_id or str(uuid.uuid4()), project=project, name=name,
                              description=description, rules=rules)
        for attempt in range(ATTEMPTS):
            if attempt:
                deadlines.check(f"the create of security group {name!r}")
                time.sleep(random.uniform(0, 0.002 * min(attempt, 10)))
            if self.store.get(keys.security_group_name(project, name)) is not None:
                raise AlreadyExists(f"a security group named {name!r} already exists")
            txn = (Txn().expect_absent(keys.security_group_name(project, name))
                   .put(keys.security_group_name(project, name), {"id": group.id})
                   .put(keys.security_group(project, group.id), group.model_dump(mode="json")))
            self.quotas.claim_into(txn, project, charge(1, len(rules)))
            if request_id:
                txn.expect_absent(keys.request(project, request_id)).put(
                    keys.request(project, request_id),
                    {"kind": CREATE_GROUP, "id": group.id, "group": group.model_dump(mode="json")})
            if self.store.commit(txn):
                log.info("security group %s (%s) created in %s", group.id, name, project)
                return group
            if (earlier := self._replay(project, request_id, CREATE_GROUP)) is not None:
                return self._replayed_group(project, earlier)  # the same request raced with itself
        raise Conflict(f"too many concurrent changes in project {project}; try again")

    def default(self, project: str) -> Record:
        """The project's "default" group's record, made now if it has none (two
        first uses at once make one: the loser finds the winner's)."""
        try:
            return self.record(project, DEFAULT_GROUP)
        except NotFound:
            pass
        group_id = str(uuid.uuid4())
        try:
            self._create(project, DEFAULT_GROUP, "the project's default group: anything out, "
                         "in only from its members", default_rules(group_id), group_id=group_id)
        except AlreadyExists:
            pass  # made meanwhile by another first use
        return self.record(project, DEFAULT_GROUP)

    def delete(self, project: str, id_or_name: str) -> None:
        """Delete a group and its rules, giving back their quota. FAILED_PRECONDITION
        for "default", and, naming them, while instances are in it or other
        groups' rules name it as their remote group."""
        for _ in range(ATTEMPTS):
            record = self.record(project, id_or_name)
            group = SecurityGroup(**record.value)
            if group.name == DEFAULT_GROUP:
                raise InvalidTransition("the default security group cannot be deleted")
            members = self.store.list(keys.security_group_members(project, group.id))
            if members:
                names = sorted(self._instance_name(project, m.key.rpartition("/")[2]) for m in members)
                raise InvalidTransition(f"security group {group.name} is in use by instances "
                                        f"{', '.join(names)}: give them other groups first")
            others = [r for r in self.store.list(keys.security_groups(project)) if r.key != record.key]
            naming = sorted(r.value["name"] for r in others
                            if any(rule.get("remote_group_id") == group.id for rule in r.value["rules"]))
            if naming:
                raise InvalidTransition(f"security group {group.name} is the remote group of rules "
                                        f"of groups {', '.join(naming)}: delete those rules first")
            txn = (Txn().expect(record).expect_empty(keys.security_group_members(project, group.id))
                   .delete(record.key).delete(keys.security_group_name(project, group.name)))
            for other in others:  # no rule naming this group was added meanwhile
                txn.expect(other)
            self.quotas.release_into(txn, project, charge(1, len(group.rules)))
            if self.store.commit(txn):
                log.info("security group %s (%s) deleted from %s", group.id, group.name, project)
                return
        raise Conflict(f"security group {id_or_name!r} is changing too often; try again")

    def _instance_name(self, project: str, instance_id: str) -> str:
        record = self.store.get(keys.instance(project, instance_id))
        return record.value["name"] if record else instance_id

    # ---------------------------------------------------------------- rules

    def create_rule(self, project: str, group_ref: str, direction: str, protocol: str,
                    port_min: int = 0, port_max: int = 0, remote_cidr: str = "",
                    remote_group: str = "", request_id: str = "",
                    ) -> tuple[SecurityGroup, SecurityGroupRule]:
        """Add a rule to a group, charged to security_group_rules in the same
        transaction. INVALID_ARGUMENT for bad input (parse_rule), NOT_FOUND for a
        group or remote group not of the project, ALREADY_EXISTS for a rule the
        group has already; nothing written on any refusal. The group's members'
        hosts are nudged."""
        parse_rule(direction, protocol, port_min, port_max, remote_cidr,
                   "remote" if remote_group else "")  # bad input first, before any read
        if (earlier := self._replay(project, request_id, CREATE_RULE)) is not None:
            group = self._replayed_group(project, earlier)
            return group, SecurityGroupRule(**earlier["rule"])
        for attempt in range(ATTEMPTS):
            if attempt:
                deadlines.check("the rule's create")
                time.sleep(random.uniform(0, 0.002 * min(attempt, 10)))
            record = self.record(project, group_ref)
            group = SecurityGroup(**record.value)
            txn = Txn().expect(record)
            remote_id = ""
            if remote_group:
                remote = self.record(project, remote_group)
                remote_id = remote.value["id"]
                if remote_id != group.id:  # not deleted meanwhile (its name key goes with it)
                    name_record = self.store.get(keys.security_group_name(project, remote.value["name"]))
                    if name_record is None:
                        raise NotFound(f"security group {remote_group!r} not found")
                    txn.expect(name_record)
            rule = parse_rule(direction, protocol, port_min, port_max, remote_cidr, remote_id)
            if any(same_rule(rule, r) for r in group.rules):
                raise AlreadyExists(f"security group {group.name} has this rule already")
            after = group.model_copy(update={"rules": [*group.rules, rule]})
            txn.put(record.key, after.model_dump(mode="json"))
            self.quotas.claim_into(txn, project, charge(0, 1))
            if request_id:
                txn.expect_absent(keys.request(project, request_id)).put(
                    keys.request(project, request_id),
                    {"kind": CREATE_RULE, "id": group.id, "group": after.model_dump(mode="json"),
                     "rule": rule.model_dump(mode="json")})
            if self.store.commit(txn):
                log.info("rule %s added to security group %s (%s) in %s", rule.id, group.id,
                         group.name, project)
                self.nudge_hosts(project, {group.id}, remote_too=False)
                return after, rule
            if (earlier := self._replay(project, request_id, CREATE_RULE)) is not None:
                return self._replayed_group(project, earlier), SecurityGroupRule(**earlier["rule"])
        raise Conflict(f"security group {group_ref!r} is changing too often; try again")

    def delete_rule(self, project: str, rule_id: str) -> None:
        """Remove a rule from its group and give back its quota."""
        for _ in range(ATTEMPTS):
            found = [(r, SecurityGroup(**r.value)) for r in self.store.list(keys.security_groups(project))]
            owner = next(((r, g) for r, g in found if any(rule.id == rule_id for rule in g.rules)), None)
            if owner is None:
                raise NotFound(f"security group rule {rule_id!r} not found")
            record, group = owner
            after = group.model_copy(update={"rules": [r for r in group.rules if r.id != rule_id]})
            txn = Txn().expect(record).put(record.key, after.model_dump(mode="json"))
            self.quotas.release_into(txn, project, charge(0, 1))
            if self.store.commit(txn):
                log.info("rule %s removed from security group %s in %s", rule_id, group.id, project)
                self.nudge_hosts(project, {group.id}, remote_too=False)
                return
        raise Conflict(f"security group rule {rule_id!r} is changing too often; try again")

    # ---------------------------------------------------------------- membership

    def for_instance(self, project: str, refs: builtins.list[str]) -> builtins.list[Joined]:
        """The groups an instance joins: those named (ids or names), or the
        project's "default" group. NOT_FOUND for one not in the project."""
        if len(refs) > MAX_GROUPS_PER_INSTANCE:
            raise InvalidArgument(f"at most {MAX_GROUPS_PER_INSTANCE} security groups per instance")
        found = [self.record(project, ref) for ref in refs] or [self.default(project)]
        joined = []
        for record in found:
            group = SecurityGroup(**record.value)
            name_record = self.store.get(keys.security_group_name(project, group.name))
            if name_record is None:
                raise NotFound(f"security group {group.name!r} not found")
            joined.append(Joined(name_record, group))
        ids = [j.group.id for j in joined]
        if len(set(ids)) != len(ids):
            raise InvalidArgument("a security group is listed twice")
        return joined

    def reread(self, joined: builtins.list[Joined]) -> builtins.list[Joined]:
        """The same groups again (NOT_FOUND for one deleted meanwhile)."""
        again = []
        for j in joined:
            current = self.store.get(j.name_record.key)
            if current is None or current.value["id"] != j.group.id:
                raise NotFound(f"security group {j.group.name!r} not found (deleted meanwhile)")
            again.append(Joined(current, j.group))
        return again

    def join_into(self, txn: Txn, project: str, joined: builtins.list[Joined],
                  instance_id: str) -> builtins.list[SecurityGroupRef]:
        """Make the instance a member of these groups in `txn`, which then commits
        only if none of them was deleted meanwhile. Returns what its record keeps."""
        for j in joined:
            txn.expect(j.name_record).put(keys.security_group_member(project, j.group.id, instance_id),
                                          {"instance_id": instance_id})
        return [j.ref for j in joined]

    def set_for_instance(self, project: str, record_of: Callable[[], Record],
                         refs: builtins.list[str]) -> Instance:
        """Replace the instance's groups (at least one) in one transaction: its
        record (through the one writer) and its member keys. The hosts whose view
        changed are nudged. `record_of` reads the instance's record (NOT_FOUND)."""
        if not refs:
            raise InvalidArgument("give at least one security group (an instance is always in one)")
        joined = self.for_instance(project, refs)
        for _ in range(ATTEMPTS):
            record = record_of()
            before = Instance(**record.value)
            if before.task_state is TaskState.DELETING:
                raise InvalidTransition(f"instance {before.name} is being deleted")
            txn = Txn()
            staying = {j.group.id for j in joined}
            for ref in before.security_groups:
                if ref.id not in staying:  # (etcd refuses a key both deleted and put in one txn)
                    txn.delete(keys.security_group_member(project, ref.id, before.id))
            refs_after = self.join_into(txn, project, joined, before.id)
            written = records.change_into(txn, record, None, {"security_groups": refs_after})
            if self.store.commit(txn):
                changed = {r.id for r in before.security_groups} ^ {r.id for r in refs_after}
                log.info("instance %s now in security groups %s", before.id,
                         ", ".join(r.name for r in refs_after))
                self.nudge_hosts(project, changed, remote_too=True, also={before.host})
                return written.instance
            joined = self.reread(joined)
        raise Conflict("the instance is changing too often; try again")

    # ---------------------------------------------------------------- hosts

    def hosts_of(self, project: str, group_ids: set[str], remote_too: bool) -> set[str]:
        """The hosts whose view has these groups: those of their members and, with
        `remote_too` (a membership changed: member_ips), of the members of
        groups whose rules name one of them."""
        if not group_ids:
            return set()
        wanted = set(group_ids)
        if remote_too:
            for group in self.list(project):
                if any(r.remote_group_id in group_ids for r in group.rules):
                    wanted.add(group.id)
        hosts = set()
        for record in self.store.list(keys.instances(project)):
            instance = Instance(**record.value)
            if instance.host and any(ref.id in wanted for ref in instance.security_groups):
                hosts.add(instance.host)
        return hosts

    def nudge_hosts(self, project: str, group_ids: set[str], remote_too: bool,
                    also: set[str] | None = None) -> None:
        """Tell the affected hosts to converge their firewall now."""
        nudge_in_parallel(self.hosts_of(project, group_ids, remote_too) | (also or set()), self.nudge,
                    f"security groups {', '.join(sorted(group_ids))}")


def leave_into(txn: Txn, instance: Instance) -> None:
    """Remove the instance from its groups, in the transaction that removes its record."""
    for ref in instance.security_groups:
        txn.delete(keys.security_group_member(instance.project, ref.id, instance.id))
