"""Scaling groups and instance metrics on a fake-driver cloud (real etcd, Redis,
Celery, API and agents): groups converge to their desired size, replace failed
members, stop at quota and max, and track CPU that the agents really report
(the fake driver's guests are as busy as a file says); the metrics RPCs; tenant
isolation; the leader lock; the outside autoscaler example; cloudctl group."""

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import grpc
import pytest
from cloudapi.v1 import compute_pb2 as pb
from cloudapi.v1 import identity_pb2 as ipb
from cloudapi.v1 import scaling_pb2 as spb

from control.store import keys
from control.store.leader import LeaderLock, LeaderLoop
from localcloud.processes import wait_until
from tests.conftest import REPO, login, start_cloud, stop_cloud, until
from tests.control.test_quota import new_tenant

UNLIMITED = dict(vcpus=-1, memory_mb=-1, disk_gb=-1)


@pytest.fixture(scope="module")
def scaling_cloud(tmp_path_factory):
    cpu_file = tmp_path_factory.mktemp("fake-cpu") / "cpu.json"
    cpu_file.write_text("{}")
    cloud, store = start_cloud(
        "scaling", agent_settings={"driver": "fake", "fake_cpu_file": str(cpu_file)},
        control_settings={"scaling_interval_s": 1, "metrics_interval_s": 1,
                          "metrics_window_s": 3})
    yield cloud, store, login(cloud, "admin"), cpu_file
    stop_cloud(cloud, "scaling")


def set_cpu(cpu_file: Path, pattern: str, percent: float) -> None:
    """How busy the fake guests named `pattern` are, as their agent will report."""
    rules = json.loads(cpu_file.read_text())
    rules[pattern] = percent
    tmp = cpu_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(rules))
    os.replace(tmp, cpu_file)


def get(client, name: str) -> spb.ScalingGroup:
    return client.scaling_groups.GetScalingGroup(spb.GetScalingGroupRequest(name=name))


def settled(client, name: str, size: int, timeout_s: float = 30, watch=None) -> spb.ScalingGroup:
    """Wait until the group has `size` ACTIVE members and nothing else."""
    def look():
        group = get(client, name)
        if watch is not None:
            watch(group)
        done = (group.status == "ACTIVE" and group.current == size == len(group.members)
                and all(m.status == "ACTIVE" for m in group.members))
        return group if done else None
    return until(look, timeout_s, f"group {name} at {size}")


def expect(code, call):
    with pytest.raises(grpc.RpcError) as info:
        call()
    assert info.value.code() == code, info.value.details()
    return info.value.details()


def delete_group(client, name: str) -> None:
    client.scaling_groups.DeleteScalingGroup(spb.DeleteScalingGroupRequest(name=name))
    until(lambda: expect_gone(client, name), 30, f"group {name} deleted")


def expect_gone(client, name: str) -> bool:
    try:
        get(client, name)
        return False
    except grpc.RpcError as exc:
        return exc.code() == grpc.StatusCode.NOT_FOUND


