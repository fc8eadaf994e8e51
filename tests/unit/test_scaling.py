"""Pure logic of metrics and scaling groups: rates from counters, the target
tracking rule with its cooldowns, the replacement backoff; keys and policy rows."""

import pytest
from cloudapi.v1 import scaling_pb2

from control.autoscaling.groups import MAX_BACKOFF_S, TargetPolicy, backoff_s, target_tracking
from control.identity import policy
from control.metering.metrics import RawSample, derive
from control.store import keys


def sample(t: float, cpu_s: float, vcpus: int = 2, read: int = 0, write: int = 0,
           received: float | None = None) -> RawSample:
    return RawSample("i", sampled_at=t, cpu_time_ns=int(cpu_s * 1e9), vcpus=vcpus,
                     memory_available_kb=1000, memory_usable_kb=300, disk_read_bytes=read,
                     disk_write_bytes=write, received_at=t if received is None else received)


def test_cpu_utilisation_is_cpu_time_over_vcpu_time():
    # 2 vCPUs; 1 s of CPU per 1 s of wall time = 50 %, then 2 s per s = 100 %.
    samples = [sample(100, 0), sample(101, 1, read=1000), sample(102, 3, read=3000, write=500)]
    summary = derive("i", samples, window_s=60, now=102.5, stale_after_s=5)
    assert [p.cpu_utilisation for p in summary.points] == [50.0, 100.0]
    assert summary.cpu_utilisation == 75.0
    assert summary.disk_read_bytes_per_s == 1500.0 and summary.disk_write_bytes_per_s == 250.0
    assert (summary.memory_used_kb, summary.memory_available_kb, summary.vcpus) == (700, 1000, 2)
    assert summary.fresh and summary.updated_at == 102


def test_only_the_window_counts_and_old_reports_are_not_fresh():
    samples = [sample(t, t - 100) for t in range(100, 111)]  # 50 % on 2 vCPUs
    samples += [sample(111, 12), sample(112, 14)]  # then 100 %
    summary = derive("i", samples, window_s=1.5, now=112, stale_after_s=5)
    assert summary.cpu_utilisation == 100.0 and len(summary.points) == 2
    stale = derive("i", samples, window_s=60, now=130, stale_after_s=5)
    assert not stale.fresh and stale.updated_at == 112


def test_a_restarted_guest_starts_a_new_series():
    samples = [sample(100, 50), sample(101, 51), sample(102, 0.5), sample(103, 1.5)]
    summary = derive("i", samples, window_s=60, now=103, stale_after_s=5)
    assert [p.cpu_utilisation for p in summary.points] == [50.0, 50.0]


def test_one_sample_is_not_enough():
    summary = derive("i", [sample(100, 1)], window_s=60, now=100, stale_after_s=5)
    assert not summary.fresh and summary.points == [] and summary.updated_at == 100
    assert not derive("i", [], 60, 100, 5).fresh


POLICY = TargetPolicy(target=50, scale_out_cooldown_s=60, scale_in_cooldown_s=120)


@pytest.mark.parametrize("members, average, desired, expected", [
    (1, 90, 1, 2),    # ceil(1.8)
    (2, 90, 2, 4),    # ceil(3.6), within max 5
    (4, 100, 4, 5),   # ceil(8) clamped to max
    (2, 50, 2, None),  # exactly at target: stays
    (2, 51, 2, 3),
    (3, 35, 3, None),  # ceil(2.1) = 3
    (3, 30, 3, 2),    # ceil(1.8)
    (3, 0, 3, 1),     # clamped to min
])
def test_target_tracking(members, average, desired, expected):
    decision = target_tracking(POLICY, members, average, desired, 1, 5, last_scaled_at=0, now=1000)
    assert (decision[0] if decision else None) == expected


def test_cooldowns_hold_changes_back():
    out = dict(members=2, average=90, desired=2, min_size=1, max_size=5, last_scaled_at=1000)
    assert target_tracking(POLICY, **out, now=1059) is None
    assert target_tracking(POLICY, **out, now=1060)[0] == 4
    into = dict(members=3, average=10, desired=3, min_size=1, max_size=5, last_scaled_at=1000)
    assert target_tracking(POLICY, **into, now=1119) is None
    decision = target_tracking(POLICY, **into, now=1120)
    assert decision[0] == 1 and "below target" in decision[1]


def test_backoff_doubles_up_to_a_bound():
    assert [backoff_s(n, 5) for n in (1, 2, 3, 4)] == [5, 10, 20, 40]
    assert backoff_s(30, 5) == MAX_BACKOFF_S


def test_keys_are_namespaced_and_policy_covers_every_rpc():
    assert keys.scaling_group("p", "web").startswith(keys.scaling_groups("p"))
    assert keys.scaling_group("p", "web").startswith(keys.project_data("p"))
    assert keys.scaling_group_index("p", "web").startswith(keys.scaling_group_indexes())
    assert not keys.scaling_group_index("p", "web").startswith(keys.all_instances())
    for service in scaling_pb2.DESCRIPTOR.services_by_name.values():
        for method in service.methods:
            name = f"/{service.full_name}/{method.name}"
            assert policy.action_of(name) in policy.ACTIONS, name
            expected = "reader" if method.name.startswith(("Get", "List")) else "member"
            assert policy.required_role(name) == expected, name
