"""The host's copy of the images its guests boot from.

Each file is fetched once from the control plane, checked against the SHA-256
the control plane recorded when the image was uploaded, and kept under that
checksum: a changed image is a new file, never a stale copy, and two images
with the same kernel share it. Instance disks are qcow2 overlays on these
files, so a cached file is never written after it is complete.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from compute_agent.driver import DriverError, ImageFiles
from compute_agent.keyed_locks import KeyedLocks

log = logging.getLogger(__name__)

SHA256 = re.compile(r"[0-9a-f]{64}")

# fetch(image_id, part) -> the file's bytes, in chunks
Fetch = Callable[[str, str], Iterable[bytes]]


class ImageCache:
    def __init__(self, directory: str | Path, fetch: Fetch):
        self.directory = Path(directory)
        self.fetch = fetch
        self._locks = KeyedLocks()

    def ensure(self, image_id: str, disk_format: str, cmdline: str, disk_sha256: str,
               kernel_sha256: str = "", initrd_sha256: str = "") -> ImageFiles:
        """The local files of an image, fetched and checked if not cached yet."""
        if bool(kernel_sha256) != bool(initrd_sha256):
            raise DriverError(f"image {image_id}: a kernel needs an initrd")
        return ImageFiles(
            id=image_id, cmdline=cmdline, disk_format=disk_format,
            disk_path=str(self.file(image_id, "disk", disk_sha256)),
            kernel_path=str(self.file(image_id, "kernel", kernel_sha256)) if kernel_sha256 else "",
            initrd_path=str(self.file(image_id, "initrd", initrd_sha256)) if initrd_sha256 else "")

    def file(self, image_id: str, part: str, sha256: str) -> Path:
        if not SHA256.fullmatch(sha256):
            raise DriverError(f"image {image_id}: {part} has no valid SHA-256 ({sha256!r})")
        path = self.directory / sha256
        if path.exists():
            return path
        with self._locks.hold(sha256):  # two spawns of one new image fetch it once
            if not path.exists():
                self._fetch(image_id, part, sha256, path)
        return path

    def _fetch(self, image_id: str, part: str, sha256: str, path: Path) -> None:
        # The driver prepares the directory (QEMU's group may pass through it);
        # made here, it is the owner's only.
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".part")
        started = time.monotonic()
        digest = hashlib.sha256()
        size = 0
        try:
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.fchmod(fd, 0o600)  # a .part left by a crash may have had another mode
            with os.fdopen(fd, "wb") as f:
                for chunk in self.fetch(image_id, part):
                    f.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
            if digest.hexdigest() != sha256:
                raise DriverError(f"image {image_id}: the fetched {part} does not match its "
                                  f"checksum (expected sha256 {sha256}, got {digest.hexdigest()})")
            # A tenant's private image stays 0600: libvirt hands it to QEMU's user
            # when a guest uses it (see libvirt_driver/driver.py); no one else reads it.
            partial.rename(path)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        log.info("image %s: fetched %s (%d bytes) in %.2fs, checksum verified", image_id, part,
                 size, time.monotonic() - started)
