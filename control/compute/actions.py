"""Instance actions: every operation on an instance, who asked, when it started
and ended, and how it went (`cloudctl instance actions NAME`).

The API records an action in the same transaction as the state change it asks
for; the task that carries it out records the end."""

from __future__ import annotations

import time
from dataclasses import dataclass

from pydantic import BaseModel, Field

from control.store import keys
from control.store.etcd import Store, Txn


class Action(BaseModel):
    action: str
    request_id: str = ""
    user: str = ""
    start: float = Field(default_factory=time.time)
    end: float | None = None
    result: str = "running"   # running, success, error
    error: str = ""


@dataclass(frozen=True)
class Begin:
    """An action to record with a change of an instance: what, and who asked."""

    action: str
    request_id: str = ""
    user: str = ""


def begin_into(txn: Txn, project: str, instance_id: str, action: str, request_id: str,
               user: str) -> str:
    """Add a new action to `txn`; return its key (for the task to finish it)."""
    key = keys.action(project, instance_id, f"{time.time_ns():020d}")
    txn.put(key, Action(action=action, request_id=request_id, user=user).model_dump())
    return key


def finish(store: Store, key: str, error: str = "") -> None:
    """End an action, unless it has ended already (a task run twice, or an action
    the reconciler ended first, keeps its first end)."""
    def change(record):
        if record.value.get("end") is not None:
            return None
        done = Action(**record.value).model_copy(update={
            "end": time.time(), "result": "error" if error else "success", "error": error})
        return Txn().expect(record).put(key, done.model_dump())

    if key:
        store.update(key, change)


def history(store: Store, project: str, instance_id: str) -> list[Action]:
    return [Action(**r.value) for r in store.list(keys.actions(project, instance_id))]
