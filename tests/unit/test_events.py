"""Which store changes become which events (control/api/events.py): only
what a consumer sees, never heartbeats alone; and what each watch covers."""

from cloudapi.v1 import events_pb2 as epb

from control.api.events import Scope, host_event, instance_event
from control.compute.states import PowerState, TaskState, VmState
from control.models import Host, Instance, Resources
from control.store import keys
from control.store.etcd import Change

Event = epb.Event
DOWN_AFTER = 30.0


def instance(**changes) -> dict:
    base = Instance(id="i-1", project="p", name="vm", flavor="tiny", image="img",
                    resources=Resources(vcpus=1, memory_mb=256, disk_gb=1), updated_at=100.0,
                    created_at=50.0)
    return base.model_copy(update=changes).model_dump(mode="json")


def host(**changes) -> dict:
    base = Host(name="h1", address="127.0.0.1:1", inventory=Resources(vcpus=4, memory_mb=4096,
                                                                      disk_gb=40),
                last_heartbeat=1000.0, registered_at=900.0)
    return {**base.model_copy(update=changes).model_dump(), **changes}


def ievent(prev, new):
    return instance_event(Change(keys.instance("p", "i-1"), new, 7, prev), "p", now=2000.0)


def hevent(prev, new):
    return host_event(Change(keys.host("h1"), new, 7, prev), now=1001.0, down_after_s=DOWN_AFTER)


def test_instance_event_types():
    created = ievent(None, instance())
    assert (created.type, created.instance.status, created.project) == (Event.CREATED, "BUILD", "p")
    active = ievent(instance(), instance(vm_state=VmState.ACTIVE, task_state=TaskState.NONE,
                                         power_state=PowerState.RUNNING, updated_at=101.0))
    assert active.type == Event.STATE_CHANGED
    assert list(active.changed) == ["power_state", "status", "task_state", "vm_state"]
    assert active.time.ToSeconds() == 101
    resized = ievent(instance(task_state=TaskState.SCALING),
                     instance(task_state=TaskState.NONE, resources=Resources(vcpus=2, memory_mb=256,
                                                                              disk_gb=1)))
    assert resized.type == Event.RESIZED and "vcpus" in resized.changed
    renamed = ievent(instance(), instance(name="vm2"))
    assert (renamed.type, list(renamed.changed)) == (Event.UPDATED, ["name"])
    assert renamed.time.ToSeconds() == 2000  # updated_at unchanged: when it was seen
    deleted = ievent(instance(task_state=TaskState.DELETING), None)
    assert (deleted.type, deleted.instance.status, deleted.instance.vm_state) == (
        Event.DELETED, "DELETED", "deleted")


def test_internal_instance_writes_make_no_event():
    assert ievent(instance(), instance(updated_at=555.0)) is None
    assert ievent(instance(), instance(quota_held=False, request_id="r")) is None
    assert ievent(None, None) is None


def test_heartbeats_alone_make_no_host_event():
    assert hevent(host(), host(last_heartbeat=1001.0)) is None


def test_host_event_types():
    registered = hevent(None, host())
    assert registered.type == Event.HOST_REGISTERED and registered.host.vcpus == 4
    disabled = hevent(host(), host(enabled=False, disabled_reason="x", last_heartbeat=1001.0))
    assert (disabled.type, list(disabled.changed)) == (Event.HOST_UPDATED,
                                                        ["disabled_reason", "enabled"])
    moved = hevent(host(), host(zone="b", traits=["ssd"]))
    assert list(moved.changed) == ["traits", "zone"] and moved.host.traits == ["ssd"]
    # A heartbeat after a silence longer than down_after: the host is back.
    back = hevent(host(last_heartbeat=900.0), host(last_heartbeat=1000.0))
    assert (back.type, list(back.changed), back.host.up) == (Event.HOST_UP, ["up"], True)
    # The hook for an explicit mark.
    down = hevent(host(), host(up=False))
    assert (down.type, down.host.up) == (Event.HOST_DOWN, False)
    assert hevent(host(up=False), host(up=False, last_heartbeat=1001.0)) is None
    assert hevent(host(up=False), host(up=True)).type == Event.HOST_UP
    removed = hevent(host(), None)
    assert removed.type == Event.HOST_REMOVED and removed.host.name == "h1"


def test_scope_covers_only_its_keys():
    tenant = Scope(projects=("p",), instances=True, hosts=False)
    assert tenant.prefixes() == [keys.instances("p")]
    assert tenant.wants(keys.instance("p", "i-1")) == ("instance", "p")
    assert tenant.wants(keys.instance("q", "i-1")) is None
    assert tenant.wants(keys.host("h1")) is None
    assert tenant.wants(keys.instance_name("p", "vm")) is None
    everyone = Scope(projects=None, instances=True, hosts=True)
    assert everyone.prefixes() == [keys.all_instances(), keys.hosts()]
    assert everyone.wants(keys.instance("q", "i-1")) == ("instance", "q")
    assert everyone.wants(keys.action("q", "i-1", "1")) is None
    assert everyone.wants(keys.host("h1")) == ("host", "")
    one = Scope(projects=("p",), instances=True, hosts=False, instance_id="i-1")
    assert one.prefixes() == [keys.instance("p", "i-1")]
    assert one.wants(keys.instance("p", "i-12")) is None
