"""The state store: the only module that talks to etcd.

Values are JSON documents. Every write is a transaction that compares what the
writer read (a key's mod_revision, or that it is absent), so concurrent writers
never lose each other's updates: the loser re-reads and retries a bounded
number of times, then gets Conflict (ABORTED on the wire).
"""

from __future__ import annotations

import builtins
import functools
import json
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import grpc
import pyetcd
from cloudclient.endpoints import RECONNECT_OPTIONS
from pyetcd import etcdrpc, utils
from pyetcd.exceptions import ConnectionFailedError, Etcd3Exception, WatchTimedOut

from control.errors import Conflict, InvalidArgument, OutOfRange, ResourceExhausted, Unavailable

if TYPE_CHECKING:
    from control.config import ControlConfig

log = logging.getLogger(__name__)

CAS_ATTEMPTS = 8


@dataclass
class Record:
    key: str
    value: dict[str, Any]
    mod_revision: int


T = TypeVar("T")


@dataclass
class Applied(Generic[T]):
    """What Store.apply did to a key that existed."""

    record: Record | None  # the key as the change left it; None: the transaction deleted it
    result: T              # what the change function decided, as it returned it
    committed: bool        # whether a transaction was committed (False: the change wrote nothing)


def _after(record: Record, txn: Txn, revision: int) -> Record | None:
    """`record`'s key once `txn` committed at `revision`: its new value, gone, or as
    it was (a transaction that only compares the key leaves its mod_revision)."""
    key = record.key
    if key in txn.puts:
        return Record(key, txn.puts[key], revision)
    if key in txn.deletes or key.startswith(tuple(txn.prefix_deletes)):
        return None
    return record


@dataclass
class Change:
    """One change seen by a watch: value None means the key was deleted."""

    key: str
    value: dict[str, Any] | None
    mod_revision: int
    # The value before the change (None: the key was created), when the watch
    # asked for it (Store.watch_changes with prev=True).
    prev: dict[str, Any] | None = None


class RevisionCompacted(OutOfRange):
    """A watch asked for history that etcd has compacted away."""

    def __init__(self, after_revision: int, oldest: int):
        self.oldest = oldest  # the oldest revision etcd still has
        super().__init__(
            f"changes after revision {after_revision} are no longer kept (compacted): the oldest "
            f"revision available is {oldest}; list again and watch from there")


class ChangeFeed:
    """One open etcd watch as a queue of batches: each batch is every change of
    one etcd response (a transaction's changes are never split), in revision
    order. Built by Store.watch_changes; `close` cancels the etcd watch.

    etcd's callbacks come on the client's one watch thread, which must never
    block: batches wait here, at most `max_pending` of them. A consumer that
    falls further behind gets ResourceExhausted (it resumes from its last
    revision) instead of this process buffering without bound.
    """

    def __init__(self, prefixes: builtins.list[str], after_revision: int, max_pending: int,
                 cancel: Callable[[int], None]):
        self._cancel = cancel
        self.prefixes = tuple(prefixes)
        self.after_revision = after_revision
        self.max_pending = max_pending
        self.watch_id: int | None = None
        self._queue: queue.Queue[Any] = queue.Queue()
        self._closed = threading.Event()
        self._failed = False

    def _on_response(self, response: Any) -> None:
        """pyetcd's callback (its watch thread): queue, never block."""
        from pyetcd.events import DeleteEvent
        from pyetcd.exceptions import RevisionCompactedError

        if self._closed.is_set() or self._failed:
            return
        if isinstance(response, RevisionCompactedError):
            self._fail(RevisionCompacted(self.after_revision, response.compacted_revision))
            return
        if isinstance(response, Exception):
            self._fail(Unavailable(f"state store (etcd) watch broke: {type(response).__name__}"))
            return
        batch = []
        for e in response.events:
            key = e.key.decode()
            if not key.startswith(self.prefixes):
                continue
            prev_kv = e._event.prev_kv if e._event.HasField("prev_kv") else None
            batch.append(Change(
                key, None if isinstance(e, DeleteEvent) else json.loads(e.value), e.mod_revision,
                json.loads(prev_kv.value) if prev_kv is not None and prev_kv.value else None))
        if not batch:
            return
        self._deliver(batch)

    def _deliver(self, batch: builtins.list[Change]) -> None:
        """Queue a batch for `get`, or fail the feed if its reader fell too far behind."""
        if self._queue.qsize() >= self.max_pending:
            self._fail(ResourceExhausted(
                f"the watcher fell more than {self.max_pending} updates behind; "
                "watch again from the last revision it got"))
            return
        self._queue.put(batch)

    def _fail(self, error: Exception) -> None:
        self._failed = True
        self._queue.put(error)

    def get(self, timeout: float | None = None) -> builtins.list[Change] | None:
        """The next batch; None after `timeout` seconds without one, or once
        closed. Raises the error that ended the watch (compaction, etcd gone)."""
        if self._closed.is_set():
            return None
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        if isinstance(item, Exception):
            raise item
        return item

    def wake(self) -> None:
        """Let a waiting `get` return at once (from another thread)."""
        self._queue.put(None)

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def close(self) -> None:
        """Cancel the etcd watch; safe to call twice, or after etcd went away."""
        if self._closed.is_set():
            return
        self._closed.set()
        self.wake()
        if self.watch_id is not None:
            try:
                self._cancel(self.watch_id)
            except Exception:  # the watch stream is gone already: nothing to cancel
                log.debug("cancelling watch %s", self.watch_id, exc_info=True)


