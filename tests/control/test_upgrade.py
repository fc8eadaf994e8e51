"""An existing cloud upgrades without losing anything: the etcd state written by
commit 57c6319 (fixtures/state-57c6319.json, made by fixtures/make_state.py)
is loaded into a fresh etcd, this release's two API replicas start on it at
once (each migrates, control/store/schema.py), and every record is found
intact and usable."""

from __future__ import annotations

import functools
import hashlib
import json
import tempfile
import uuid
from pathlib import Path

import grpc
from cloudapi.v1 import compute_pb2 as cpb
from cloudapi.v1 import identity_pb2 as ipb
from cloudapi.v1 import usage_pb2 as upb
from google.protobuf.timestamp_pb2 import Timestamp

from control.store import keys, schema
from tests.conftest import ApiClient, make_store, stop_cloud, until
from tests.control.fixtures.image_files import disk_bytes

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "state-57c6319.json").read_text())
LEADERS = keys.leader("x")[:-1]


def _load(cloud, store) -> None:
    """The fixture's records into etcd (tokens without their lease: their
    expires_at is checked on every call), and its image files into the store."""
    for record in FIXTURE["records"]:
        store.put(record["key"], record["value"])
        if record["key"].startswith(keys.images()):
            image = record["value"]
            data = disk_bytes(image["name"])
            assert hashlib.sha256(data).hexdigest() == image["disk_sha256"]
            directory = cloud.root / "images" / image["id"]
            directory.mkdir(parents=True)
            (directory / "disk").write_bytes(data)


def _start_apis_at_once(cloud) -> None:
    """Both replicas started before either answers: they migrate concurrently."""
    from localcloud.processes import wait_until

    for name, _, _ in cloud.api_replica_ports():
        config = cloud.config_path if name == "api" else cloud.root / f"cloud-{name}.toml"
        cloud.procs.start(name, [cloud.python, "-m", "control.api.server", "--config", str(config)])
    for name, api, agent_api in cloud.api_replica_ports():
        wait_until(functools.partial(cloud._api_answers, api, agent_api), 60, f"the API server ({name})")


def test_a_cloud_of_57c6319_upgrades_intact_and_usable():
    from localcloud.cloud import LocalCloud, Ports

    root = Path(tempfile.mkdtemp(prefix="smallcloud-upgrade-"))
    # The loops that change records by design stay off while records are compared
    # (the fixture's guests do not exist here: the reconciler would repair them).
    cloud = LocalCloud(root, ports=Ports.free(), host_name=FIXTURE["host"], image_dirs=[],
                       api_replicas=2, agent_settings={"driver": "fake"},
                       control_settings={"heartbeat_interval_s": 1, "reconciler_enabled": False,
                                         "scaling_enabled": False})
    for user, password in FIXTURE["secrets"]["passwords"].items():
        path = cloud.secret_path(user)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.write_text(password)
    try:
        cloud.ensure_pki()
        cloud.write_config()
        cloud.start_etcd()
        store = make_store(cloud)
        _load(cloud, store)
        cloud.start_redis()
        _start_apis_at_once(cloud)

        # The version is current, and migrating again writes nothing.
        assert store.get(keys.schema_version()).value == {"version": schema.CURRENT}
        revision = store.revision()
        assert schema.migrate(store) == schema.CURRENT
        assert store.revision() == revision

        # Every record intact (the shapes of version 0 are this release's: the
        # 0 -> 1 step rewrites none); only the version key (and leader locks) added.
        after = {r.key: r.value for r in store.list(keys.PREFIX + "/")
                 if not r.key.startswith(LEADERS)}
        before = {r["key"]: r["value"] for r in FIXTURE["records"]}
        assert set(after) - set(before) == {keys.schema_version()}
        changed = [k for k in before if after.get(k) != before[k]]
        assert not changed, changed

        cloud.start_worker()
        cloud.start_agent()
        until(lambda: store.get(keys.host(cloud.host_name)) is not None, 60, "agent registration")
        _check_usable(cloud, store)
    finally:
        stop_cloud(cloud, "upgrade")


def _check_usable(cloud, store) -> None:
    project = FIXTURE["project"]
    alice = ApiClient(cloud.endpoint)
    alice.login("alice", FIXTURE["secrets"]["passwords"]["alice"], project)
    # The token the old release issued still works.
    old = ApiClient(cloud.endpoint, token=FIXTURE["secrets"]["token"]["token"])
    me = old.identity.WhoAmI(ipb.WhoAmIRequest())
    assert (me.username, me.project) == ("alice", project)
    bob = ApiClient(cloud.endpoint)
    bob.login("bob", FIXTURE["secrets"]["passwords"]["bob"], project)

    listed = {i.name: i for i in alice.instances.ListInstances(cpb.ListInstancesRequest()).instances}
    assert set(listed) == {"web1", "web2", "web3", "pool-1"}
    for name, instance in listed.items():
        shown = bob.instances.GetInstance(cpb.GetInstanceRequest(id_or_name=name))
        assert shown.id == instance.id and shown.host == cloud.host_name
    assert listed["web2"].status == "SHUTOFF"

    # Usage: the old closed intervals, the deleted instance's among them.
    start, end = Timestamp(), Timestamp()
    start.FromSeconds(int(FIXTURE["made_at"]) - 3600)
    end.FromSeconds(int(FIXTURE["made_at"]) + 3600)
    usage = alice.usage.GetProjectUsage(upb.GetProjectUsageRequest(start=start, end=end))
    metered = {i.name: i for i in usage.instances}
    assert {"web1", "web2", "web3", "gone1", "pool-1"} <= set(metered)
    assert not metered["gone1"].live

    quota = alice.quotas.GetQuota(ipb.GetQuotaRequest())
    assert (quota.limits.instances, quota.limits.vcpus, quota.limits.memory_mb) == (6, 12, 12288)
    assert quota.usage.instances == 4
    images = {i.name for i in alice.images.ListImages(cpb.ListImagesRequest()).images}
    assert {"fixture-private", "fixture-public"} <= images
    assert [k.name for k in alice.keypairs.ListKeypairs(cpb.ListKeypairsRequest()).keypairs] == ["alice-key"]

    # Delete an old instance: gone, and its quota released.
    alice.instances.DeleteInstance(cpb.DeleteInstanceRequest(id_or_name="web2",
                                                             request_id=uuid.uuid4().hex))
    alice.wait_gone(listed["web2"].id)
    assert alice.quotas.GetQuota(ipb.GetQuotaRequest()).usage.instances == 3
    # And a new one in the old project, from its old image, in its old server group.
    alice.instances.CreateInstance(cpb.CreateInstanceRequest(
        name="after-upgrade", flavor="fixture.small", image="fixture-private", group="web",
        key_name="alice-key", request_id=uuid.uuid4().hex))
    created = alice.wait_status("after-upgrade", {"ACTIVE", "ERROR"})
    assert created.status == "ACTIVE", created
    try:
        alice.instances.GetInstance(cpb.GetInstanceRequest(id_or_name="gone1"))
        raise AssertionError("the deleted instance is back")
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.NOT_FOUND
