"""Flavors (instance types): lookup, admin changes and the seed flavors of a new cloud."""

from __future__ import annotations

import logging

from control.errors import AlreadyExists, InvalidArgument, InvalidTransition, NotFound
from control.models import Flavor, Instance, validate_name
from control.store import keys
from control.store.etcd import Store, Txn

log = logging.getLogger(__name__)

SEED_FLAVORS = [
    Flavor(name="tiny", vcpus=1, memory_mb=256, disk_gb=1),
    Flavor(name="small", vcpus=1, memory_mb=512, disk_gb=2),
    Flavor(name="medium", vcpus=2, memory_mb=1024, disk_gb=5),
    Flavor(name="large", vcpus=4, memory_mb=2048, disk_gb=10),
]

class Catalog:
    def __init__(self, store: Store):
        self.store = store

    def flavors(self, project: str, is_admin: bool = False) -> list[Flavor]:
        """The flavors `project` may use (admins see all)."""
        flavors = [f for f in (Flavor(**r.value) for r in self.store.list(keys.flavors()))
                   if f.visible_to(project, is_admin)]
        return sorted(flavors, key=lambda f: (f.memory_mb, f.vcpus, f.disk_gb, f.name))

    def flavor(self, name: str, project: str, is_admin: bool = False) -> Flavor:
        """A flavor `project` may use; a private one it has no access to is NOT_FOUND."""
        record = self.store.get(keys.flavor(name)) if name and "/" not in name else None
        if record is None or not Flavor(**record.value).visible_to(project, is_admin):
            raise NotFound(f"flavor {name!r} not found")
        return Flavor(**record.value)

    def create_flavor(self, flavor: Flavor) -> Flavor:
        validate_name(flavor.name, "flavor name")
        if flavor.vcpus < 1 or flavor.memory_mb < 64 or flavor.disk_gb < 1:
            raise InvalidArgument("a flavor needs at least 1 vCPU, 64 MiB of memory and 1 GiB of disk")
        if flavor.public and flavor.projects:
            raise InvalidArgument("a public flavor has no project list; use --private")
        if flavor.zone:
            validate_name(flavor.zone, "zone")
        for trait in flavor.required_traits + flavor.forbidden_traits:
            validate_name(trait, "trait")
        if not self.store.put_if_absent(keys.flavor(flavor.name), flavor.model_dump()):
            raise AlreadyExists(f"flavor {flavor.name!r} already exists")
        return flavor

    def delete_flavor(self, name: str) -> None:
        record = self.store.get(keys.flavor(name)) if name and "/" not in name else None
        if record is None:
            raise NotFound(f"flavor {name!r} not found")
        users = [r for r in self.store.list(keys.all_instances())
                 if "/instances/" in r.key and Instance(**r.value).flavor == name]
        if users:
            raise InvalidTransition(f"flavor {name!r} is in use by {len(users)} instances")
        if not self.store.commit(Txn().expect(record).delete(record.key)):
            raise InvalidTransition(f"flavor {name!r} changed while being deleted; try again")

    def seed_flavors(self) -> None:
        for flavor in SEED_FLAVORS:
            if self.store.put_if_absent(keys.flavor(flavor.name), flavor.model_dump()):
                log.info("seeded flavor %s", flavor.name)
