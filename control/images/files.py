"""The image files the control plane keeps, and the checks a disk must pass
before it is recorded.

Layout: `{root}/{image_id}/{disk,kernel,initrd}`, written once and never
changed; an upload is received in `{root}/.staging/` and renamed into place
only after every check passed, so a failed upload leaves nothing behind.
Tenants' images are private: files 0600, directories 0700 (the API's user
only; it serves them to compute agents). A root the operator made is left
with its mode (ansible's is 0750, for the service's group).

A tenant's disk file is hostile input. It is opened only with the format the
uploader declared (never probed and trusted), `qemu-img` runs under CPU and
memory limits (a crafted qcow2 can make it spin or allocate without end, as
Nova learned: CVE-2015-5162), and images with a backing file or an external
data file are refused (they would let a guest read files of the host).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from control.errors import InvalidArgument, NotFound

PARTS = ("disk", "kernel", "initrd")
DISK_FORMATS = ("raw", "qcow2")
CHUNK_BYTES = 1024 * 1024
FILE_MODE = 0o600
DIR_MODE = 0o700

# Limits for qemu-img on a tenant's file (Nova's: 1 GiB of address space, 30 s
# of CPU). Set by util-linux's prlimit, not a preexec_fn: Python code run
# between fork and exec in the threaded API server crashed the child now and then.
QEMU_IMG_ADDRESS_SPACE = 1024**3
QEMU_IMG_CPU_SECONDS = 30


@dataclass(frozen=True)
class StoredFile:
    size_bytes: int
    sha256: str


@dataclass(frozen=True)
class DiskFacts:
    virtual_size_bytes: int


def qemu_img_info(path: Path, disk_format: str | None) -> dict:
    """`qemu-img info` of a file, opened as `disk_format` (None: let qemu-img
    probe, which is only ever used to refuse a file, never to trust one)."""
    command = ["prlimit", f"--as={QEMU_IMG_ADDRESS_SPACE}", f"--cpu={QEMU_IMG_CPU_SECONDS}",
               "qemu-img", "info", "--output=json"]
    if disk_format:
        command += ["-f", disk_format]
    result = subprocess.run([*command, str(path)], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        detail = result.stderr.strip().splitlines()[-1:] or [f"qemu-img exit status {result.returncode}"]
        raise InvalidArgument(f"the disk is not a valid {disk_format or ''} image: {detail[0]}")
    return json.loads(result.stdout)


def check_disk(path: Path, disk_format: str) -> DiskFacts:
    """What an uploaded disk must be to boot here: exactly the declared format,
    with nothing outside itself. Raises InvalidArgument saying what is wrong."""
    if disk_format not in DISK_FORMATS:
        raise InvalidArgument(f"disk format must be one of {', '.join(DISK_FORMATS)}, "
                              f"not {disk_format!r}")
    info = qemu_img_info(path, disk_format)
    if info.get("format") != disk_format:
        raise InvalidArgument(f"the disk is not a {disk_format} image")
    if info.get("backing-filename") or info.get("full-backing-filename"):
        raise InvalidArgument("images with a backing file are refused")
    if (info.get("format-specific") or {}).get("data", {}).get("data-file"):
        raise InvalidArgument("qcow2 images with an external data file are refused")
    if disk_format == "raw":
        # A "raw" file that is really qcow2 (or another format) would be read
        # as that format by anything that probes it: refuse the mismatch.
        probed = qemu_img_info(path, None).get("format")
        if probed != "raw":
            raise InvalidArgument(f"the disk was declared raw but is a {probed} image")
    return DiskFacts(virtual_size_bytes=int(info["virtual-size"]))


class Upload:
    """The files of one image being received, with their sizes and checksums."""

    def __init__(self, directory: Path, max_bytes: int):
        self.directory = directory
        self.max_bytes = max_bytes
        self.sizes: dict[str, int] = {}
        self._hashes: dict[str, hashlib._Hash] = {}

    def write(self, part: str, chunk: bytes) -> None:
        if part not in PARTS:
            raise InvalidArgument(f"an image file is one of {', '.join(PARTS)}, not {part!r}")
        size = self.sizes.get(part, 0) + len(chunk)
        if size > self.max_bytes:
            raise InvalidArgument(f"the image's {part} is over the limit of {self.max_bytes} bytes")
        fd = os.open(self.directory / part, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
        with os.fdopen(fd, "ab") as f:
            f.write(chunk)
        self.sizes[part] = size
        self._hashes.setdefault(part, hashlib.sha256()).update(chunk)

    def parts(self) -> set[str]:
        return set(self.sizes)

    def stored(self, part: str) -> StoredFile:
        return StoredFile(size_bytes=self.sizes[part], sha256=self._hashes[part].hexdigest())

    def path(self, part: str) -> Path:
        return self.directory / part


class ImageStore:
    def __init__(self, root: str | Path, max_bytes: int):
        self.root = Path(root)
        self.max_bytes = max_bytes

    def begin(self) -> Upload:
        if not self.root.exists():
            self.root.parent.mkdir(parents=True, exist_ok=True)
            self.root.mkdir(mode=DIR_MODE, exist_ok=True)
            self.root.chmod(DIR_MODE)  # whatever the umask
        staging = self.root / ".staging"
        staging.mkdir(mode=DIR_MODE, exist_ok=True)
        staging.chmod(DIR_MODE)
        # mkdtemp makes it 0700: it becomes the image's directory.
        return Upload(Path(tempfile.mkdtemp(dir=staging)), self.max_bytes)

    def abandon(self, upload: Upload) -> None:
        shutil.rmtree(upload.directory, ignore_errors=True)

    def keep(self, upload: Upload, image_id: str) -> None:
        """Move a checked upload into place as the files of `image_id`."""
        target = self._directory(image_id)
        if target.exists():
            shutil.rmtree(target)
        upload.directory.rename(target)

    def import_files(self, image_id: str, files: dict[str, Path]) -> dict[str, StoredFile]:
        """Copy an operator's image files into the store (seed images)."""
        upload = self.begin()
        try:
            for part, source in files.items():
                with open(source, "rb") as f:
                    while chunk := f.read(CHUNK_BYTES):
                        upload.write(part, chunk)
            self.keep(upload, image_id)
        except BaseException:
            self.abandon(upload)
            raise
        return {part: upload.stored(part) for part in files}

    def read(self, image_id: str, part: str) -> Iterator[bytes]:
        if part not in PARTS:
            raise InvalidArgument(f"an image file is one of {', '.join(PARTS)}, not {part!r}")
        path = self._directory(image_id) / part
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            raise NotFound(f"image {image_id} has no {part}") from None
        with f:
            while chunk := f.read(CHUNK_BYTES):
                yield chunk

    def path(self, image_id: str, part: str) -> Path:
        return self._directory(image_id) / part

    def remove(self, image_id: str) -> None:
        shutil.rmtree(self._directory(image_id), ignore_errors=True)

    def _directory(self, image_id: str) -> Path:
        if not image_id or "/" in image_id or image_id.startswith("."):
            raise NotFound(f"image {image_id!r} not found")
        return self.root / image_id