def test_converges_to_desired_and_deletes_newest_first(scaling_cloud):
    cloud, _, admin, _ = scaling_cloud
    _, client = new_tenant(cloud, admin, instances=10, **UNLIMITED)
    created = client.scaling_groups.CreateScalingGroup(spb.CreateScalingGroupRequest(
        name="conv", flavor="tiny", min_size=0, max_size=4, desired=3, request_id="r-conv"))
    assert (created.status, created.desired) == ("SCALING", 3)
    again = client.scaling_groups.CreateScalingGroup(spb.CreateScalingGroupRequest(
        name="conv", flavor="tiny", min_size=0, max_size=4, desired=3, request_id="r-conv"))
    assert again.created_at == created.created_at  # the same request: the same group
    expect(grpc.StatusCode.ALREADY_EXISTS, lambda: client.scaling_groups.CreateScalingGroup(
        spb.CreateScalingGroupRequest(name="conv", flavor="tiny", max_size=1)))

    group = settled(client, "conv", 3)
    assert sorted(m.name for m in group.members) == ["conv-1", "conv-2", "conv-3"]
    oldest = [m for m in group.members if m.name == "conv-1"][0]
    instance = client.instances.GetInstance(pb.GetInstanceRequest(id_or_name="conv-2"))
    assert instance.status == "ACTIVE"  # members are ordinary instances of the project

    client.scaling_groups.SetDesired(spb.SetDesiredRequest(name="conv", desired=1))
    group = settled(client, "conv", 1)
    assert [m.id for m in group.members] == [oldest.id]  # the newest went first
    assert "set by" in group.last_scaling_reason

    client.scaling_groups.SetDesired(spb.SetDesiredRequest(name="conv", desired=4))
    group = settled(client, "conv", 4)
    assert len({m.name for m in group.members}) == 4
    for bad in (5, -1):
        expect(grpc.StatusCode.INVALID_ARGUMENT, lambda b=bad: client.scaling_groups.SetDesired(
            spb.SetDesiredRequest(name="conv", desired=b)))
    listed = client.scaling_groups.ListScalingGroups(spb.ListScalingGroupsRequest())
    assert [g.name for g in listed.groups] == ["conv"] and listed.groups[0].current == 4

    delete_group(client, "conv")
    until(lambda: not client.instances.ListInstances(pb.ListInstancesRequest()).instances, 30,
         "members deleted")
    assert client.quotas.GetQuota(ipb.GetQuotaRequest()).usage == ipb.QuotaValues()

    # Listing pages through the groups by name.
    for name in ("c", "a", "b"):
        client.scaling_groups.CreateScalingGroup(spb.CreateScalingGroupRequest(
            name=name, flavor="tiny", min_size=0, max_size=1, desired=0))
    first = client.scaling_groups.ListScalingGroups(spb.ListScalingGroupsRequest(page_size=2))
    rest = client.scaling_groups.ListScalingGroups(spb.ListScalingGroupsRequest(
        page_size=2, page_token=first.next_page_token))
    assert [g.name for g in [*first.groups, *rest.groups]] == ["a", "b", "c"]
    assert not rest.next_page_token
    expect(grpc.StatusCode.INVALID_ARGUMENT, lambda: client.scaling_groups.ListScalingGroups(
        spb.ListScalingGroupsRequest(page_token="!")))
    for name in ("a", "b", "c"):
        assert client.scaling_groups.DeleteScalingGroup(spb.DeleteScalingGroupRequest(
            name=name)).status == "DELETING"
        assert expect_gone(client, name)  # no members: gone at once


def test_stops_at_quota_says_why_and_never_exceeds_max(scaling_cloud):
    cloud, _, admin, _ = scaling_cloud
    project, client = new_tenant(cloud, admin, instances=2, **UNLIMITED)
    client.scaling_groups.CreateScalingGroup(spb.CreateScalingGroupRequest(
        name="q", flavor="tiny", min_size=1, max_size=3, desired=3))
    most = [0]

    def watch(group):
        live = client.instances.ListInstances(pb.ListInstancesRequest()).instances
        most[0] = max(most[0], len(live), group.current)

    def look():
        group = get(client, "q")
        watch(group)
        return group.last_error and group.current == 2 and group

    group = until(look, 30, "a quota refusal")
    assert "quota exceeded for instances" in group.last_error and "limit 2" in group.last_error
    time.sleep(2)  # deliberate: nothing may change in 2 more passes of the controller
    group = get(client, "q")
    assert (group.current, group.status, most[0]) == (2, "SCALING", 2)

    admin.quotas.SetQuota(ipb.SetQuotaRequest(project=project, instances=10))
    settled(client, "q", 3, watch=watch)
    time.sleep(1.5)  # deliberate: no fourth member in the controller's next passes
    watch(get(client, "q"))
    assert most[0] == 3  # max_size, even with quota to spare
    delete_group(client, "q")


