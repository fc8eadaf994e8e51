"""When the store maintenance defragments and clears NOSPACE (control/store/maintenance.py)."""

from control.store.etcd import MemberStatus
from control.store.maintenance import Policy, leader_last

MiB = 2**20
POLICY = Policy(quota_bytes=1000 * MiB, defrag_min_free_bytes=64 * MiB)


def member(size_mb: int, in_use_mb: int, leader: bool = False, error: str = "") -> MemberStatus:
    return MemberStatus("e:1", db_size=size_mb * MiB, db_size_in_use=in_use_mb * MiB,
                        is_leader=leader, error=error)


def test_defragment_only_with_much_free_space():
    assert POLICY.worth_defragmenting(member(200, 50))
    assert not POLICY.worth_defragmenting(member(200, 150))   # 50 MiB free: under 64
    assert not POLICY.worth_defragmenting(member(1000, 900))  # 100 free, but 10%
    assert not POLICY.worth_defragmenting(member(200, 50, error="down"))


def test_nospace_cleared_only_when_every_member_fits():
    assert POLICY.fits([member(300, 300), member(700, 100)])
    assert not POLICY.fits([member(300, 300), member(850, 840)])
    assert not POLICY.fits([member(100, 100, error="down")])


def test_the_leader_is_defragmented_last():
    members = [member(1, 1, leader=True), member(2, 2), member(3, 3)]
    assert [m.is_leader for m in leader_last(members)] == [False, False, True]
