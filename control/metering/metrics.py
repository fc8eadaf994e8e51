"""Metrics of instances: what the agents report, kept for a few minutes in Redis.

Metrics are ephemeral, high-rate data, so they stay out of etcd (which holds
the cloud's state and replicates every write to disk on every member). Each
instance has one Redis list of the raw samples its agent reported (cumulative
counters as the hypervisor gave them), oldest first, trimmed to MAX_SAMPLES and
expiring `retention_s` after the last report. Rates (CPU utilisation, disk
bytes per second) are derived when read, from consecutive samples; a counter
that went down (the guest's QEMU process restarted) starts a new series.

This module is the only one that knows that layout; Redis is the cloud's own
(the Celery broker's, `redis_url`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import redis

from control.config import url_password
from control.errors import InvalidArgument, Unavailable

log = logging.getLogger(__name__)

KEY_PREFIX = "smallcloud:metrics:"
MAX_SAMPLES = 720  # ten minutes at one report a second
MAX_WINDOW_S = 600


def _key(instance_id: str) -> str:
    return KEY_PREFIX + instance_id


@dataclass
class RawSample:
    """One agent report of one instance: counters, cumulative since the guest started."""

    instance_id: str
    sampled_at: float     # the agent's clock: differences give the rates
    cpu_time_ns: int
    vcpus: int
    memory_available_kb: int = 0
    memory_unused_kb: int = 0
    memory_usable_kb: int = 0
    disk_read_bytes: int = 0
    disk_write_bytes: int = 0
    host: str = ""
    received_at: float = 0.0  # the control plane's clock: windows and freshness

    def to_json(self) -> str:
        return json.dumps([self.sampled_at, self.cpu_time_ns, self.vcpus, self.memory_available_kb,
                           self.memory_unused_kb, self.memory_usable_kb, self.disk_read_bytes,
                           self.disk_write_bytes, self.host, self.received_at])

    @classmethod
    def from_json(cls, instance_id: str, data: str | bytes) -> RawSample:
        (sampled_at, cpu, vcpus, available, unused, usable, read, write, host,
         received_at) = json.loads(data)
        return cls(instance_id, sampled_at, cpu, vcpus, available, unused, usable, read, write,
                   host, received_at)

    @property
    def memory_used_kb(self) -> int:
        """What the guest uses: its total less what it could hand out (MemAvailable),
        or less what is free; 0 when its balloon driver reports neither."""
        if not self.memory_available_kb:
            return 0
        spare = self.memory_usable_kb or self.memory_unused_kb
        return max(0, self.memory_available_kb - spare) if spare else 0


@dataclass
class Point:
    """What happened between two consecutive samples."""

    time: float  # received_at of the later sample
    cpu_utilisation: float
    memory_used_kb: int
    memory_available_kb: int
    disk_read_bytes_per_s: float
    disk_write_bytes_per_s: float


@dataclass
class Summary:
    """An instance's metrics over a window ending now."""

    instance_id: str
    window_s: int
    updated_at: float | None = None  # the last report, if any is kept
    fresh: bool = False
    vcpus: int = 0
    cpu_utilisation: float = 0.0
    memory_used_kb: int = 0
    memory_available_kb: int = 0
    disk_read_bytes_per_s: float = 0.0
    disk_write_bytes_per_s: float = 0.0
    points: list[Point] = field(default_factory=list)


def derive(instance_id: str, samples: list[RawSample], window_s: int, now: float,
           stale_after_s: float) -> Summary:
    """Rates and averages over the samples received within `window_s` of `now`
    (each paired with the sample before it, which may be older)."""
    summary = Summary(instance_id, window_s)
    if not samples:
        return summary
    last = samples[-1]
    summary.updated_at = last.received_at
    summary.vcpus = last.vcpus
    summary.memory_used_kb = last.memory_used_kb
    summary.memory_available_kb = last.memory_available_kb
    cpu_ns = cpu_capacity_ns = elapsed = read = written = 0.0
    for before, after in zip(samples, samples[1:], strict=False):
        if after.received_at < now - window_s:
            continue
        dt = after.sampled_at - before.sampled_at
        d_cpu = after.cpu_time_ns - before.cpu_time_ns
        d_read = after.disk_read_bytes - before.disk_read_bytes
        d_write = after.disk_write_bytes - before.disk_write_bytes
        if dt <= 0 or d_cpu < 0 or d_read < 0 or d_write < 0 or after.vcpus <= 0:
            continue  # a restarted guest (counters from 0), or a clock step
        capacity = dt * after.vcpus * 1e9
        summary.points.append(Point(
            time=after.received_at, cpu_utilisation=min(100.0, 100 * d_cpu / capacity),
            memory_used_kb=after.memory_used_kb, memory_available_kb=after.memory_available_kb,
            disk_read_bytes_per_s=d_read / dt, disk_write_bytes_per_s=d_write / dt))
        cpu_ns += d_cpu
        cpu_capacity_ns += capacity
        elapsed += dt
        read += d_read
        written += d_write
    if summary.points:
        summary.cpu_utilisation = min(100.0, 100 * cpu_ns / cpu_capacity_ns)
        summary.disk_read_bytes_per_s = read / elapsed
        summary.disk_write_bytes_per_s = written / elapsed
        summary.fresh = now - last.received_at <= stale_after_s
    return summary


