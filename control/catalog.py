"""Flavors (instance types) and images: lookup and the seed data of a new cloud."""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path

from control import keys
from control.errors import AlreadyExists, InvalidArgument, InvalidTransition, NotFound
from control.models import Flavor, Image, Instance, validate_name
from control.store import Store, Txn

log = logging.getLogger(__name__)

SEED_FLAVORS = [
    Flavor(name="tiny", vcpus=1, memory_mb=256, disk_gb=1),
    Flavor(name="small", vcpus=1, memory_mb=512, disk_gb=2),
    Flavor(name="medium", vcpus=2, memory_mb=1024, disk_gb=5),
    Flavor(name="large", vcpus=4, memory_mb=2048, disk_gb=10),
]

# Image ids are derived from the image's name, so registering the same image
# twice (make up run twice) finds the same record.
_IMAGE_NAMESPACE = uuid.UUID("5b0c1d2e-7f4a-4e55-9b1a-0c3d2e1f4a5b")


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

    def images(self) -> list[Image]:
        return sorted((Image(**r.value) for r in self.store.list(keys.images())),
                      key=lambda i: i.name)

    def image(self, id_or_name: str) -> Image:
        if id_or_name and "/" not in id_or_name:
            record = self.store.get(keys.image(id_or_name))
            if record is not None:
                return Image(**record.value)
            for image in self.images():
                if image.name == id_or_name:
                    return image
        raise NotFound(f"image {id_or_name!r} not found")

    def seed_flavors(self) -> None:
        for flavor in SEED_FLAVORS:
            if self.store.put_if_absent(keys.flavor(flavor.name), flavor.model_dump()):
                log.info("seeded flavor %s", flavor.name)

    def register_image_dir(self, directory: str | Path) -> Image:
        """Register the image built in `directory` (its image.json names the files)."""
        directory = Path(directory).resolve()
        meta = json.loads((directory / "image.json").read_text())
        image = Image(
            id=str(uuid.uuid5(_IMAGE_NAMESPACE, meta["name"])),
            name=meta["name"],
            os=meta.get("os", "linux"),
            kernel_path=str(directory / meta["kernel"]),
            initrd_path=str(directory / meta["initrd"]),
            disk_path=str(directory / meta["disk"]),
            cmdline=meta["cmdline"],
            min_disk_gb=meta.get("min_disk_gb", 1),
            min_memory_mb=meta.get("min_ram_mb", 128),
        )
        self.store.put(keys.image(image.id), image.model_dump())
        return image
