"""Server groups: instances that should (affinity) or must not (anti-affinity)
share a host. Hard policies are filters, soft ones weighers (control/placement/scheduler.py).

A group's record lists its members and the host each was placed on. A member's
claim compares and rewrites that record in the same transaction as the host
claim, so two members racing for the last free host of an anti-affinity group
cannot both win.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from control.errors import AlreadyExists, InvalidArgument, InvalidTransition, NotFound
from control.identity.accounts import check_project, expect_project_into
from control.models import validate_name
from control.store import keys
from control.store.etcd import Record, Store, Txn

POLICIES = ("affinity", "anti-affinity", "soft-affinity", "soft-anti-affinity")


class ServerGroup(BaseModel):
    name: str
    project: str
    policy: str
    members: dict[str, str] = Field(default_factory=dict)  # instance id -> host ("" until placed)

    def other_hosts(self, instance_id: str) -> tuple[str, ...]:
        return tuple(h for i, h in self.members.items() if i != instance_id and h)


class ServerGroups:
    def __init__(self, store: Store):
        self.store = store

    def create(self, project: str, name: str, policy: str) -> ServerGroup:
        validate_name(name, "server group name")
        if policy not in POLICIES:
            raise InvalidArgument(f"invalid policy {policy!r}: one of {', '.join(POLICIES)}")
        group = ServerGroup(name=name, project=project, policy=policy)
        key = keys.server_group(project, name)
        txn = Txn().expect_absent(key).put(key, group.model_dump())
        guard = expect_project_into(self.store, txn, project)
        if not self.store.commit(txn):
            check_project(self.store, guard)
            raise AlreadyExists(f"server group {name!r} already exists")
        return group

    def record(self, project: str, name: str) -> Record:
        record = self.store.get(keys.server_group(project, name)) if name and "/" not in name else None
        if record is None:
            raise NotFound(f"server group {name!r} not found")
        return record

    def get(self, project: str, name: str) -> ServerGroup:
        return ServerGroup(**self.record(project, name).value)

    def list(self, project: str) -> list[ServerGroup]:
        return [ServerGroup(**r.value) for r in self.store.list(keys.server_groups(project))]

    def delete(self, project: str, name: str) -> None:
        record = self.record(project, name)
        if record.value["members"]:
            raise InvalidTransition(f"server group {name!r} still has "
                                    f"{len(record.value['members'])} members")
        if not self.store.commit(Txn().expect(record).delete(record.key)):
            raise InvalidTransition(f"server group {name!r} changed meanwhile; try again")


def with_member(record: Record, instance_id: str, host: str = "") -> Txn:
    """A txn part: the group as read, now with `instance_id` on `host`."""
    group = ServerGroup(**record.value)
    group.members[instance_id] = host
    return Txn().expect(record).put(record.key, group.model_dump())


def without_member(record: Record, instance_id: str) -> Txn:
    group = ServerGroup(**record.value)
    group.members.pop(instance_id, None)
    return Txn().expect(record).put(record.key, group.model_dump())