@dataclass
class Txn:
    """A set of compares and writes that commit together or not at all."""

    unchanged: dict[str, int] = field(default_factory=dict)  # key -> mod_revision read
    absent: list[str] = field(default_factory=list)
    puts: dict[str, dict[str, Any]] = field(default_factory=dict)
    deletes: list[str] = field(default_factory=list)
    prefix_deletes: list[str] = field(default_factory=list)  # one etcd op each, however many keys
    empty: list[str] = field(default_factory=list)  # prefixes with no key under them

    def expect(self, record: Record) -> Txn:
        self.unchanged[record.key] = record.mod_revision
        return self

    def expect_absent(self, key: str) -> Txn:
        self.absent.append(key)
        return self

    def expect_empty(self, prefix: str) -> Txn:
        """Commit only if no key exists under `prefix` (one compare, however
        many keys there are): a writer that checked a prefix was empty (say, a
        project owns no images) fails if one was written there meanwhile."""
        self.empty.append(prefix)
        return self

    def put(self, key: str, value: dict[str, Any]) -> Txn:
        self.puts[key] = value
        return self

    def delete(self, key: str) -> Txn:
        self.deletes.append(key)
        return self

    def delete_prefix(self, prefix: str) -> Txn:
        """Delete every key under `prefix`: one operation for etcd, which refuses
        a transaction of more than 128."""
        self.prefix_deletes.append(prefix)
        return self

    def merge(self, other: Txn) -> Txn:
        """Add another transaction's compares and writes to this one."""
        self.unchanged.update(other.unchanged)
        self.absent.extend(other.absent)
        self.puts.update(other.puts)
        self.deletes.extend(other.deletes)
        self.prefix_deletes.extend(other.prefix_deletes)
        self.empty.extend(other.empty)
        return self


