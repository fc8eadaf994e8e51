"""The scheduler: which host gets an instance, and why the others don't.

It keeps a table of every compute host (inventory, usage, state, zone, traits)
in numpy arrays, one column per resource class it has seen (a host reporting a
new class, or a request asking one, adds a column; pools are not in it), filled
from etcd and kept current by etcd watches, so finding candidates is a
read-only, in-memory query over all hosts at once. Then it
claims on the best candidate through Placement's compare-and-swap; a stale
table only costs a lost race, after which it re-reads that host and moves on.

Filters: has inventory, enabled, alive, availability zone, required/forbidden
traits, hosts excluded by earlier failed attempts, hard (anti-)affinity of a
server group, then capacity per resource class. Weighers: `spread` (most free
memory first) or `pack` (hosts already in use, least free first), soft
(anti-)affinity, and a random tie-break so parallel requests spread out.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from control.compute.server_groups import ServerGroup, with_member
from control.config import ControlConfig
from control.errors import Conflict, ResourceExhausted
from control.models import Allocation, Flavor, Host, Resources
from control.placement.aggregates import Aggregate, effective
from control.placement.allocations import Placement, Provider, added, amounts
from control.resources import COMPUTE_HOST, INSTANCE_CLASSES
from control.store import keys
from control.store.etcd import Change, Record, Store, Txn

log = logging.getLogger(__name__)

CANDIDATES_TRIED = 8   # best candidates tried per selection before selecting again
SELECTIONS = 8         # selections before giving up with Conflict
WEIGHED = "MEMORY_MB"  # the class whose free amount the weighers compare


@dataclass(frozen=True)
class Request:
    need: Resources
    what: str                                   # for messages, e.g. "flavor large"
    zone: str = ""
    required_traits: frozenset[str] = frozenset()
    forbidden_traits: frozenset[str] = frozenset()
    exclude_hosts: frozenset[str] = frozenset()
    group_policy: str = ""                      # affinity, anti-affinity, soft-affinity, soft-anti-affinity
    group_hosts: tuple[str, ...] = ()           # hosts of the group's other members
    extra: Mapping[str, int] = field(default_factory=dict)  # other classes the host must have

    def amounts(self) -> dict[str, int]:
        """What the host must have free, per resource class."""
        return added(amounts(self.need), dict(self.extra))


@dataclass
class Decision:
    hosts: list[str]                            # candidates, best first
    summary: str                                # e.g. "12 hosts; 7 lacked MEMORY_MB, 3 disabled"
    free_slots: dict[str, int] = field(default_factory=dict)


class HostTable:
    """Every host's scheduling facts, one row per host, watched from etcd."""

    def __init__(self, store: Store):
        self.store = store
        self._lock = threading.RLock()
        self._started = False
        self.names: list[str] = []
        self.index: dict[str, int] = {}
        self.providers: list[Provider | None] = []
        self.hosts: list[Host | None] = []
        # One column per resource class, in the order first seen.
        self.classes: list[str] = [c.name for c in INSTANCE_CLASSES]
        self.column: dict[str, int] = {rc: j for j, rc in enumerate(self.classes)}
        self.cap = np.zeros((0, len(self.classes)), np.int64)
        self.used = np.zeros((0, len(self.classes)), np.int64)
        self.revision = np.zeros(0, np.int64)
        self.enabled = np.zeros(0, bool)
        self.heartbeat = np.zeros(0, np.float64)
        self.in_use = np.zeros(0, bool)
        self.has_provider = np.zeros(0, bool)
        self.has_host = np.zeros(0, bool)
        # Zone and traits counting the host's aggregates.
        self.aggregates: dict[str, Aggregate] = {}
        self.zones: list[str] = []
        self.traits: list[frozenset[str]] = []

    def start(self) -> None:
        with self._lock:
            if self._started:
                return
            self._load()
            self._started = True

    def _load(self) -> None:
        rev_p, rev_h, rev_a = self._read_all()
        self.store.watch(keys.providers(), rev_p, self._on_provider_changes, self._on_error)
        self.store.watch(keys.hosts(), rev_h, self._on_host_changes, self._on_error)
        self.store.watch(keys.aggregates(), rev_a, self._on_aggregate_changes, self._on_error)

    def _read_all(self) -> tuple[int, int, int]:
        """Read every host, provider and aggregate; return the revisions read at."""
        providers, rev_p = self.store.list_at_revision(keys.providers())
        aggregates, rev_a = self.store.list_at_revision(keys.aggregates())
        hosts, rev_h = self.store.list_at_revision(keys.hosts())
        with self._lock:
            self.aggregates = {r.value["name"]: Aggregate(**r.value) for r in aggregates}
            for record in providers:
                self._set_provider(record.key.rsplit("/", 1)[1], record.value, record.mod_revision)
            for record in hosts:
                self._set_host(record.key.rsplit("/", 1)[1], record.value)
        return rev_p, rev_h, rev_a

    def reread(self) -> None:
        """Read everything again now (the watches keep running)."""
        self.start()
        self._read_all()

    def _on_error(self, exc: Exception) -> None:
        log.warning("scheduler watch broke (%s); reloading the host table", exc)
        with self._lock:
            self._started = False  # the next query reloads and watches again

    def _row(self, name: str) -> int:
        if name in self.index:
            return self.index[name]
        i = len(self.names)
        self.names.append(name)
        self.index[name] = i
        self.providers.append(None)
        self.hosts.append(None)
        self.cap = np.vstack([self.cap, np.zeros((1, len(self.classes)), np.int64)])
        self.used = np.vstack([self.used, np.zeros((1, len(self.classes)), np.int64)])
        self.revision = np.append(self.revision, 0)
        self.enabled = np.append(self.enabled, False)
        self.heartbeat = np.append(self.heartbeat, 0.0)
        self.in_use = np.append(self.in_use, False)
        self.has_provider = np.append(self.has_provider, False)
        self.has_host = np.append(self.has_host, False)
        self.zones.append("")
        self.traits.append(frozenset())
        return i

    def _add_columns(self, classes: list[str]) -> None:
        """A column, zero for every host, for each class not seen before."""
        for rc in classes:
            if rc not in self.column:
                self.column[rc] = len(self.classes)
                self.classes.append(rc)
                self.cap = np.hstack([self.cap, np.zeros((len(self.names), 1), np.int64)])
                self.used = np.hstack([self.used, np.zeros((len(self.names), 1), np.int64)])

    def _vector(self, need: dict[str, int]) -> np.ndarray:
        """`need` as a row of the table (call with the lock held)."""
        self._add_columns(list(need))
        row = np.zeros(len(self.classes), np.int64)
        for rc, amount in need.items():
            row[self.column[rc]] = amount
        return row

    def _set_provider(self, name: str, value: dict | None, revision: int) -> None:
        if value is None and name not in self.index:
            return  # a pool's (or an unknown host's) provider deleted
        provider = Provider(**value) if value else None
        if provider is not None and provider.kind != COMPUTE_HOST:
            return  # pools are claimed on directly, never scheduled onto
        self._put_provider(name, provider, revision)

    def _put_provider(self, name: str, provider: Provider | None, revision: int) -> None:
        i = self._row(name)
        if revision and revision < self.revision[i]:
            return  # older than what we know (our own claim got here first)
        self.providers[i] = provider
        self.has_provider[i] = provider is not None
        self.revision[i] = revision
        if provider is None:
            self.cap[i] = self.used[i] = 0
        else:
            self._add_columns([rc for rc in provider.inventory if rc not in self.column])
            self.cap[i] = [provider.capacity(rc) for rc in self.classes]
            self.used[i] = [provider.usage.get(rc, 0) for rc in self.classes]
        self.in_use[i] = bool(provider and any(provider.usage.values()))

    def _set_host(self, name: str, value: dict | None) -> None:
        i = self._row(name)
        host = Host(**value) if value else None
        self.hosts[i] = host
        self.has_host[i] = host is not None
        self._set_effective(i)
        self.enabled[i] = bool(host and host.enabled)
        # A host the reconciler marked down counts as never heard from.
        self.heartbeat[i] = host.last_heartbeat if host and host.up else 0.0

    def _set_effective(self, i: int) -> None:
        host = self.hosts[i]
        if host is None:
            self.zones[i], self.traits[i] = "", frozenset()
        else:
            self.zones[i], self.traits[i], _ = effective(host, list(self.aggregates.values()))

    def _on_aggregate_changes(self, changes: list[Change]) -> None:
        with self._lock:
            for c in changes:
                name = c.key.rsplit("/", 1)[1]
                if c.value is None:
                    self.aggregates.pop(name, None)
                else:
                    self.aggregates[name] = Aggregate(**c.value)
            for i in range(len(self.names)):
                self._set_effective(i)

    def _on_provider_changes(self, changes: list[Change]) -> None:
        with self._lock:
            for c in changes:
                self._set_provider(c.key.rsplit("/", 1)[1], c.value, c.mod_revision)

    def _on_host_changes(self, changes: list[Change]) -> None:
        with self._lock:
            for c in changes:
                self._set_host(c.key.rsplit("/", 1)[1], c.value)

    def refresh(self, host: str = "") -> None:
        """Read one host (or, with none, the aggregates) from etcd now, so a change
        this process just made is seen at once rather than when its watch event comes."""
        if not self._started:
            return  # the first query loads everything anyway
        if host:
            record = self.store.get(keys.host(host))
            provider = self.store.get(keys.provider(host))
            with self._lock:
                self._set_host(host, record.value if record else None)
                if provider is not None:
                    self._set_provider(host, provider.value, provider.mod_revision)
        else:
            aggregates = [Change(r.key, r.value, r.mod_revision)
                          for r in self.store.list(keys.aggregates())]
            with self._lock:
                self.aggregates = {}
            self._on_aggregate_changes(aggregates)

    def update_provider(self, provider: Provider, revision: int) -> None:
        with self._lock:
            self._put_provider(provider.host, provider, revision)

    def provider(self, name: str) -> tuple[Provider | None, int]:
        with self._lock:
            i = self.index.get(name)
            return (self.providers[i], int(self.revision[i])) if i is not None else (None, 0)

    # ---------------------------------------------------------------- the query

    def _filters(self, request: Request, down_after_s: float) -> list[tuple[str, np.ndarray]]:
        """Each filter but capacity, as (why a host fails it, mask of hosts that pass).
        Call with the lock held."""
        filters: list[tuple[str, np.ndarray]] = [
            ("not reporting", self.has_provider & self.has_host),
            ("disabled", self.enabled.copy()),
            ("down", self.heartbeat > time.time() - down_after_s),
        ]
        if request.zone:
            filters.append((f"not in zone {request.zone}", np.array(
                [zone == request.zone for zone in self.zones], bool)))
        if request.required_traits or request.forbidden_traits:
            filters.append(("lacked traits", np.array(
                [request.required_traits <= traits and not request.forbidden_traits & traits
                 for traits in self.traits], bool)))
        if request.exclude_hosts:
            filters.append(("failed this instance before", np.array(
                [name not in request.exclude_hosts for name in self.names], bool)))
        members = Counter(request.group_hosts)
        if request.group_policy == "anti-affinity":
            filters.append(("held a member of its anti-affinity group", np.array(
                [members[name] == 0 for name in self.names], bool)))
        if request.group_policy == "affinity" and members:
            filters.append(("were not its affinity group's host", np.array(
                [members[name] > 0 for name in self.names], bool)))
        return filters

    def select(self, request: Request, down_after_s: float, weigher: str,
               rng: np.random.Generator, limit: int = CANDIDATES_TRIED) -> Decision:
        self.start()
        with self._lock:
            need = self._vector(request.amounts())
            classes, weighed = list(self.classes), self.column[WEIGHED]
            n = len(self.names)
            filters = self._filters(request, down_after_s)
            free = self.cap - self.used
            in_use = self.in_use.copy()
            names = list(self.names)

        remaining = np.ones(n, bool)
        reasons: Counter[str] = Counter()
        for reason, mask in filters:
            reasons[reason] += int(np.count_nonzero(remaining & ~mask))
            remaining &= mask
        lacking = free < need
        for j, rc in enumerate(classes):
            reasons[f"lacked {rc}"] += int(np.count_nonzero(remaining & lacking[:, j]))
        fit = np.flatnonzero(remaining & ~lacking.any(axis=1))

        weight = free[fit, weighed].astype(np.float64)              # free MEMORY_MB
        if weigher == "pack":
            weight = -weight + in_use[fit] * 1e10                   # in-use hosts first, fullest first
        members = Counter(request.group_hosts)
        if request.group_policy in ("soft-affinity", "soft-anti-affinity") and members:
            on_host = np.array([members[names[i]] for i in fit], np.float64)
            weight += on_host * (1e12 if request.group_policy == "soft-affinity" else -1e12)
        # Weights are whole numbers: a jitter below 1 breaks ties at random and
        # nothing else. The best `limit` are found in linear time, then sorted.
        weight += rng.random(len(fit)) * 0.5
        best = np.argpartition(-weight, limit)[:limit] if len(fit) > limit else np.arange(len(fit))
        order = best[np.argsort(-weight[best])]
        summary = f"{n} hosts" + "".join(
            f"; {count} {reason}" for reason, count in reasons.most_common() if count)
        return Decision(hosts=[names[fit[k]] for k in order], summary=summary)

    def plan(self, request: Request, count: int, down_after_s: float, weigher: str,
             rng: np.random.Generator) -> tuple[list[tuple[str, Provider, int]], str]:
        """Hosts for `count` instances at once, one pick at a time as if each were
        already placed: [(host, provider as seen, its revision)], maybe fewer
        than count, and the per-filter summary of the first pick."""
        first = self.select(request, down_after_s, weigher, rng)
        with self._lock:
            need = self._vector(request.amounts())
            weighed = self.column[WEIGHED]
            usable = np.ones(len(self.names), bool)
            for _, mask in self._filters(request, down_after_s):
                usable &= mask
            free = (self.cap - self.used).copy()
            in_use = self.in_use.copy()
            snapshot = [(name, self.providers[i], int(self.revision[i]))
                        for i, name in enumerate(self.names)]
        picks: list[tuple[str, Provider, int]] = []
        for _ in range(count):
            fit = np.flatnonzero(usable & (free >= need).all(axis=1))
            if not len(fit):
                break
            weight = free[fit, weighed].astype(np.float64)
            if weigher == "pack":
                weight = -weight + in_use[fit] * 1e10
            i = fit[int(np.argmax(weight + rng.random(len(fit)) * 0.5))]
            free[i] -= need
            in_use[i] = True
            name, provider, revision = snapshot[i]
            if provider is not None:
                picks.append((name, provider, revision))
        return picks, first.summary

    def slots(self, request: Request, down_after_s: float) -> dict[str, int]:
        """How many more of the request fit on each host that passes its other filters."""
        self.start()
        with self._lock:
            vector = self._vector(request.amounts())
            usable = np.ones(len(self.names), bool)
            for _, mask in self._filters(request, down_after_s):
                usable &= mask
            free = np.maximum(self.cap - self.used, 0)
            names = list(self.names)
        per = np.where(vector > 0, free // np.maximum(vector, 1), np.iinfo(np.int64).max).min(axis=1)
        return {names[i]: int(per[i]) for i in np.flatnonzero(usable)}


class Scheduler:
    def __init__(self, store: Store, config: ControlConfig, placement: Placement):
        self.store = store
        self.config = config
        self.placement = placement
        self.table = HostTable(store)
        self.rng = np.random.default_rng()
        self.conflicts = 0   # lost races, retried (for benchmarks and logs)

    def preview(self, request: Request) -> Decision:
        """Where a request would go, and why other hosts can't take it (claims nothing)."""
        return self.table.select(request, self.config.host_down_after_s,
                                 self.config.scheduler_weigher, self.rng)

    def schedule(self, allocation: Allocation, request: Request, group_key: str = "") -> str:
        """Pick a host and claim `allocation` on it. Idempotent per instance.
        ResourceExhausted, with a per-filter summary, when no host fits.

        With a server group (`group_key`), its policy joins the request and the
        group's record is compared and updated in the claim's transaction."""
        for _ in range(SELECTIONS):
            group = self.store.get(group_key) if group_key else None
            if group is not None:
                members = ServerGroup(**group.value)
                request = replace(request, group_policy=members.policy,
                                  group_hosts=members.other_hosts(allocation.instance_id))
            decision = self.preview(request)
            if not decision.hosts:
                # The table may lag etcd by a watch event (a host enabled a moment
                # ago): before refusing, look at etcd itself once.
                self.table.reread()
                decision = self.preview(request)
            if not decision.hosts:
                raise ResourceExhausted(f"no host for {request.what}: {decision.summary}")
            for host in decision.hosts:
                also = with_member(group, allocation.instance_id, host) if group else None
                if self._claim_on(host, allocation, also):
                    return host
                # A claim also fails when this instance holds one already (a task
                # run twice): that is checked only here, off the common path.
                existing = self.placement.allocation(allocation.instance_id)
                if existing is not None:
                    return existing.host
                if group is not None and self.store.get(group_key) != group:
                    break  # another member moved: select again with its host known
        raise Conflict(f"could not claim a host for {request.what}: too many concurrent claims")

    def _claim_on(self, host: str, allocation: Allocation, also: Txn | None = None) -> bool:
        """Claim with the table's view of the host; on a lost race, re-read it
        once and try again if it still has room."""
        provider, revision = self.table.provider(host)
        for attempt in range(2):
            if provider is None or provider.lacking(amounts(allocation.resources)):
                return False
            claimed = self.placement.try_claim(provider, revision, allocation, also)
            if claimed is not None:
                self.table.update_provider(*claimed)
                return True
            self.conflicts += 1
            if attempt == 0:
                found = self.placement.provider(host)
                if found is None:
                    return False
                provider, revision = found[0], found[1].mod_revision
                self.table.update_provider(provider, revision)
        return False

    def claim_many_into(self, txn: Txn, request: Request, allocations: list[Allocation]
                        ) -> tuple[list[str], str]:
        """Plan hosts for all `allocations` and add their claims to `txn` (each
        host's provider compared at the revision planned from): the caller
        commits them together with whatever else must be all or none. Returns
        the hosts, in the allocations' order (maybe fewer), and the summary."""
        picks, summary = self.table.plan(request, len(allocations), self.config.host_down_after_s,
                                         self.config.scheduler_weigher, self.rng)
        per_host: dict[str, tuple[Provider, int, list[Allocation]]] = {}
        for (host, provider, revision), allocation in zip(picks, allocations, strict=False):
            per_host.setdefault(host, (provider, revision, []))[2].append(
                allocation.model_copy(update={"host": host}))
        for host, (provider, revision, placed) in per_host.items():
            usage = provider.usage
            for allocation in placed:
                if allocation.others:
                    raise ValueError("claim_many_into claims instances' host shares only")
                usage = added(usage, amounts(allocation.resources))
            txn.expect(Record(keys.provider(host), {}, revision)).put(
                keys.provider(host), {**provider.model_dump(), "usage": usage})
            for allocation in placed:
                key = keys.allocation(allocation.instance_id)
                txn.expect_absent(key).put(key, allocation.model_dump())
        return [host for host, _, _ in picks], summary

    def free_slots(self, request: Request) -> dict[str, int]:
        """How many more instances of the request fit, per eligible host."""
        return self.table.slots(request, self.config.host_down_after_s)


def flavor_request(flavor: Flavor, exclude_hosts: frozenset[str] = frozenset()) -> Request:
    """What the scheduler must find for one instance of `flavor`."""
    return Request(need=flavor.resources, what=f"flavor {flavor.name}", zone=flavor.zone,
                   required_traits=frozenset(flavor.required_traits),
                   forbidden_traits=frozenset(flavor.forbidden_traits),
                   exclude_hosts=exclude_hosts)
