"""Scaling groups: identical instances that the control plane keeps at a
desired size, optionally moving that size to keep a metric near a target.

The API records a group (spec and desired size) in etcd and changes its
desired size; it never creates members itself. The controller (`converge_all`,
run every `scaling_interval_s` by one API replica at a time, control/store/leader.py)
compares each group's members with its desired size, as a Kubernetes controller
would:

- members are ordinary instances of the group's project, named {group}-{n},
  whose record carries `scaling_group`; those being deleted do not count;
- a member in ERROR is deleted and replaced; the failure is kept on the group
  (last_error) and the replacement waits a backoff that doubles per failure in
  a row (up to MAX_BACKOFF_S), so a member that cannot be built is not
  recreated in a tight loop;
- fewer than desired: members are created through control.compute.instances as the
  project itself would (a service caller of the project), so quota is claimed
  in the create's transaction and placement by the build, exactly as for a
  tenant's create. A quota refusal, or no host that could take the flavor
  (asked of the scheduler first), is kept in last_error and tried again at the
  next tick. The group never holds more than max_size instances, counting
  those still being deleted;
- more than desired: the newest members are deleted first;
- target tracking (TargetPolicy): desired = ceil(members x average / target)
  within min..max, only while the group is at its size with every member
  ACTIVE and reporting fresh metrics, and not within a cooldown of the last
  change.

Deleting a group marks it DELETING and deletes its members; the controller
removes its record (and the server group it made) once they are gone.
"""

from __future__ import annotations

import builtins
import logging
import math
import re
import time
from collections import defaultdict
from dataclasses import replace

from pydantic import BaseModel, Field