@contextmanager
def _etcd_errors() -> Iterator[None]:
    try:
        yield
    except (Etcd3Exception, ValueError) as exc:
        # pyetcd raises ValueError when its only endpoint is marked failed.
        raise Unavailable(f"state store (etcd) unavailable: {type(exc).__name__}") from exc
    except grpc.RpcError as exc:  # codes pyetcd does not translate
        if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "space exceeded" in (exc.details() or ""):
            raise Unavailable("the cloud's state store is full (etcd NOSPACE alarm): it accepts no "
                              "writes until an admin frees space (cloudctl store status)") from exc
        if exc.code() == grpc.StatusCode.OUT_OF_RANGE:  # a compacted or future revision
            raise OutOfRange(f"state store: {exc.details()}") from exc
        # Any other code (UNKNOWN "Stream removed" when a member dies mid-call,
        # CANCELLED, RESOURCE_EXHAUSTED "too many requests"): the store failed,
        # not the request, and a transaction's outcome is unknown. Callers
        # treat it as an outage and retry (with their request ids), never as
        # an internal error of the cloud.
        raise Unavailable(f"state store (etcd) failed: {exc.code().name} "
                          f"{(exc.details() or '')[:200]}") from exc


@dataclass(frozen=True)
class MemberStatus:
    """One etcd member as its Status call reports it (error set: it did not answer)."""

    endpoint: str
    member_id: int = 0
    version: str = ""
    db_size: int = 0          # bytes of its backend file
    db_size_in_use: int = 0   # bytes of it in use; the rest is freed by a defragmentation
    is_leader: bool = False
    revision: int = 0
    error: str = ""


def _in_use(response: Any) -> int:
    """StatusResponse.dbSizeInUse (field 9, etcd 3.4): pyetcd's copy of the
    proto predates it, so it arrives as an unknown field."""
    from google.protobuf.unknown_fields import UnknownFieldSet

    for unknown in UnknownFieldSet(response):
        if unknown.field_number == 9:
            return int(unknown.data)
    return 0


@dataclass(frozen=True)
class EtcdTls:
    """Mutual TLS to etcd: the CA that signed the members' certificates (the
    etcd CA of control/pki.py) and the client certificate and key presented."""

    ca_file: str
    cert_file: str
    key_file: str

    @classmethod
    def of(cls, config: ControlConfig) -> EtcdTls | None:
        if not (config.etcd_ca_file and config.etcd_cert_file and config.etcd_key_file):
            return None
        return cls(config.etcd_ca_file, config.etcd_cert_file, config.etcd_key_file)

    def credentials(self) -> grpc.ChannelCredentials:
        def read(path: str) -> bytes:
            with open(path, "rb") as f:
                return f.read()
        return grpc.ssl_channel_credentials(read(self.ca_file), read(self.key_file),
                                            read(self.cert_file))


def _endpoint(address: str, credentials: grpc.ChannelCredentials | None) -> pyetcd.Endpoint:
    """An etcd endpoint, "host:port" (or with http:// or https://, which only
    say what `credentials` does: over TLS when there are any)."""
    host, _, port = address.split("://")[-1].rpartition(":")
    # time_retry: how long a failed endpoint is skipped; short, so a restarted
    # etcd is used again at once.
    return pyetcd.Endpoint(host, int(port), secure=credentials is not None, creds=credentials,
                           time_retry=0.5, opts=RECONNECT_OPTIONS)