def test_a_failed_member_is_replaced(scaling_cloud):
    """A member whose spawn fails goes to ERROR; the group deletes it, records why,
    and builds another (after a backoff) until one works."""
    cloud, store, admin, _ = scaling_cloud
    bad = f"flaky-{uuid.uuid4().hex[:6]}"
    cloud.add_agent(bad, fake_fail_spawn=True)
    wait_until(lambda: store.get(keys.host(bad)) is not None, 30, "the flaky host")
    admin.flavors.CreateFlavor(pb.CreateFlavorRequest(flavor=pb.Flavor(
        name="flaky", vcpus=1, memory_mb=256, disk_gb=1, public=True, required_traits=["flaky"])))
    admin.hosts.UpdateHost(pb.UpdateHostRequest(name=bad, add_traits=["flaky"]))
    _, client = new_tenant(cloud, admin, instances=4, **UNLIMITED)
    try:
        client.scaling_groups.CreateScalingGroup(spb.CreateScalingGroupRequest(
            name="rep", flavor="flaky", min_size=1, max_size=1, desired=1))
        failed: set[str] = set()

        def look():
            group = get(client, "rep")
            failed.update(m.id for m in group.members if m.status in ("ERROR", "DELETING"))
            return group.last_error and group

        group = until(look, 60, "a failed member")
        assert "member rep-" in group.last_error and "failed" in group.last_error
        assert "told to fail" in group.last_error

        # Now a host that works can take the flavor: the replacement succeeds.
        admin.hosts.UpdateHost(pb.UpdateHostRequest(name=cloud.host_name, add_traits=["flaky"]))
        admin.hosts.UpdateHost(pb.UpdateHostRequest(name=bad, enabled=False))
        group = settled(client, "rep", 1, timeout_s=60, watch=lambda g: failed.update(
            m.id for m in g.members if m.status in ("ERROR", "DELETING")))
        assert group.members[0].host == cloud.host_name
        assert group.members[0].id not in failed  # a new member, made after the failure
        assert group.members[0].created_at.ToNanoseconds() > group.last_error_at.ToNanoseconds()
        assert group.last_error and group.last_error_at.seconds  # kept, with its time
        delete_group(client, "rep")
    finally:
        admin.hosts.UpdateHost(pb.UpdateHostRequest(name=bad, enabled=False))
        admin.hosts.UpdateHost(pb.UpdateHostRequest(name=cloud.host_name,
                                                    remove_traits=["flaky"]))


