"""Flavors (instance types) and images: lookup and the seed data of a new cloud."""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path

from control import keys
from control.errors import NotFound
from control.models import Flavor, Image
from control.store import Store

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

    def flavors(self) -> list[Flavor]:
        flavors = [Flavor(**r.value) for r in self.store.list(keys.flavors())]
        return sorted(flavors, key=lambda f: (f.memory_mb, f.vcpus, f.disk_gb, f.name))

    def flavor(self, name: str) -> Flavor:
        record = self.store.get(keys.flavor(name)) if name and "/" not in name else None
        if record is None:
            raise NotFound(f"flavor {name!r} not found")
        return Flavor(**record.value)

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
