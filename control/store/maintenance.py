"""Keeps etcd bounded: defragmentation when worthwhile, and recovery from a full
store (the NOSPACE alarm).

etcd keeps every revision until it is compacted, and a compacted database
keeps its file size until it is defragmented. Compaction is etcd's own
(`--auto-compaction-mode=periodic --auto-compaction-retention=<etcd_history>`,
set by localcloud and the Ansible etcd role): history older than that is
dropped, so an event stream can resume from any revision of that window, and
older ones are told OUT_OF_RANGE and start afresh. This loop, run by one API
replica at a time, does the rest each pass:

- a member whose file holds at least `etcd_defrag_min_free_mb` of free pages,
  and at least half of it, is defragmented, one member at a time, the leader
  last (a member answers nothing else while it defragments: milliseconds to
  seconds);
- if the NOSPACE alarm is raised (the file reached `--quota-backend-bytes`:
  every write in the cloud is refused), history is compacted up to now, every
  member defragmented, and the alarm cleared once the data fits in 80% of the
  quota again. If the data itself fills it, the alarm stays: an admin must
  delete things or raise the quota (`cloudctl store status` shows it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from control.errors import OutOfRange
from control.store.etcd import MemberStatus, Store
from control.store.leader import LeaderLoop

log = logging.getLogger(__name__)

LOCK_NAME = "store-maintenance"
MiB = 2**20


@dataclass(frozen=True)
class Policy:
    quota_bytes: int
    defrag_min_free_bytes: int = 64 * MiB
    defrag_min_free_ratio: float = 0.5
    disarm_below_ratio: float = 0.8

    def worth_defragmenting(self, member: MemberStatus) -> bool:
        free = member.db_size - member.db_size_in_use
        return not member.error and free >= self.defrag_min_free_bytes and \
            free >= self.defrag_min_free_ratio * member.db_size

    def fits(self, members: list[MemberStatus]) -> bool:
        """Whether every member's data fits under the quota's disarm mark."""
        return all(not m.error and m.db_size < self.disarm_below_ratio * self.quota_bytes
                   for m in members)


def leader_last(members: list[MemberStatus]) -> list[MemberStatus]:
    return sorted(members, key=lambda m: m.is_leader)


class StoreMaintenance:
    def __init__(self, store: Store, policy: Policy):
        self.store = store
        self.policy = policy

    def nospace(self) -> bool:
        return any(alarm == "NOSPACE" for _, alarm in self.store.alarms())

    def defragment_where_worthwhile(self) -> list[str]:
        """Defragment the members with much free space; what it did."""
        return [self._defragment(m) for m in leader_last(self.store.member_statuses())
                if self.policy.worth_defragmenting(m)]

    def recover(self) -> list[str]:
        """The store is full: compact, defragment every member, and clear the
        alarm if the data now fits. Every step is safe to repeat."""
        revision = self.store.revision()
        log.warning("etcd NOSPACE alarm: compacting history up to revision %d", revision)
        try:
            self.store.compact(revision)
        except OutOfRange:  # compacted there already (a full store takes no new revision)
            log.info("etcd history already compacted up to revision %d", revision)
        done = [f"compacted to {revision}"]
        done += [self._defragment(m) for m in leader_last(self.store.member_statuses())
                 if not m.error]
        members = self.store.member_statuses()
        if self.policy.fits(members):
            self.store.disarm_nospace()
            log.warning("etcd NOSPACE alarm cleared: %s", sizes(members))
            done.append("disarmed NOSPACE")
        else:
            log.error("etcd is full of live data (%s; quota %d MiB): delete things or raise "
                      "the quota (etcd_quota_bytes)", sizes(members), self.policy.quota_bytes // MiB)
        return done

    def run_once(self) -> list[str]:
        """One pass; what it did, for the log and tests."""
        return self.recover() if self.nospace() else self.defragment_where_worthwhile()

    def _defragment(self, member: MemberStatus) -> str:
        log.info("defragmenting etcd member %s (%d MiB, %d MiB in use)", member.endpoint,
                 member.db_size // MiB, member.db_size_in_use // MiB)
        self.store.defragment(member.endpoint)
        return f"defragmented {member.endpoint}"


def sizes(members: list[MemberStatus]) -> str:
    return ", ".join(f"{m.endpoint} {m.db_size // MiB} MiB ({m.db_size_in_use // MiB} in use)"
                     for m in members)


class MaintenanceLoop(LeaderLoop):
    """The pass of one replica at a time, but for a full store: taking the lock
    is a write, which a full store refuses, so then every replica recovers."""

    def __init__(self, maintenance: StoreMaintenance, interval_s: float, lease_s: float):
        super().__init__(maintenance.store, LOCK_NAME, maintenance.defragment_where_worthwhile,
                         interval_s, lease_s)
        self.maintenance = maintenance

    def tick(self) -> bool:
        if self.maintenance.nospace():
            self.maintenance.recover()
            return True
        return super().tick()


def start_store_maintenance(store: Store, config) -> LeaderLoop:
    policy = Policy(quota_bytes=config.etcd_quota_bytes,
                    defrag_min_free_bytes=config.etcd_defrag_min_free_mb * MiB)
    return MaintenanceLoop(StoreMaintenance(store, policy), config.store_maintenance_interval_s,
                           config.leader_lease_s).start()