def test_target_tracking_scales_out_and_in_with_metrics(scaling_cloud):
    cloud, _, admin, cpu_file = scaling_cloud
    _, client = new_tenant(cloud, admin, instances=10, **UNLIMITED)
    set_cpu(cpu_file, "auto-*", 90)
    client.scaling_groups.CreateScalingGroup(spb.CreateScalingGroupRequest(
        name="auto", flavor="tiny", min_size=1, max_size=3, desired=1,
        policy=spb.TargetTrackingPolicy(metric="cpu_utilisation", target=50,
                                        scale_out_cooldown_s=2, scale_in_cooldown_s=2)))
    changes: list[tuple[int, float]] = []
    most = [0]

    def watch(group):
        most[0] = max(most[0], len(group.members))
        scaled_at = group.last_scaled_at.ToNanoseconds() / 1e9
        if not changes or changes[-1] != (group.desired, scaled_at):
            changes.append((group.desired, scaled_at))

    # 1 member at 90 % of target 50 -> 2; 2 at 90 % -> 4, clamped to max 3.
    group = settled(client, "auto", 3, timeout_s=45, watch=watch)
    assert [d for d, _ in changes] == [1, 2, 3] and most[0] == 3
    assert changes[2][1] - changes[1][1] >= 2  # the scale-out cooldown
    assert "above target" in group.last_scaling_reason

    # The metrics the policy acted on, through the API.
    one = client.metrics.GetInstanceMetrics(spb.GetInstanceMetricsRequest(id_or_name="auto-1"))
    assert one.fresh and one.vcpus == 1 and one.instance_name == "auto-1"
    assert one.cpu_utilisation == pytest.approx(90, abs=1)
    assert one.samples and all(s.cpu_utilisation == pytest.approx(90, abs=1) for s in one.samples)
    assert 0 < one.memory_used_kb < one.memory_available_kb == 256 * 1024
    longer = client.metrics.GetInstanceMetrics(spb.GetInstanceMetricsRequest(
        id_or_name="auto-1", window_s=60))
    assert longer.window_s == 60 and len(longer.samples) >= len(one.samples)
    expect(grpc.StatusCode.INVALID_ARGUMENT, lambda: client.metrics.GetInstanceMetrics(
        spb.GetInstanceMetricsRequest(id_or_name="auto-1", window_s=601)))
    averaged = until(lambda: (m := client.metrics.GetGroupMetrics(
        spb.GetGroupMetricsRequest(name="auto"))).reporting == 3 and m, 10, "3 members reporting")
    assert (averaged.members, averaged.desired, averaged.max_size) == (3, 3, 3)
    assert averaged.cpu_utilisation == pytest.approx(90, abs=1)

    # Another project sees none of it.
    _, other = new_tenant(cloud, admin, instances=1, **UNLIMITED)
    member_id = one.instance_id
    for call in (
            lambda: other.metrics.GetInstanceMetrics(spb.GetInstanceMetricsRequest(id_or_name=member_id)),
            lambda: other.metrics.GetGroupMetrics(spb.GetGroupMetricsRequest(name="auto")),
            lambda: get(other, "auto"),
            lambda: other.scaling_groups.SetDesired(spb.SetDesiredRequest(name="auto", desired=1)),
            lambda: other.scaling_groups.DeleteScalingGroup(spb.DeleteScalingGroupRequest(name="auto"))):
        expect(grpc.StatusCode.NOT_FOUND, call)
    assert not other.scaling_groups.ListScalingGroups(spb.ListScalingGroupsRequest()).groups

    # Quiet members: 3 at 10 % of target 50 -> 1.
    set_cpu(cpu_file, "auto-*", 10)
    group = settled(client, "auto", 1, timeout_s=30, watch=watch)
    assert [d for d, _ in changes][-1] == 1 and "below target" in group.last_scaling_reason
    assert most[0] == 3
    delete_group(client, "auto")


def test_the_leader_lock_lets_one_loop_act(scaling_cloud):
    _, store, _, _ = scaling_cloud
    name = f"test-{uuid.uuid4().hex[:6]}"
    a, b = LeaderLock(store, name, ttl_s=2, holder="a"), LeaderLock(store, name, ttl_s=2, holder="b")
    assert a.acquire() and not b.acquire() and a.acquire()  # renewing keeps it
    assert b.current_holder() == "a"
    a.release()
    assert b.acquire() and not a.acquire()
    b.release()

    acted = {"one": 0, "two": 0}
    lock = threading.Lock()

    def work(who):
        def count():
            with lock:
                acted[who] += 1
        return count

    one = LeaderLoop(store, name, work("one"), interval_s=0.2, ttl_s=2, holder="one").start()
    until(lambda: acted["one"], 5, "the first loop leading")
    two = LeaderLoop(store, name, work("two"), interval_s=0.2, ttl_s=2, holder="two").start()
    try:
        # Five more passes of the leader (0.2 s apart): the second loop never acts.
        passes = acted["one"]
        until(lambda: acted["one"] >= passes + 5, 5, "five more passes of the first loop")
        assert acted["two"] == 0
        one.stop(release=False)  # as if it crashed: its lease runs out by itself
        stopped = time.monotonic()
        until(lambda: acted["two"] > 0, 10, "the second loop taking over")
        assert time.monotonic() - stopped <= 2 + 1.5  # the TTL, a tick and etcd's lease rounding
        assert LeaderLock(store, name).current_holder() == "two"
    finally:
        one.stop()
        two.stop()
    assert store.get(keys.leader(name)) is None