class Store:
    """The control plane's view of etcd, over one endpoint or the members of a
    cluster. With several, calls go to one member; one that fails UNAVAILABLE
    (the member died, or lost its leader) marks that member failed for 0.5 s and
    the next call goes to another. Calls safe to send twice (reads, lease
    renewals, unconditional puts) are sent again at once to the next member; a
    transaction is not (it may have been applied before the member died): its
    caller gets Unavailable, as when etcd is down, and retries as it would then."""

    def __init__(self, endpoints: list[str], timeout_s: float = 3.0, tls: EtcdTls | None = None):
        credentials = tls.credentials() if tls else None
        self._client = pyetcd.MultiEndpointEtcd3Client(
            endpoints=[_endpoint(e, credentials) for e in endpoints], timeout=timeout_s,
            failover=True)
        self._attempts = len(self._client.endpoints)
        self._addresses, self._credentials, self._timeout_s = endpoints, credentials, timeout_s
        self._members: dict[str, Any] = {}  # address -> a client of that member alone

    def _safe(self, call: Callable[[], Any]) -> Any:
        """Run an idempotent etcd call; if its member fails under it, on the next."""
        for attempt in range(self._attempts):
            try:
                with _etcd_errors():
                    return call()
            except Unavailable as exc:
                if attempt + 1 >= self._attempts or \
                        not isinstance(exc.__cause__, ConnectionFailedError):
                    raise
                log.info("etcd member failed (%s); trying the next", exc)
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._client.close()

    def get(self, key: str) -> Record | None:
        value, meta = self._safe(lambda: self._client.get(key))
        if value is None:
            return None
        return Record(key, json.loads(value), meta.mod_revision)

    def list(self, prefix: str) -> list[Record]:
        items = self._safe(lambda: list(self._client.get_prefix(prefix, sort_order="ascend")))
        return [Record(meta.key.decode(), json.loads(value), meta.mod_revision)
                for value, meta in items]

    def creation(self, key: str) -> tuple[int, int]:
        """The revision that created `key` (0: it does not exist), and the
        store revision it was read at: the key has existed, unchanged in
        identity, from the first to the second (a key deleted and written again
        has a new creation revision)."""
        response = self._safe(lambda: self._client.get_response(key))
        created = response.kvs[0].create_revision if response.kvs else 0
        return created, response.header.revision

    def list_at_revision(self, prefix: str, revision: int | None = None,
                         ) -> tuple[builtins.list[Record], int]:
        """Everything under `prefix`, and the store revision it was read at
        (to watch from, so no change in between is missed). With `revision`,
        as it was at that revision: several prefixes read as one snapshot."""
        response = self._safe(lambda: self._client.get_prefix_response(
            prefix, **({"revision": revision} if revision is not None else {})))
        records = [Record(kv.key.decode(), json.loads(kv.value), kv.mod_revision)
                   for kv in response.kvs]
        return records, response.header.revision if revision is None else revision

    def watch(self, prefix: str, after_revision: int,
              on_changes: Callable[[builtins.list[Change]], None],
              on_error: Callable[[Exception], None]) -> None:
        """Call on_changes with every change under `prefix` after `after_revision`
        (in order, from a background thread); on_error if the watch breaks (the
        caller re-lists and watches again)."""
        from pyetcd.events import DeleteEvent

        def callback(response: Any) -> None:
            if response is None:  # pyetcd: the stream ended without an error
                on_error(Unavailable("the etcd watch stream ended"))
                return
            if isinstance(response, Exception):
                on_error(response)
                return
            on_changes([Change(e.key.decode(),
                               None if isinstance(e, DeleteEvent) else json.loads(e.value),
                               e.mod_revision) for e in response.events])

        def add() -> None:
            self._client.add_watch_prefix_callback(prefix, callback,
                                                   start_revision=after_revision + 1)

        with _etcd_errors():
            try:
                add()
            except WatchTimedOut:
                # Once more on a new stream: the caller (a create reading the
                # host table for the first time, in CI) should not fail because
                # an old stream stopped answering. A second timeout is etcd's.
                self._replace_watch_stream()
                add()

    def _replace_watch_stream(self) -> None:
        """pyetcd keeps one watch stream per client and queues every new watch
        on it: a stream that stopped answering fails every later watch too (a
        worker's builds all failed, WatchTimedOut, until it was restarted). A
        new stream for the next watch; the old one is told to end (if it ends,
        its watches' owners hear of it through their error callbacks)."""
        stuck = self._client.watcher
        self._client.watcher = self._client.get_watcher()
        stuck.close()
        log.warning("etcd watch stream did not answer: replaced")

    def commit(self, txn: Txn) -> bool:
        """Apply txn if every compare holds; return whether it did."""
        return self.commit_at(txn) is not None

    def commit_at(self, txn: Txn) -> int | None:
        """Like commit, but return the store revision the txn made (the new
        mod_revision of every key it wrote), or None if a compare failed."""
        t = self._client.transactions
        compares = [t.mod(k) == rev for k, rev in txn.unchanged.items()]
        compares += [t.version(k) == 0 for k in txn.absent]
        # Over a range, etcd holds a compare if it holds for every key there (so
        # for none when the range is empty): version == 0 means "no key under p".
        compares += [t.version(p, utils.prefix_range_end(p.encode())) == 0 for p in txn.empty]
        ops = [t.put(k, json.dumps(v, sort_keys=True)) for k, v in txn.puts.items()]
        ops += [t.delete(k) for k in txn.deletes]
        ops += [t.delete(p, range_end=utils.prefix_range_end(p.encode())) for p in txn.prefix_deletes]
        # pyetcd's transaction() drops the response header, which holds the
        # revision; so the request is sent here, the way transaction() sends it.
        client = self._client
        request = etcdrpc.TxnRequest(compare=[c.build_message() for c in compares],
                                     success=client._ops_to_requests(ops), failure=[])
        with _etcd_errors():
            try:
                response = client.kvstub.Txn(request, client.timeout,
                                             credentials=client.call_credentials,
                                             metadata=client.metadata)
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                    # e.g. "etcdserver: request is too large" (over --max-request-bytes):
                    # the request's fault, not the store's; nothing was written.
                    raise InvalidArgument(f"the state store refused the write: {exc.details()}") from None
                client._manage_grpc_errors(exc)  # marks the endpoint failed, raises its error
                raise
        return response.header.revision if response.succeeded else None

    def apply(self, key: str, change: Callable[[Record], tuple[Txn | None, T]]) -> Applied[T] | None:
        """Read-modify-write `key` under compare-and-swap, retrying on conflict.

        `change` gets the current record and returns the transaction to commit
        (which should `expect` that record; None leaves things as they are) and
        whatever it decided (the new instance, whether a host was down...), which
        comes back in Applied.result: callers need no closures to carry it out.
        None if the key does not exist (`change` is not called).
        """
        for _ in range(CAS_ATTEMPTS):
            record = self.get(key)
            if record is None:
                return None
            txn, result = change(record)
            if txn is None:
                return Applied(record, result, committed=False)
            if (revision := self.commit_at(txn)) is not None:
                return Applied(_after(record, txn, revision), result, committed=True)
            log.debug("conflict on %s, retrying", key)
        raise Conflict(f"too many concurrent updates to {key}; try again")

    def update(self, key: str, change: Callable[[Record], Txn | None]) -> Record | None:
        """`apply` for a change that decides nothing but its transaction: the key's
        record as the change left it, or None if it does not exist (before, or
        after: the transaction deleted it)."""
        applied = self.apply(key, lambda record: (change(record), None))
        return applied.record if applied else None

    def put_if_absent(self, key: str, value: dict[str, Any]) -> bool:
        return self.commit(Txn().expect_absent(key).put(key, value))

    def put(self, key: str, value: dict[str, Any]) -> None:
        """Unconditional write: only for records a single writer owns (seed data)."""
        self._safe(lambda: self._client.put(key, json.dumps(value, sort_keys=True)))

    def put_expiring(self, key: str, value: dict[str, Any], ttl_s: float) -> None:
        """Write a record that etcd deletes by itself after ttl_s (a lease)."""
        def put() -> None:  # sent again, a new lease: the first expires unused
            lease = self._client.lease(max(1, int(ttl_s + 0.999)))
            self._client.put(key, json.dumps(value, sort_keys=True), lease=lease)
        self._safe(put)

    def create_leased(self, key: str, value: dict[str, Any], ttl_s: float) -> int | None:
        """Write `key` if it is absent, bound to a new lease of ttl_s: etcd deletes it
        when the lease is not kept alive. The lease id, or None if the key exists."""
        t = self._client.transactions
        with _etcd_errors():
            lease = self._client.lease(max(1, int(ttl_s + 0.999)))
            created, _ = self._client.transaction(
                compare=[t.version(key) == 0],
                success=[t.put(key, json.dumps(value, sort_keys=True), lease=lease.id)],
                failure=[])
            if not created:
                self._client.revoke_lease(lease.id)
        return lease.id if created else None

    def keep_alive(self, lease_id: int) -> bool:
        """Renew a lease for its whole TTL; False if it has expired (its keys are gone)."""
        return self._safe(lambda: any(r.TTL > 0 for r in self._client.refresh_lease(lease_id)))

    def revoke_lease(self, lease_id: int) -> None:
        """End a lease now: its keys are deleted. Succeeds if it has expired already."""
        with _etcd_errors():
            try:
                self._client.revoke_lease(lease_id)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    raise

    def ping(self) -> None:
        self._safe(self._client.status)

    # ---------------------------------------------------------------- change feeds (events)

    def revision(self) -> int:
        """The store's current revision (that of its latest change)."""
        return self._safe(
            lambda: self._client.get_response("/", keys_only=True, limit=1).header.revision)

    def watch_changes(self, prefixes: builtins.list[str], after_revision: int, prev: bool = True,
                      max_pending: int = 10_000) -> ChangeFeed:
        """Every change to keys under any of `prefixes` after `after_revision`, as
        a ChangeFeed (close it when done). With `prev`, each change carries the
        key's value before it. One etcd watch on the range covering all the
        prefixes, so changes come in one revision order. A compacted
        `after_revision` surfaces as RevisionCompacted from the feed's `get`."""
        from pyetcd import utils

        feed = ChangeFeed(prefixes, after_revision, max_pending, self._client.cancel_watch)
        start = min(prefixes)
        end = max(utils.prefix_range_end(p.encode()) for p in prefixes)
        with _etcd_errors():
            feed.watch_id = self._client.add_watch_callback(
                start, feed._on_response, range_end=end, start_revision=after_revision + 1,
                prev_kv=prev)
        return feed

    # ------------------------------------------------------------ maintenance
    # Per member (a defragmentation and a status are one member's, not the
    # cluster's): control/store/maintenance.py and the admins' store status.

    def _member(self, address: str) -> Any:
        if address not in self._members:
            self._members[address] = pyetcd.MultiEndpointEtcd3Client(
                endpoints=[_endpoint(address, self._credentials)], timeout=self._timeout_s)
        return self._members[address]

    def member_statuses(self) -> builtins.list[MemberStatus]:
        found = []
        for address in self._addresses:
            client = self._member(address)
            try:
                with _etcd_errors():
                    response = client.maintenancestub.Status(
                        etcdrpc.StatusRequest(), self._timeout_s,
                        credentials=client.call_credentials, metadata=client.metadata)
            except (Unavailable, grpc.RpcError) as exc:
                found.append(MemberStatus(address, error=str(exc)))
                continue
            found.append(MemberStatus(
                address, member_id=response.header.member_id, version=response.version,
                db_size=response.dbSize, db_size_in_use=_in_use(response),
                is_leader=response.leader == response.header.member_id,
                revision=response.header.revision))
        return found

    def alarms(self) -> builtins.list[tuple[int, str]]:
        """The cluster's raised alarms: (member id, "NOSPACE" or "CORRUPT")."""
        found = self._safe(lambda: list(self._client.list_alarms()))
        return [(a.member_id, etcdrpc.AlarmType.Name(a.alarm_type)) for a in found]

    def disarm_nospace(self) -> None:
        """Clear the NOSPACE alarm of every member (after space was freed)."""
        for member_id, alarm in self.alarms():
            if alarm == "NOSPACE":
                self._safe(functools.partial(self._client.disarm_alarm, member_id))

    def defragment(self, address: str) -> None:
        """Give the member's freed pages back to the file system; the member
        answers nothing else meanwhile (milliseconds for a small database)."""
        client = self._member(address)
        with _etcd_errors():
            client.defragment()

    def compact(self, revision: int) -> None:
        """Drop etcd's history before `revision` (operators and tests: a watch
        from before it then gets RevisionCompacted)."""
        with _etcd_errors():
            self._client.compact(revision, physical=True)