@contextmanager
def _redis_errors() -> Iterator[None]:
    try:
        yield
    except redis.RedisError as exc:
        raise Unavailable(f"metrics store (Redis) unavailable: {type(exc).__name__}") from exc


def redis_client(url: str, sentinel_master: str = "mymaster") -> redis.Redis:
    """A client of redis://[:PASSWORD@]... , or of the master a set of sentinels
    reports ("sentinel://:PASSWORD@h1:26379/0;sentinel://:PASSWORD@h2:26379/0",
    as Celery takes them; the sentinels and the master take the same password).
    Under Sentinel each new connection asks the sentinels where the master is,
    so after a failover the next command reaches the new master."""
    if not url.startswith("sentinel://"):
        return redis.Redis.from_url(url, socket_timeout=3, socket_connect_timeout=3)
    from urllib.parse import urlsplit

    from redis.sentinel import Sentinel

    parts = [urlsplit(u.strip()) for u in url.split(";") if u.strip()]
    db = int((parts[0].path or "/0").strip("/") or 0)
    password = url_password(url)
    timeouts = {"socket_timeout": 3, "socket_connect_timeout": 3}
    sentinels = Sentinel([(p.hostname or "127.0.0.1", p.port or 26379) for p in parts],
                         sentinel_kwargs={"password": password, **timeouts}, **timeouts)
    return sentinels.master_for(sentinel_master, db=db, password=password, **timeouts)


class Metrics:
    def __init__(self, redis_url: str, retention_s: int = 600, window_s: int = 60,
                 stale_after_s: float = 30.0, sentinel_master: str = "mymaster"):
        self.redis = redis_client(redis_url, sentinel_master)
        self.retention_s = max(1, retention_s)
        self.window_s = window_s
        self.stale_after_s = stale_after_s

    def close(self) -> None:
        self.redis.close()

    def record(self, host: str, samples: Iterable[RawSample]) -> int:
        """Append one report of a host's instances (one round trip to Redis)."""
        now = time.time()
        count = 0
        with _redis_errors():
            pipe = self.redis.pipeline(transaction=False)
            for sample in samples:
                sample.host, sample.received_at = host, now
                key = _key(sample.instance_id)
                pipe.rpush(key, sample.to_json())
                pipe.ltrim(key, -MAX_SAMPLES, -1)
                pipe.expire(key, self.retention_s)
                count += 1
            if count:
                pipe.execute()
        return count

    def window(self, window_s: int = 0) -> int:
        window_s = window_s or self.window_s
        if not 0 < window_s <= min(MAX_WINDOW_S, self.retention_s):
            raise InvalidArgument(f"window_s must be 1 to {min(MAX_WINDOW_S, self.retention_s)}")
        return window_s

    def summaries(self, instance_ids: list[str], window_s: int = 0) -> dict[str, Summary]:
        """Each instance's metrics over the window (one round trip to Redis)."""
        window_s = self.window(window_s)
        if not instance_ids:
            return {}
        with _redis_errors():
            pipe = self.redis.pipeline(transaction=False)
            for instance_id in instance_ids:
                # Agents report at most once a second (their heartbeat loop):
                # the window and the sample before it are within the last window_s + 2.
                pipe.lrange(_key(instance_id), -min(MAX_SAMPLES, window_s + 2), -1)
            lists = pipe.execute()
        now = time.time()
        result = {}
        for instance_id, raw in zip(instance_ids, lists, strict=True):
            samples = []
            for item in raw:
                try:
                    samples.append(RawSample.from_json(instance_id, item))
                except (ValueError, TypeError):
                    log.warning("unreadable metrics sample of %s dropped", instance_id)
            # Samples of the window, and the one before it (the first pair's start).
            first = next((i for i, s in enumerate(samples) if s.received_at >= now - window_s),
                         len(samples))
            result[instance_id] = derive(instance_id, samples[max(0, first - 1):], window_s, now,
                                         self.stale_after_s)
        return result

    def summary(self, instance_id: str, window_s: int = 0) -> Summary:
        return self.summaries([instance_id], window_s)[instance_id]
