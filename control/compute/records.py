"""The one writer of instance records: the instance key, its name key and its
index key (id -> project) are written here and nowhere else
(tests/unit/test_one_writer.py checks it).

Every change of an instance goes through `change_into`: it checks the state
transition (control/compute/states.py), meters the change (control/metering/usage.py),
records the action the change begins, and puts the record, all into the caller's
transaction, so that what the caller adds to it (quota and placement claims,
user data, server-group membership) commits atomically with the instance.
`create_into`, `rename_into`, `delete_into` and `forget_into` do the same for
the writes that add, move or remove the name and index keys.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from control.compute import actions
from control.compute.states import Event
from control.metering.usage import meter_into
from control.models import Instance
from control.store import keys
from control.store.etcd import Applied, Record, Store, Txn

T = TypeVar("T")

# Fields a write without an event must not touch: moving between states is a transition.
STATE_FIELDS = frozenset({"vm_state", "task_state"})


@dataclass
class Written:
    """An instance as `txn` writes it, and the key of the action begun with it."""

    instance: Instance
    action_key: str = ""


# ---------------------------------------------------------------- reading by id


def key_of(store: Store, instance_id: str) -> str | None:
    """The record key of the instance with this id, found through the index (None:
    there is no such instance)."""
    index = store.get(keys.instance_index(instance_id))
    return keys.instance(index.value["project"], instance_id) if index else None


def by_id(store: Store, instance_id: str) -> Record | None:
    key = key_of(store, instance_id)
    return store.get(key) if key else None


def update(store: Store, instance_id: str,
           change: Callable[[Record], tuple[Txn | None, T]]) -> Applied[T] | None:
    """Store.apply on the record of the instance with this id (None: it does not
    exist). `change` builds its transaction with the writers below."""
    key = key_of(store, instance_id)
    return store.apply(key, change) if key else None


# ---------------------------------------------------------------- writing


def change_into(txn: Txn, record: Record, event: Event | None,
                changes: dict[str, Any] | None = None,
                action: actions.Begin | None = None) -> Written:
    """Change the instance `record` holds, under a compare of that record: by `event`
    (raises InvalidTransition if it is not legal now), with `changes` to its fields;
    without an event, fields only (observations, a name) and never its state.
    Metered; the action begun if one is given."""
    before = Instance(**record.value)
    changes = changes or {}
    if event is not None:
        after = before.after(event, **changes)
        return _write(txn, record, before, after, after.updated_at, action)
    if STATE_FIELDS & changes.keys():
        raise ValueError(f"a change of {sorted(STATE_FIELDS & changes.keys())} needs an event")
    # Billed as before (same state and sizes): metering only opens an interval for
    # a record written before metering existed, from now.
    return _write(txn, record, before, before.model_copy(update=changes), time.time(), action)


def revert_into(txn: Txn, record: Record, before: Instance) -> Written:
    """Take back a change whose task could not be queued (so nothing happened):
    the state it had before, the rest as it is now. No transition: the move it
    undoes never took effect."""
    current = Instance(**record.value)
    return _write(txn, record, current, current.model_copy(update={
        "vm_state": before.vm_state, "task_state": before.task_state}), time.time(), None)


def _write(txn: Txn, record: Record, before: Instance, after: Instance, now: float,
           action: actions.Begin | None) -> Written:
    txn.expect(record)
    after = meter_into(txn, before, after, now)
    txn.put(record.key, after.model_dump(mode="json"))
    return Written(after, _begin(txn, after, action))


def _begin(txn: Txn, instance: Instance, action: actions.Begin | None) -> str:
    if action is None:
        return ""
    return actions.begin_into(txn, instance.project, instance.id, action.action,
                              action.request_id, action.user)


def new(instance: Instance) -> Instance:
    """A new instance, metered as building from its creation (it has nothing to close)."""
    return meter_into(Txn(), None, instance.model_copy(update={"updated_at": instance.created_at}),
                      instance.created_at)


def create_into(txn: Txn, instance: Instance, action: actions.Begin | None = None) -> str:
    """Add a new instance (from `new`), its name (which must be free in its project)
    and its index entry; return the key of the action begun with it."""
    project = instance.project
    (txn.expect_absent(keys.instance_name(project, instance.name))
     .put(keys.instance(project, instance.id), instance.model_dump(mode="json"))
     .put(keys.instance_name(project, instance.name), {"id": instance.id})
     .put(keys.instance_index(instance.id), {"project": project}))
    return _begin(txn, instance, action)


def name_taken(store: Store, project: str, name: str) -> bool:
    return store.get(keys.instance_name(project, name)) is not None


def rename_into(txn: Txn, record: Record, new_name: str,
                action: actions.Begin | None = None) -> Written:
    """Rename the instance: its record and its name key, the new name free."""
    before = Instance(**record.value)
    project = before.project
    txn.expect_absent(keys.instance_name(project, new_name))
    written = change_into(txn, record, None, {"name": new_name}, action)
    (txn.delete(keys.instance_name(project, before.name))
     .put(keys.instance_name(project, new_name), {"id": before.id}))
    return written


def delete_into(txn: Txn, record: Record, now: float) -> Instance:
    """Remove the instance whose delete is done (raises InvalidTransition if it is
    not being deleted): its record, name and index entry; its last usage interval
    ends at `now`. Returns the instance as it was."""
    latest = Instance(**record.value)
    latest.after(Event.DELETED)  # checks the move is legal
    _remove_into(txn.expect(record), latest)
    meter_into(txn, latest, None, now)
    return latest


def forget_into(txn: Txn, instance: Instance) -> None:
    """Remove a created instance whose build could not be queued: unmetered, as the
    create failed (its moment of BUILD is not billed)."""
    _remove_into(txn, instance)


def _remove_into(txn: Txn, instance: Instance) -> None:
    (txn.delete(keys.instance(instance.project, instance.id))
     .delete(keys.instance_name(instance.project, instance.name))
     .delete(keys.instance_index(instance.id)))