from control.compute.flavors import Catalog
from control.compute.instances import Instances
from control.compute.server_groups import POLICIES, ServerGroup
from control.compute.states import TaskState, VmState, status
from control.config import ControlConfig
from control.errors import (
    AlreadyExists,
    CloudError,
    Conflict,
    InvalidArgument,
    InvalidTransition,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from control.identity.accounts import Caller, check_project, expect_project_into
from control.metering.metrics import Metrics
from control.models import Flavor, Instance, validate_name
from control.placement.scheduler import Scheduler, flavor_request
from control.store import keys
from control.store.etcd import Record, Store, Txn
from control.store.leader import LeaderLoop

log = logging.getLogger(__name__)

MAX_NAME = 50            # members are {name}-{n}: instance names stay within 63
MAX_SIZE_LIMIT = 100
CREATES_PER_TICK = 10    # per group: a big step is spread over a few ticks
MAX_BACKOFF_S = 300.0
METRICS = ("cpu_utilisation",)
SERVICE_USER = "autoscaler"  # who members' actions are recorded as
LOCK_NAME = "scaling"

ACTIVE, SCALING, DELETING = "ACTIVE", "SCALING", "DELETING"


class TargetPolicy(BaseModel):
    metric: str = "cpu_utilisation"
    target: float
    scale_out_cooldown_s: int = 60
    scale_in_cooldown_s: int = 120


class ScalingGroup(BaseModel):
    name: str
    project: str
    flavor: str
    image: str  # image id
    key_name: str = ""
    min_size: int
    max_size: int
    desired: int
    server_group_policy: str = ""
    server_group: str = ""
    owns_server_group: bool = False  # made for this group: deleted with it
    policy: TargetPolicy | None = None
    status: str = SCALING
    last_error: str = ""
    last_error_at: float | None = None
    last_scaled_at: float = Field(default_factory=time.time)
    last_scaling_reason: str = "created"
    created_at: float = Field(default_factory=time.time)
    request_id: str = ""
    # Members that failed in a row, and when the next replacement may be made.
    failures: int = 0
    retry_after: float = 0.0


def target_tracking(policy: TargetPolicy, members: int, average: float, desired: int,
                    min_size: int, max_size: int, last_scaled_at: float,
                    now: float) -> tuple[int, str] | None:
    """The desired size target tracking asks for now, and why; None to leave it."""
    # The tolerance keeps 2 members at exactly the target from asking for 3.
    wanted = math.ceil(members * average / policy.target - 1e-6)
    wanted = max(min_size, min(max_size, wanted))
    since = now - last_scaled_at
    if wanted > desired and since >= policy.scale_out_cooldown_s:
        return wanted, (f"{policy.metric} {average:.1f} above target {policy.target:g} "
                        f"on {members} members: {desired} -> {wanted}")
    if wanted < desired and since >= policy.scale_in_cooldown_s:
        return wanted, (f"{policy.metric} {average:.1f} below target {policy.target:g} "
                        f"on {members} members: {desired} -> {wanted}")
    return None


def backoff_s(failures: int, interval_s: float) -> float:
    return min(MAX_BACKOFF_S, interval_s * 2 ** max(0, failures - 1))


def _member_number(group: str, name: str) -> int | None:
    match = re.fullmatch(re.escape(group) + r"-(\d+)", name)
    return int(match.group(1)) if match else None


class ScalingGroups:
    def __init__(self, store: Store, instances: Instances, catalog: Catalog, scheduler: Scheduler,
                 metrics: Metrics, config: ControlConfig):
        self.store = store
        self.instances = instances
        self.catalog = catalog
        self.scheduler = scheduler
        self.metrics = metrics
        self.config = config

    # ---------------------------------------------------------------- reads

    def record(self, project: str, name: str) -> Record:
        record = self.store.get(keys.scaling_group(project, name)) \
            if name and "/" not in name else None
        if record is None:
            raise NotFound(f"scaling group {name!r} not found")
        return record

    def get(self, project: str, name: str) -> ScalingGroup:
        return ScalingGroup(**self.record(project, name).value)

    def list(self, project: str) -> builtins.list[ScalingGroup]:
        groups = [ScalingGroup(**r.value) for r in self.store.list(keys.scaling_groups(project))]
        return sorted(groups, key=lambda g: g.name)

    def members(self, project: str) -> dict[str, builtins.list[Instance]]:
        """The project's instances that belong to a scaling group, by group, oldest first."""
        found: dict[str, builtins.list[Instance]] = defaultdict(list)
        for instance in self.instances.list(project):
            if instance.scaling_group:
                found[instance.scaling_group].append(instance)
        return found

    # ---------------------------------------------------------------- API

    def create(self, caller: Caller, name: str, flavor_name: str, image_ref: str, key_name: str,
               min_size: int, max_size: int, desired: int, server_group_policy: str = "",
               policy: TargetPolicy | None = None, request_id: str = "") -> ScalingGroup:
        project = caller.project
        validate_name(name, "scaling group name")
        if len(name) > MAX_NAME:
            raise InvalidArgument(f"a scaling group name has at most {MAX_NAME} characters")
        self.instances._check_request_id(request_id)
        key = keys.scaling_group(project, name)
        if request_id and (existing := self.store.get(key)) is not None \
                and existing.value.get("request_id") == request_id:
            return ScalingGroup(**existing.value)  # the same request again
        if not 1 <= max_size <= MAX_SIZE_LIMIT:
            raise InvalidArgument(f"max_size must be 1 to {MAX_SIZE_LIMIT}")
        if not 0 <= min_size <= desired <= max_size:
            raise InvalidArgument("sizes must be 0 <= min_size <= desired <= max_size; got "
                                  f"min {min_size}, desired {desired}, max {max_size}")
        if server_group_policy and server_group_policy not in POLICIES:
            raise InvalidArgument(f"invalid server group policy {server_group_policy!r}: "
                                  f"one of {', '.join(POLICIES)}")
        if policy is not None:
            if policy.metric not in METRICS:
                raise InvalidArgument(f"invalid metric {policy.metric!r}: one of {', '.join(METRICS)}")
            if not 0 < policy.target <= 100:
                raise InvalidArgument("a cpu_utilisation target is a percentage: above 0, at most 100")
            if policy.scale_out_cooldown_s < 0 or policy.scale_in_cooldown_s < 0:
                raise InvalidArgument("cooldowns cannot be negative")
        _, image = self.instances.flavor_and_image(caller, flavor_name, image_ref)
        if key_name:
            self.instances.keypairs.get(project, key_name)  # NOT_FOUND before anything is written
        group = ScalingGroup(name=name, project=project, flavor=flavor_name, image=image.id,
                             key_name=key_name, min_size=min_size, max_size=max_size,
                             desired=desired, policy=policy, request_id=request_id,
                             server_group_policy=server_group_policy,
                             last_scaling_reason=f"created by {caller.username}")
        txn = (Txn().expect_absent(key).put(key, group.model_dump())
               .put(keys.scaling_group_index(project, name), {"project": project, "name": name}))
        if server_group_policy:
            # The members' server group, named after the group; an existing one
            # of that name is used if its policy is the one asked for.
            group.server_group = name
            sg_key = keys.server_group(project, name)
            found = self.store.get(sg_key)
            if found is None:
                group.owns_server_group = True
                txn.expect_absent(sg_key).put(sg_key, ServerGroup(
                    name=name, project=project, policy=server_group_policy).model_dump())
            elif found.value["policy"] != server_group_policy:
                raise InvalidArgument(f"server group {name!r} exists with policy "
                                      f"{found.value['policy']}; delete it or ask for that policy")
            else:
                txn.expect(found)
            txn.put(key, group.model_dump())
        guard = expect_project_into(self.store, txn, project)
        if not self.store.commit(txn):
            check_project(self.store, guard)
            if (existing := self.store.get(key)) is not None:
                if request_id and existing.value.get("request_id") == request_id:
                    return ScalingGroup(**existing.value)
                raise AlreadyExists(f"a scaling group named {name!r} already exists")
            raise Conflict(f"server group {name!r} changed meanwhile; try again")
        log.info("scaling group %s created in %s: %s x %d (%d..%d)", name, project, flavor_name,
                 desired, min_size, max_size)
        return group

    def set_desired(self, caller: Caller, name: str, desired: int) -> ScalingGroup:
        record = self.record(caller.project, name)

        def change(current: Record) -> Txn | None:
            group = ScalingGroup(**current.value)
            if group.status == DELETING:
                raise InvalidTransition(f"scaling group {name!r} is being deleted")
            if not group.min_size <= desired <= group.max_size:
                raise InvalidArgument(f"desired must be within {group.min_size}..{group.max_size}")
            if group.desired == desired:
                return None
            group = group.model_copy(update={
                "desired": desired, "status": SCALING, "last_scaled_at": time.time(),
                "last_scaling_reason": f"set by {caller.username}: {group.desired} -> {desired}"})
            return Txn().expect(current).put(current.key, group.model_dump())

        updated = self.store.update(record.key, change)
        if updated is None:
            raise NotFound(f"scaling group {name!r} not found")
        return ScalingGroup(**updated.value)

    def delete(self, caller: Caller, name: str) -> ScalingGroup:
        """Mark the group DELETING and delete its members; the record goes when they have."""
        record = self.record(caller.project, name)

        def change(current: Record) -> Txn | None:
            group = ScalingGroup(**current.value)
            if group.status == DELETING:
                return None
            group = group.model_copy(update={
                "status": DELETING, "desired": 0, "last_scaled_at": time.time(),
                "last_scaling_reason": f"deleted by {caller.username}"})
            return Txn().expect(current).put(current.key, group.model_dump())

        updated = self.store.update(record.key, change)
        if updated is None:
            raise NotFound(f"scaling group {name!r} not found")
        group = ScalingGroup(**updated.value)
        members = self.members(caller.project).get(name, [])
        self._delete_members(group, members, caller.username)
        if not members:
            self._finish_delete(group)
        log.info("scaling group %s of %s deleting (%d members)", name, caller.project, len(members))
        return group

    def _delete_members(self, group: ScalingGroup, members: builtins.list[Instance], user: str) -> None:
        for member in members:
            if member.task_state is TaskState.DELETING:
                continue
            try:
                self.instances.delete(group.project, member.id, user)
            except NotFound:
                pass  # gone meanwhile
            except InvalidTransition:
                pass  # being deleted already

    def _finish_delete(self, group: ScalingGroup) -> None:
        """Remove a DELETING group without members: its record, its index entry and
        the server group made for it (once it has no members either)."""
        record = self.store.get(keys.scaling_group(group.project, group.name))
        if record is None or record.value.get("status") != DELETING:
            return
        txn = (Txn().expect(record).delete(record.key)
               .delete(keys.scaling_group_index(group.project, group.name)))
        if group.owns_server_group:
            sg = self.store.get(keys.server_group(group.project, group.server_group))
            if sg is not None and not sg.value.get("members"):
                txn.expect(sg).delete(sg.key)
        if self.store.commit(txn):
            log.info("scaling group %s of %s deleted", group.name, group.project)

    # ---------------------------------------------------------------- controller

    def converge_all(self) -> int:
        """One pass over every project's groups; returns how many were looked at.
        A group that fails is logged and left to the next pass."""
        by_project: dict[str, builtins.list[Record]] = defaultdict(list)
        for entry in self.store.list(keys.scaling_group_indexes()):
            by_project[entry.value["project"]].append(entry)
        seen = 0
        for project, entries in by_project.items():
            try:
                records = {r.key: r for r in self.store.list(keys.scaling_groups(project))}
                members = self.members(project)
            except Unavailable as exc:
                log.warning("scaling groups of %s: %s", project, exc)
                continue
            for entry in entries:
                record = records.get(keys.scaling_group(project, entry.value["name"]))
                if record is None:
                    # The group went with its project: forget it.
                    self.store.commit(Txn().expect(entry).delete(entry.key))
                    continue
                seen += 1
                try:
                    self.converge(record, members.get(entry.value["name"], []))
                except CloudError as exc:
                    log.warning("scaling group %s of %s: %s", entry.value["name"], project, exc)
        return seen

    def converge(self, record: Record, members: builtins.list[Instance]) -> None:
        """One step of one group toward its desired size (see the module's doc)."""
        group = ScalingGroup(**record.value)
        before = group.model_copy()
        now = time.time()
        caller = Caller(username=SERVICE_USER, project=group.project, role="member")
        deleting = [m for m in members if m.task_state is TaskState.DELETING]
        failed = [m for m in members if m.vm_state is VmState.ERROR and m not in deleting]
        live = [m for m in members if m not in deleting and m not in failed]

        if group.status == DELETING:
            self._delete_members(group, live + failed, SERVICE_USER)
            if not members:
                self._finish_delete(group)
            return

        for member in failed:
            fault = member.fault.message if member.fault else "failed"
            log.info("scaling group %s of %s: replacing %s, which failed", group.name,
                     group.project, member.name)
            self._delete_members(group, [member], SERVICE_USER)
            group.failures += 1
            group.retry_after = now + backoff_s(group.failures, self.config.scaling_interval_s)
            self._error(group, f"member {member.name} failed: {fault}", now)

        if group.policy is not None and not failed and len(live) == group.desired \
                and all(m.vm_state is VmState.ACTIVE and not m.task_state for m in live):
            self._track(group, live, now)

        if len(live) < group.desired:
            latest = self.store.get(record.key)
            if latest is None or latest.mod_revision != record.mod_revision:
                return  # resized or deleted since this pass read it: the next pass decides
            if now >= group.retry_after:
                room = min(group.desired - len(live), group.max_size - len(members),
                           CREATES_PER_TICK)
                self._create_members(group, caller, room, now)
        elif len(live) > group.desired:
            newest_first = sorted(live, key=lambda m: (m.created_at, m.name), reverse=True)
            self._delete_members(group, newest_first[:len(live) - group.desired], SERVICE_USER)
            live = newest_first[len(live) - group.desired:]

        settled = len(live) == group.desired and not failed and not deleting and all(
            m.vm_state is VmState.ACTIVE for m in live)
        group.status = ACTIVE if settled else SCALING
        if settled:
            group.failures, group.retry_after = 0, 0.0
        if group != before:
            if not self.store.commit(Txn().expect(record).put(record.key, group.model_dump())):
                log.info("scaling group %s changed meanwhile; next pass", group.name)

    def _error(self, group: ScalingGroup, message: str, now: float) -> None:
        if message != group.last_error:
            log.warning("scaling group %s of %s: %s", group.name, group.project, message)
            group.last_error, group.last_error_at = message, now

    def _track(self, group: ScalingGroup, live: builtins.list[Instance], now: float) -> None:
        """Target tracking: move the desired size if the members' metrics ask for it."""
        assert group.policy is not None
        try:
            summaries = self.metrics.summaries([m.id for m in live])
        except Unavailable as exc:
            log.warning("scaling group %s: no metrics: %s", group.name, exc)
            return
        if not summaries or not all(s.fresh for s in summaries.values()):
            return  # act only on what every member reports now
        average = sum(s.cpu_utilisation for s in summaries.values()) / len(summaries)
        decision = target_tracking(group.policy, len(live), average, group.desired,
                                   group.min_size, group.max_size, group.last_scaled_at, now)
        if decision is not None:
            group.desired, group.last_scaling_reason = decision
            group.last_scaled_at = now
            log.info("scaling group %s of %s: %s", group.name, group.project, decision[1])

    def _create_members(self, group: ScalingGroup, caller: Caller, count: int, now: float) -> None:
        if count <= 0:
            return
        taken = {i.name for i in self.instances.list(group.project)}
        numbers = (n for n in range(1, 10 * MAX_SIZE_LIMIT) if f"{group.name}-{n}" not in taken)
        try:
            self._check_room(group)
            for _ in range(count):
                name = f"{group.name}-{next(numbers)}"
                self.instances.create(caller, name, group.flavor, group.image,
                                      group=group.server_group, key_name=group.key_name,
                                      scaling_group=group.name)
                log.info("scaling group %s of %s: created %s", group.name, group.project, name)
        except (ResourceExhausted, NotFound, InvalidArgument, AlreadyExists, Conflict) as exc:
            # Quota, no host, a deleted flavor, image or keypair: kept, tried next pass.
            self._error(group, f"cannot create a member: {exc}", now)

    def _check_room(self, group: ScalingGroup) -> None:
        """ResourceExhausted if no host could take a member now (asked of the
        scheduler's table, claiming nothing), so the build is not even tried."""
        flavor: Flavor = self.catalog.flavor(group.flavor, group.project)
        request = flavor_request(flavor)
        if group.server_group:
            sg = self.store.get(keys.server_group(group.project, group.server_group))
            if sg is not None:
                placed = ServerGroup(**sg.value)
                request = replace(request, group_policy=placed.policy,
                                  group_hosts=placed.other_hosts(""))
        decision = self.scheduler.preview(request)
        if not decision.hosts:
            raise ResourceExhausted(f"no host for flavor {flavor.name}: {decision.summary}")


def start_controller(groups: ScalingGroups, store: Store, interval_s: float,
                     lease_s: float) -> LeaderLoop:
    """Converge every group every interval_s, in one API replica at a time."""
    return LeaderLoop(store, LOCK_NAME, groups.converge_all, interval_s, lease_s).start()


def member_status(instance: Instance) -> str:
    return status(instance.state)