def test_outside_autoscaler_example(scaling_cloud):
    """examples/autoscaler.py, as a separate process with only the stubs, drives a
    group without a policy from its metrics."""
    cloud, _, admin, cpu_file = scaling_cloud
    project, client = new_tenant(cloud, admin, instances=4, **UNLIMITED)
    set_cpu(cpu_file, "ext-*", 95)
    client.scaling_groups.CreateScalingGroup(spb.CreateScalingGroupRequest(
        name="ext", flavor="tiny", min_size=1, max_size=2, desired=1))
    env = {**os.environ, "CLOUD_ENDPOINT": cloud.endpoint, "CLOUD_USERNAME": f"{project}-user",
           "CLOUD_PASSWORD": "pw-" + project, "CLOUD_PROJECT": project}
    process = subprocess.Popen(
        [sys.executable, str(REPO / "examples" / "autoscaler.py"), "--group", "ext",
         "--interval", "0.5", "--cooldown", "0", "--window", "3", "--duration", "60"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        settled(client, "ext", 2, timeout_s=30)
        set_cpu(cpu_file, "ext-*", 5)
        settled(client, "ext", 1, timeout_s=30)
    finally:
        process.terminate()
        output, errors = process.communicate(timeout=10)
    decisions = [json.loads(line) for line in output.splitlines()]
    assert [(d["desired"], d["wanted"]) for d in decisions if d["set"]] == [(1, 2), (2, 1)], errors
    assert "set by" in get(client, "ext").last_scaling_reason
    delete_group(client, "ext")


def test_cloudctl_group_commands(scaling_cloud, tmp_path):
    cloud, _, admin, _ = scaling_cloud
    project, client = new_tenant(cloud, admin, instances=4, **UNLIMITED)
    env = {**os.environ, "CLOUD_ENDPOINT": cloud.endpoint, "CLOUD_USERNAME": f"{project}-user",
           "CLOUD_PASSWORD": "pw-" + project, "CLOUD_PROJECT": project,
           "CLOUD_CONFIG": str(tmp_path / "absent.toml"), "COLUMNS": "200"}

    def cloudctl(*args):
        result = subprocess.run([sys.executable, "-m", "cloudclient.cli", *args], env=env,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"cloudctl {' '.join(args)}:\n{result.stderr}"
        return result

    created = json.loads(cloudctl("group", "create", "web", "--flavor", "tiny", "--min", "1",
                                  "--max", "3", "--desired", "2", "--anti-affinity",
                                  "--cpu-target", "60", "-o", "json").stdout)
    assert (created["desired"], created["server_group"], created["server_group_policy"]) == (
        2, "web", "anti-affinity")
    assert created["policy"].startswith("cpu_utilisation 60")
    # One host: anti-affinity lets one member in; the other cannot be placed.
    group = until(lambda: "no host" in (g := get(client, "web")).last_error and g.current == 1
                 and g.members[0].status == "ACTIVE" and g, 30, "no room for a second")
    assert "no host for flavor tiny" in group.last_error

    cloudctl("group", "set-desired", "web", "1")
    group = settled(client, "web", 1)
    server_group = client.groups.GetServerGroup(pb.GetServerGroupRequest(name="web"))
    assert list(server_group.members) == [group.members[0].id]
    shown = cloudctl("group", "show", "web").stdout
    assert "web-1" in shown and "ACTIVE" in shown and "no host" in shown
    assert "web" in cloudctl("group", "list").stdout
    until(lambda: json.loads(cloudctl("instance", "metrics", "web-1", "-o", "json").stdout)
         .get("fresh"), 10, "metrics of web-1")
    assert "cpu_utilisation" in cloudctl("instance", "metrics", "web-1").stdout
    assert "deleted" in cloudctl("group", "delete", "web", "--wait").stderr
    expect(grpc.StatusCode.NOT_FOUND, lambda: client.groups.GetServerGroup(
        pb.GetServerGroupRequest(name="web")))
    assert not client.instances.ListInstances(pb.ListInstancesRequest()).instances
