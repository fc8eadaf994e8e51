"""Images: upload with checks, lookup as a project sees them, delete unless in use.

A private image belongs to the project that uploaded it and only that project
sees it; a public one (uploaded by an admin, or seeded by the operator) every
project sees. Names are unique among public images and among a project's own;
looking up a name finds the project's own image before a public one.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import logging
import math
import uuid
from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel

from control.errors import AlreadyExists, InvalidArgument, InvalidTransition, NotFound, PermissionDenied
from control.identity.accounts import Caller, check_project, expect_project_into
from control.images.files import CHUNK_BYTES, ImageStore, check_disk
from control.models import Image, Instance, validate_name
from control.store import keys
from control.store.etcd import Record, Store, Txn

log = logging.getLogger(__name__)

# Seed image ids are derived from the image's name, so registering the same
# image twice (make up run twice) finds the same record.
_SEED_NAMESPACE = uuid.UUID("5b0c1d2e-7f4a-4e55-9b1a-0c3d2e1f4a5b")
DEFAULT_CMDLINE = "console=ttyS0 root=/dev/vda rw"
MAX_CMDLINE = 1024


class NewImage(BaseModel):
    """What an uploader says of an image (the first message of CreateImage)."""

    name: str
    disk_format: str
    os: str = ""
    visibility: str = ""
    min_disk_gb: int = 0
    min_memory_mb: int = 0
    cmdline: str = ""


def _scope(image: Image) -> str:
    return "public" if image.visibility == "public" else image.project


class Images:
    def __init__(self, store: Store, files: ImageStore):
        self.store = store
        self.files = files

    # ---------------------------------------------------------------- lookup

    def list(self, caller: Caller) -> list[Image]:
        images = [Image(**r.value) for r in self.store.list(keys.images())]
        return sorted((i for i in images if i.visible_to(caller.project, caller.is_admin)),
                      key=lambda i: (i.name, i.project))

    def by_id(self, image_id: str) -> Image:
        """An image by id whoever owns it (for tasks acting on a recorded instance)."""
        record = self.store.get(keys.image(image_id)) if image_id and "/" not in image_id else None
        if record is None:
            raise NotFound(f"image {image_id!r} not found")
        return Image(**record.value)

    def _record(self, caller: Caller, ref: str) -> Record:
        if ref and "/" not in ref:
            record = self.store.get(keys.image(ref))  # an id
            if record is None:  # a name: the project's own image first
                for scope in (caller.project, "public"):
                    named = self.store.get(keys.image_name(scope, ref))
                    if named is not None:
                        record = self.store.get(keys.image(named.value["id"]))
                        break
            if record is not None and Image(**record.value).visible_to(caller.project,
                                                                       caller.is_admin):
                return record
        raise NotFound(f"image {ref!r} not found")

    def get(self, caller: Caller, ref: str) -> Image:
        return Image(**self._record(caller, ref).value)

    def bootable(self, caller: Caller, ref: str) -> tuple[Image, Record]:
        """An image new instances may use, and its record: a create expects the
        record unchanged, so it cannot race with the image's delete."""
        record = self._record(caller, ref)
        image = Image(**record.value)
        if image.status != "active":
            raise InvalidTransition(f"image {image.name!r} is being deleted")
        return image, record

    # ---------------------------------------------------------------- create

    def create(self, caller: Caller, new: NewImage, data: Iterable[tuple[str, bytes]]) -> Image:
        """Receive an image's files, check them, then record it; on any error
        nothing is kept."""
        validate_name(new.name, "image name")
        visibility = new.visibility or "private"
        if visibility not in ("private", "public"):
            raise InvalidArgument(f"visibility is private or public, not {visibility!r}")
        if visibility == "public" and not caller.is_admin:
            raise PermissionDenied("only admins publish public images")
        if new.min_disk_gb < 0 or new.min_memory_mb < 0:
            raise InvalidArgument("minimum disk and memory cannot be negative")
        if len(new.cmdline) > MAX_CMDLINE or not new.cmdline.isprintable():
            raise InvalidArgument(f"a kernel command line is at most {MAX_CMDLINE} printable characters")
        image = Image(id=str(uuid.uuid4()), name=new.name, os=new.os or "linux",
                      project=caller.project, visibility=visibility, disk_format=new.disk_format,
                      min_memory_mb=new.min_memory_mb or 128)
        name_key = keys.image_name(_scope(image), image.name)
        if self.store.get(name_key) is not None:
            raise AlreadyExists(f"an image named {image.name!r} already exists")

        upload = self.files.begin()
        try:
            for part, chunk in data:
                upload.write(part, chunk)
            parts = upload.parts()
            if "disk" not in parts:
                raise InvalidArgument("an image needs a disk")
            if ("kernel" in parts) != ("initrd" in parts):
                raise InvalidArgument("give both a kernel and an initrd, or neither")
            facts = check_disk(upload.path("disk"), new.disk_format)
            disk = upload.stored("disk")
            image.size_bytes, image.disk_sha256 = disk.size_bytes, disk.sha256
            image.virtual_size_bytes = facts.virtual_size_bytes
            image.min_disk_gb = max(new.min_disk_gb, 1, math.ceil(facts.virtual_size_bytes / 2**30))
            if "kernel" in parts:
                image.kernel_sha256 = upload.stored("kernel").sha256
                image.initrd_sha256 = upload.stored("initrd").sha256
                image.cmdline = new.cmdline or DEFAULT_CMDLINE
            self.files.keep(upload, image.id)
        except BaseException:
            self.files.abandon(upload)
            raise
        txn = (Txn().expect_absent(name_key).put(name_key, {"id": image.id})
               .put(keys.image(image.id), image.model_dump()))
        try:
            # An upload takes a while: its project may have been deleted meanwhile.
            project = expect_project_into(self.store, txn, image.project)
            if not self.store.commit(txn):
                check_project(self.store, project)
                raise AlreadyExists(f"an image named {image.name!r} already exists")
        except BaseException:
            self.files.remove(image.id)
            raise
        log.info("image %s (%s) created in %s: %s, %d bytes, sha256 %s", image.id, image.name,
                 image.project, image.disk_format, image.size_bytes, image.disk_sha256)
        return image

    # ---------------------------------------------------------------- delete

    def delete(self, caller: Caller, ref: str) -> None:
        record = self._record(caller, ref)
        image = Image(**record.value)
        if not caller.is_admin and (image.visibility == "public" or image.project != caller.project):
            raise PermissionDenied(f"only admins delete image {image.name!r}")
        # Mark it first, so no create can start using it while we look for users.
        key = keys.image(image.id)
        marked = self.store.update(key, lambda r: Txn().expect(r).put(key, {**r.value,
                                                                           "status": "deleting"}))
        if marked is None:
            raise NotFound(f"image {ref!r} not found")
        users = self.users(image.id)
        if users:
            self.store.update(key, lambda r: Txn().expect(r).put(key, {**r.value, "status": "active"}))
            raise InvalidTransition(f"image {image.name!r} is in use by {len(users)} instances "
                                    f"({', '.join(sorted(users)[:5])})")
        self.store.commit(Txn().delete(key).delete(keys.image_name(_scope(image), image.name)))
        self.files.remove(image.id)
        log.info("image %s (%s) deleted", image.id, image.name)

    def users(self, image_id: str) -> builtins.list[str]:
        """Names of the instances (of any project) that use an image."""
        return [r.value["name"] for r in self.store.list(keys.all_instances())
                if "/instances/" in r.key and Instance(**r.value).image == image_id]

    # ---------------------------------------------------------------- seed

    def register_image_dir(self, directory: str | Path) -> Image:
        """Register the operator's image built in `directory` (its image.json
        names the files) as a public image; again only if its files changed."""
        directory = Path(directory).resolve()
        meta = json.loads((directory / "image.json").read_text())
        files = {"disk": directory / meta["disk"]}
        if meta.get("kernel"):
            files.update(kernel=directory / meta["kernel"], initrd=directory / meta["initrd"])
        checksums = {part: _sha256(path) for part, path in files.items()}
        image_id = str(uuid.uuid5(_SEED_NAMESPACE, meta["name"]))
        existing = self.store.get(keys.image(image_id))
        if existing is not None and all(
                existing.value.get(f"{part}_sha256") == sha for part, sha in checksums.items()) \
                and all(self.files.path(image_id, part).exists() for part in files):
            return Image(**existing.value)
        disk_format = meta.get("disk_format", "qcow2")
        facts = check_disk(files["disk"], disk_format)
        stored = self.files.import_files(image_id, files)
        image = Image(
            id=image_id, name=meta["name"], os=meta.get("os", "linux"), project="",
            visibility="public", disk_format=disk_format, size_bytes=stored["disk"].size_bytes,
            virtual_size_bytes=facts.virtual_size_bytes, disk_sha256=stored["disk"].sha256,
            kernel_sha256=stored["kernel"].sha256 if "kernel" in stored else "",
            initrd_sha256=stored["initrd"].sha256 if "initrd" in stored else "",
            cmdline=meta.get("cmdline", ""), min_disk_gb=meta.get("min_disk_gb", 1),
            min_memory_mb=meta.get("min_ram_mb", 128))
        self.store.commit(Txn().put(keys.image(image.id), image.model_dump())
                          .put(keys.image_name("public", image.name), {"id": image.id}))
        return image


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()
