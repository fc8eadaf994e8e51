"""EventService.Watch: instance and host events from etcd's watch, resumable by
revision (proto/cloudapi/v1/events.proto explains the contract).

A stream is one etcd watch (Store.watch_changes, with each change's previous
value) on the keys the caller may see: a tenant's watch covers its own
project's instance keys and nothing else, so isolation holds by construction.
Each change is compared with its previous value as the API shows it, and only
a change a consumer can see becomes an event. Event positions are (etcd
revision, index among this stream's events of that revision): deterministic
for a given request, so a resumed stream skips exactly what was sent before.

A project deleted and created again under its name is another project: a
stream of one project never sends a change from before that project's
creation (the etcd creation revision of its record), even when asked to
resume from an older revision, and a stream opened before the project was
deleted ends (NOT_FOUND) instead of sending the next project's changes.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from cloudapi.v1 import events_pb2, events_pb2_grpc

from control.api import convert
from control.api.interceptors import current_caller
from control.compute.states import TaskState, VmState
from control.errors import InvalidArgument, NotFound, PermissionDenied, ResourceExhausted
from control.identity.accounts import Caller
from control.models import Host, Instance
from control.plane import ControlPlane
from control.store import keys
from control.store.etcd import Change, ChangeFeed, Store

log = logging.getLogger(__name__)

Event = events_pb2.Event
ALL_PROJECTS = "*"
# How often a waiting stream looks at its call (cancelled, deadline) even when
# no change comes and no callback wakes it.
POLL_S = 1.0

_INSTANCE_KEY = re.compile(re.escape(keys.PREFIX) + r"/projects/([^/]+)/instances/([^/]+)")
_HOST_KEY = re.compile(re.escape(keys.PREFIX) + r"/hosts/([^/]+)")

STATE_FIELDS = {"status", "vm_state", "task_state", "power_state"}
SIZE_FIELDS = {"vcpus", "memory_mb", "disk_gb", "flavor"}
# Instance fields that change with (almost) every write, not a change in itself,
# or follow from the state fields (allowed_actions, and the states as enums: a
# change lists the string field, as it always has).
IGNORED_INSTANCE_FIELDS = {"updated_at", "allowed_actions", *(f"{f}_enum" for f in STATE_FIELDS)}
# Host record fields whose change is an UPDATED event (heartbeats rewrite only
# last_heartbeat; liveness is judged apart).
HOST_FIELDS = ("address", "enabled", "disabled_reason", "zone", "traits", "vcpus", "memory_mb",
               "disk_gb", "virt_type", "hypervisor")


@dataclass(frozen=True)
class Scope:
    """What one stream watches."""

    projects: tuple[str, ...] | None  # None: every project ("*")
    instances: bool
    hosts: bool
    instance_id: str = ""
    # With one project: the revision that created it. Nothing at or before it
    # is sent (an earlier project of the name), nor anything once the project
    # is not the one created then.
    since: int = 0

    def prefixes(self) -> list[str]:
        found = []
        if self.instances:
            if self.projects is None:
                found.append(keys.all_instances())
            elif self.instance_id:
                found += [keys.instance(p, self.instance_id) for p in self.projects]
            else:
                found += [keys.instances(p) for p in self.projects]
        if self.hosts:
            found.append(keys.hosts())
        return found

    def wants(self, key: str) -> tuple[str, str] | None:
        """("instance", project) or ("host", "") for a key of this scope, else None."""
        if self.instances and (m := _INSTANCE_KEY.fullmatch(key)):
            project, instance_id = m.groups()
            if (self.projects is None or project in self.projects) and (
                    not self.instance_id or instance_id == self.instance_id):
                return "instance", project
        if self.hosts and _HOST_KEY.fullmatch(key):
            return "host", ""
        return None


def resolve_scope(caller: Caller, request: events_pb2.WatchRequest, plane: ControlPlane) -> Scope:
    """Check a request against the caller's rights: another project is NOT_FOUND
    (unless admin), host events need admin."""
    project = request.project or caller.project
    if project != caller.project and not caller.is_admin:
        raise NotFound(f"project {project!r} not found")
    since = 0
    if project != ALL_PROJECTS:
        plane.identity.project(project)  # NOT_FOUND if it does not exist
        since, _ = plane.store.creation(keys.project(project))
        if not since:
            raise NotFound(f"project {project!r} not found")
    kinds = set(request.kinds)
    if Event.KIND_UNSPECIFIED in kinds or not kinds <= {Event.INSTANCE, Event.HOST}:
        raise InvalidArgument("kinds: INSTANCE and/or HOST")
    if not kinds:
        kinds = {Event.INSTANCE, Event.HOST} if caller.is_admin else {Event.INSTANCE}
    if Event.HOST in kinds and not caller.is_admin:
        raise PermissionDenied(f"role {caller.role} may not watch host events (needs admin)")
    if request.instance_id and not re.fullmatch(r"[A-Za-z0-9-]{1,64}", request.instance_id):
        raise InvalidArgument(f"invalid instance_id {request.instance_id!r}")
    return Scope(projects=None if project == ALL_PROJECTS else (project,),
                 instances=Event.INSTANCE in kinds, hosts=Event.HOST in kinds,
                 instance_id=request.instance_id, since=since)


# ---------------------------------------------------------------- changes -> events


def _ts(seconds: float):
    return convert._ts(seconds)


def _diff(old: Any, new: Any, ignore: set[str]) -> list[str]:
    """Names of the fields that differ between two messages of one type."""
    return sorted(f.name for f in new.DESCRIPTOR.fields
                  if f.name not in ignore and getattr(old, f.name) != getattr(new, f.name))


def instance_event(change: Change, project: str, now: float) -> Event | None:
    """The event a change to an instance record makes, or None if nothing a
    consumer sees changed."""
    new = Instance(**change.value) if change.value is not None else None
    old = Instance(**change.prev) if change.prev is not None else None
    if new is None:
        if old is None:
            return None
        last = convert.instance(old.model_copy(
            update={"vm_state": VmState.DELETED, "task_state": TaskState.NONE}))
        return Event(kind=Event.INSTANCE, type=Event.DELETED, project=project, instance=last,
                     time=_ts(now))
    shown = convert.instance(new)
    if old is None:
        return Event(kind=Event.INSTANCE, type=Event.CREATED, project=project, instance=shown,
                     time=_ts(new.updated_at))
    changed = _diff(convert.instance(old), shown, IGNORED_INSTANCE_FIELDS)
    if not changed:
        return None
    kind = (Event.RESIZED if SIZE_FIELDS & set(changed) else
            Event.STATE_CHANGED if STATE_FIELDS & set(changed) else Event.UPDATED)
    at = new.updated_at if new.updated_at != old.updated_at else now
    return Event(kind=Event.INSTANCE, type=kind, project=project, instance=shown,
                 changed=changed, time=_ts(at))


def explicit_up(value: dict[str, Any]) -> bool | None:
    """Hook for an explicit liveness mark on the host record: a writer that
    decides a host is down (or back up) puts `"up": false` (or true) in it, and
    the stream sends HOST_DOWN (HOST_UP) when that flag changes. Without the
    flag, liveness is derived from heartbeat age (see host_event)."""
    up = value.get("up")
    return up if isinstance(up, bool) else None


def host_snapshot(value: dict[str, Any], at: float, down_after_s: float) -> events_pb2.HostSnapshot:
    host = Host(**value)
    up = explicit_up(value)
    if up is None:
        up = host.is_up(down_after_s, now=at)
    return events_pb2.HostSnapshot(
        name=host.name, address=host.address, enabled=host.enabled,
        disabled_reason=host.disabled_reason, up=up, zone=host.zone, traits=sorted(host.traits),
        vcpus=host.inventory.vcpus, memory_mb=host.inventory.memory_mb,
        disk_gb=host.inventory.disk_gb, virt_type=host.virt_type, hypervisor=host.hypervisor,
        registered_at=_ts(host.registered_at), last_heartbeat=_ts(host.last_heartbeat))


def host_event(change: Change, now: float, down_after_s: float) -> Event | None:
    """The event a change to a host record makes, or None (a heartbeat alone).

    HOST_UP is derived from a write too: a heartbeat (or re-registration) that
    comes more than down_after_s after the previous one ends a time the host
    was down. HOST_DOWN needs a write that says so (explicit_up)."""
    if change.value is None:
        if change.prev is None:
            return None
        return Event(kind=Event.HOST, type=Event.HOST_REMOVED,
                     host=host_snapshot(change.prev, now, down_after_s), time=_ts(now))
    if change.prev is None:
        return Event(kind=Event.HOST, type=Event.HOST_REGISTERED,
                     host=host_snapshot(change.value, now, down_after_s),
                     time=_ts(Host(**change.value).registered_at))
    new_beat = Host(**change.value).last_heartbeat
    old_beat = Host(**change.prev).last_heartbeat
    at = new_beat if new_beat != old_beat else now
    new, old = host_snapshot(change.value, at, down_after_s), host_snapshot(change.prev, at,
                                                                          down_after_s)
    changed = [f for f in HOST_FIELDS if getattr(old, f) != getattr(new, f)]
    was_up, is_up = explicit_up(change.prev), explicit_up(change.value)
    kind = Event.HOST_UPDATED
    if is_up is not None and is_up != (was_up if was_up is not None else True):
        kind = Event.HOST_UP if is_up else Event.HOST_DOWN
    elif is_up is not False and was_up is not False and new_beat - old_beat > down_after_s:
        kind = Event.HOST_UP  # back after a silence nobody marked (reconciler off)
    if kind != Event.HOST_UPDATED:
        changed = sorted([*changed, "up"])
    elif not changed:
        return None
    return Event(kind=Event.HOST, type=kind, host=new, changed=sorted(changed), time=_ts(at))


def change_event(scope: Scope, change: Change, now: float, down_after_s: float) -> Event | None:
    wanted = scope.wants(change.key)
    if wanted is None:
        return None
    what, project = wanted
    if what == "instance":
        return instance_event(change, project, now)
    return host_event(change, now, down_after_s)


# ---------------------------------------------------------------- the stream


def existing(store: Store, scope: Scope, now: float, down_after_s: float,
             ) -> tuple[list[Event], int]:
    """Every object of the scope as of one revision R (read as one snapshot), and R."""
    revision = store.revision()
    found: list[Event] = []
    if scope.instances:
        projects = scope.projects
        if projects is None:
            records, _ = store.list_at_revision(keys.projects(), revision)
            projects = tuple(r.key.rsplit("/", 1)[1] for r in records)
        for project in projects:
            records, _ = store.list_at_revision(keys.instances(project), revision)
            for r in records:
                # (a record unchanged since before the project was created is
                # not the project's: there is none, as its delete compares that)
                if scope.wants(r.key) and r.mod_revision > scope.since:
                    found.append(Event(kind=Event.INSTANCE, type=Event.EXISTING, project=project,
                                       instance=convert.instance(Instance(**r.value)),
                                       time=_ts(r.value.get("updated_at") or now)))
    if scope.hosts:
        records, _ = store.list_at_revision(keys.hosts(), revision)
        found += [Event(kind=Event.HOST, type=Event.EXISTING, time=_ts(now),
                        host=host_snapshot(r.value, now, down_after_s)) for r in records]
    return found, revision


def events(store: Store, scope: Scope, request: events_pb2.WatchRequest, context,
           down_after_s: float) -> Iterator[Event]:
    """The events of one Watch call, until the call ends (cancelled, deadline)."""
    after, after_index = request.after_revision, None
    if after < 0:
        raise InvalidArgument("after_revision must be 0 (now) or a revision")
    if request.HasField("after_index"):
        if after == 0 or request.after_index < 0:
            raise InvalidArgument("after_index needs an after_revision, and is 0 or more")
        after_index = request.after_index
    if request.include_existing and after:
        raise InvalidArgument("include_existing starts a stream afresh: not with after_revision")

    snapshot: list[Event] = []
    if after == 0:
        if request.include_existing:
            snapshot, after = existing(store, scope, time.time(), down_after_s)
            _still_there(store, scope, after, scope.since)  # the snapshot is the project's own
        else:
            after = store.revision()
        for index, event in enumerate(snapshot):
            event.revision, event.index = after, index
        snapshot.append(Event(type=Event.SYNCED, revision=after, index=len(snapshot),
                              time=_ts(time.time())))
    elif after > (current := store.revision()):
        raise InvalidArgument(f"after_revision {after} is ahead of the store (at {current})")
    elif after < scope.since:
        # From before the project was created: what came before is another
        # project's (of the same name, deleted), so the stream starts at its
        # creation, which changed nothing the stream shows.
        after, after_index = scope.since, None

    # Resuming within a revision: watch from that revision and skip what was sent.
    feed = store.watch_changes(scope.prefixes(), after - 1 if after_index is not None else after)
    if not context.add_callback(feed.close):
        feed.close()  # the call has ended already
    try:
        yield from snapshot
        yield from _changes(store, feed, scope, context, down_after_s,
                            (after, after_index) if after_index is not None else None)
    finally:
        feed.close()


def _still_there(store: Store, scope: Scope, revision: int, checked: int) -> int:
    """Before a change at `revision` is sent: the revision up to which the
    scope's project is known to be the one the stream began with (`checked`,
    or later after a read). NotFound if it is not: it was deleted (and maybe
    created again, another project), so the stream ends."""
    if not scope.since or revision <= checked:
        return checked
    (project,) = scope.projects or ("",)
    created, read_at = store.creation(keys.project(project))
    if created != scope.since:
        raise NotFound(f"project {project!r} was deleted")
    return read_at  # it has existed, the same, from its creation to read_at >= revision


def _changes(store: Store, feed: ChangeFeed, scope: Scope, context, down_after_s: float,
             resume: tuple[int, int] | None) -> Iterator[Event]:
    revision, index = 0, 0  # the revision being sent, and the next index in it
    checked = scope.since  # the project is known to be the stream's own up to here
    while context.is_active() and not feed.closed:
        remaining = context.time_remaining()
        batch = feed.get(timeout=POLL_S if remaining is None else max(0.0, min(POLL_S, remaining)))
        for change in batch or ():
            if change.mod_revision <= scope.since:
                continue  # an earlier project's (not watched from there: a safeguard)
            event = change_event(scope, change, time.time(), down_after_s)
            if event is None:
                continue
            checked = _still_there(store, scope, change.mod_revision, checked)
            if change.mod_revision != revision:
                revision, index = change.mod_revision, 0
            event.revision, event.index = revision, index
            index += 1
            if resume is not None and (revision, event.index) <= resume:
                continue  # sent before the client reconnected
            yield event


class EventServicer(events_pb2_grpc.EventServiceServicer):
    def __init__(self, plane: ControlPlane):
        self.plane = plane
        self.max_streams = plane.config.event_max_streams
        self._slots = threading.BoundedSemaphore(self.max_streams)

    def Watch(self, request, context):
        scope = resolve_scope(current_caller(), request, self.plane)
        if not self._slots.acquire(blocking=False):
            raise ResourceExhausted(f"this API server has {self.max_streams} event streams open "
                                    "already; try again later")
        try:
            yield from events(self.plane.store, scope, request, context,
                              self.plane.config.host_down_after_s)
        finally:
            self._slots.release()
