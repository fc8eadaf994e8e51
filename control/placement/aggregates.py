"""Host aggregates: named sets of hosts that share traits (e.g. ssd, gpu) and,
optionally, an availability zone. A host's zone and traits, as the scheduler
sees them, are its own plus those of its aggregates (an aggregate's zone wins)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from control.errors import AlreadyExists, InvalidTransition, NotFound
from control.models import Host, validate_name
from control.store import keys
from control.store.etcd import Record, Store, Txn


class Aggregate(BaseModel):
    name: str
    zone: str = ""
    traits: list[str] = Field(default_factory=list)
    hosts: list[str] = Field(default_factory=list)


def effective(host: Host, aggregates: list[Aggregate]) -> tuple[str, frozenset[str], list[str]]:
    """(zone, traits, aggregate names) of `host` counting its aggregates."""
    zone, traits, names = host.zone, set(host.traits), []
    for aggregate in aggregates:
        if host.name in aggregate.hosts:
            names.append(aggregate.name)
            traits |= set(aggregate.traits)
            zone = aggregate.zone or zone
    return zone, frozenset(traits), names


class Aggregates:
    def __init__(self, store: Store):
        self.store = store

    def create(self, aggregate: Aggregate) -> Aggregate:
        validate_name(aggregate.name, "aggregate name")
        if aggregate.zone:
            validate_name(aggregate.zone, "zone")
        for trait in aggregate.traits:
            validate_name(trait, "trait")
        aggregate = aggregate.model_copy(update={"hosts": [], "traits": sorted(set(aggregate.traits))})
        if not self.store.put_if_absent(keys.aggregate(aggregate.name), aggregate.model_dump()):
            raise AlreadyExists(f"aggregate {aggregate.name!r} already exists")
        return aggregate

    def all(self) -> list[Aggregate]:
        return [Aggregate(**r.value) for r in self.store.list(keys.aggregates())]

    def delete(self, name: str) -> None:
        record = self.store.get(keys.aggregate(name)) if name and "/" not in name else None
        if record is None:
            raise NotFound(f"aggregate {name!r} not found")
        if record.value["hosts"]:
            raise InvalidTransition(f"aggregate {name!r} still has hosts")
        self.store.commit(Txn().expect(record).delete(record.key))

    def set_member(self, name: str, host: str, member: bool) -> Aggregate:
        if not name or "/" in name:
            raise NotFound(f"aggregate {name!r} not found")
        if not host or "/" in host or self.store.get(keys.host(host)) is None:
            raise NotFound(f"host {host!r} not found")
        key = keys.aggregate(name)

        def change(record: Record) -> Txn:
            hosts = set(record.value["hosts"])
            hosts = hosts | {host} if member else hosts - {host}
            return Txn().expect(record).put(key, {**record.value, "hosts": sorted(hosts)})

        updated = self.store.update(key, change)
        if updated is None:
            raise NotFound(f"aggregate {name!r} not found")
        return Aggregate(**updated.value)
