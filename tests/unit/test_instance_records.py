"""The one writer of instance records (control/compute/records.py) over the
in-memory store: what each change writes, in one transaction; and a task
overtaken by a delete ends its action (it stayed "running" before)."""

from __future__ import annotations

import time
import uuid
from types import SimpleNamespace

import pytest

from control.compute import actions, records
from control.compute.states import Event, PowerState, TaskState, VmState
from control.compute.tasks import InstanceWork
from control.errors import InvalidTransition
from control.models import Instance, Resources
from control.store import keys
from control.store.etcd import Txn
from control.store.memory import MemoryStore


@pytest.fixture
def store():
    return MemoryStore()


def created(store: MemoryStore, name: str = "vm") -> Instance:
    instance = records.new(Instance(id=str(uuid.uuid4()), project="p", name=name, flavor="small",
                                    image="img", created_at=time.time() - 60,
                                    resources=Resources(vcpus=1, memory_mb=512, disk_gb=1)))
    txn = Txn()
    records.create_into(txn, instance, actions.Begin("create", "r-1", "alice"))
    assert store.commit(txn)
    return instance


def moved(store: MemoryStore, instance_id: str, event: Event, **changes: object) -> records.Written:
    txn = Txn()
    written = records.change_into(txn, records.by_id(store, instance_id), event, changes)
    assert store.commit(txn)
    return written


def active(store: MemoryStore) -> Instance:
    instance = created(store)
    moved(store, instance.id, Event.SCHEDULED, host="h1")
    return moved(store, instance.id, Event.SPAWNED).instance


def test_create_writes_the_record_its_name_its_index_and_its_action(store):
    instance = created(store)
    assert store.get(keys.instance("p", instance.id)).value == instance.model_dump(mode="json")
    assert store.get(keys.instance_name("p", "vm")).value == {"id": instance.id}
    assert records.key_of(store, instance.id) == keys.instance("p", instance.id)
    assert [(a.action, a.request_id, a.user) for a in actions.history(store, "p", instance.id)] == [
        ("create", "r-1", "alice")]
    txn = Txn()
    records.create_into(txn, instance.model_copy(update={"id": str(uuid.uuid4())}))
    assert not store.commit(txn)  # the name is taken


def test_a_change_checks_the_transition_meters_and_records_its_action(store):
    instance = active(store)
    record = records.by_id(store, instance.id)
    with pytest.raises(InvalidTransition):
        records.change_into(Txn(), record, Event.START)
    txn = Txn()
    written = records.change_into(txn, record, Event.STOP, action=actions.Begin("stop", user="bob"))
    assert written.instance.task_state is TaskState.POWERING_OFF
    assert store.commit(txn)
    time.sleep(0.01)  # intervals are in milliseconds: one of none is not recorded
    stopped = moved(store, instance.id, Event.STOPPED).instance
    assert stopped.metered is not None and stopped.metered.state == "stopped"
    usage = [r.value["state"] for r in store.list(keys.usage_records("p"))]
    assert usage == ["building", "running"]  # each interval closed in the change's transaction
    assert actions.history(store, "p", instance.id)[-1].action == "stop"
    assert written.action_key == store.list(keys.actions("p", instance.id))[-1].key


def test_a_change_without_an_event_never_moves_the_state(store):
    instance = active(store)
    record = records.by_id(store, instance.id)
    with pytest.raises(ValueError):
        records.change_into(Txn(), record, None, {"task_state": TaskState.NONE})
    txn = Txn()
    observed = records.change_into(txn, record, None, {"power_state": PowerState.SHUTOFF})
    assert store.commit(txn)
    assert observed.instance.vm_state is VmState.ACTIVE
    assert observed.instance.updated_at == instance.updated_at  # an observation is no change


def test_a_change_compares_the_record_it_read(store):
    instance = active(store)
    record = records.by_id(store, instance.id)
    moved(store, instance.id, Event.STOP)
    txn = Txn()
    records.change_into(txn, record, Event.REBOOT)
    assert not store.commit(txn)


def test_rename_moves_the_name_key(store):
    instance = created(store)
    created(store, "other")
    txn = Txn()
    records.rename_into(txn, records.by_id(store, instance.id), "other")
    assert not store.commit(txn)  # taken
    txn = Txn()
    renamed = records.rename_into(txn, records.by_id(store, instance.id), "new")
    assert store.commit(txn) and renamed.instance.name == "new"
    assert store.get(keys.instance_name("p", "vm")) is None
    assert store.get(keys.instance_name("p", "new")).value == {"id": instance.id}


def test_delete_removes_every_key_once_the_delete_is_done(store):
    instance = active(store)
    with pytest.raises(InvalidTransition):
        records.delete_into(Txn(), records.by_id(store, instance.id), time.time())
    moved(store, instance.id, Event.DELETE)
    txn = Txn()
    records.delete_into(txn, records.by_id(store, instance.id), time.time() + 1)
    assert store.commit(txn)
    assert records.by_id(store, instance.id) is None
    assert store.get(keys.instance_name("p", "vm")) is None
    assert store.get(keys.instance_index(instance.id)) is None
    assert [r.value["state"] for r in store.list(keys.usage_records("p"))][-1] == "running"


def test_update_finds_the_instance_by_id_and_returns_what_the_change_decided(store):
    instance = created(store)

    def schedule(record):
        txn = Txn()
        return txn, records.change_into(txn, record, Event.SCHEDULED, {"host": "h1"}).instance

    applied = records.update(store, instance.id, schedule)
    assert applied is not None and applied.committed and applied.result.host == "h1"
    assert records.update(store, str(uuid.uuid4()), schedule) is None


@pytest.mark.parametrize("event", [Event.STOP, Event.REBOOT, Event.SCALE, Event.RESIZE])
def test_an_operation_overtaken_by_a_delete_ends_its_action(store, event):
    """The task of an operation finds its instance being deleted: it does nothing,
    and its action ends (with why) instead of staying in progress."""
    instance = active(store)
    txn = Txn()
    operation = records.change_into(txn, records.by_id(store, instance.id), event,
                                    action=actions.Begin(event.value, user="alice"))
    assert store.commit(txn)
    moved(store, instance.id, Event.DELETE)
    plane = SimpleNamespace(store=store)  # the task returns before it needs anything else
    InstanceWork(plane).operate(instance.id, event, operation.action_key, {})  # type: ignore[arg-type]
    ended = actions.history(store, "p", instance.id)[-1]
    assert (ended.action, ended.result) == (event.value, "error") and ended.end is not None
    assert "deleted" in ended.error
    assert records.by_id(store, instance.id).value["task_state"] == TaskState.DELETING


def test_finishing_an_action_twice_keeps_its_first_end(store):
    instance = created(store)
    key = store.list(keys.actions("p", instance.id))[0].key
    actions.finish(store, key, "first")
    actions.finish(store, key)
    assert actions.history(store, "p", instance.id)[0].error == "first"
