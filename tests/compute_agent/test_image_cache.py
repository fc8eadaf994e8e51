"""The agent's image cache: one fetch per file, checked against its checksum,
kept under it; a mismatch keeps nothing."""

import hashlib
import threading
import time

import pytest
from compute_agent.driver import DriverError
from compute_agent.image_cache import ImageCache

DISK = b"disk bytes " * 1000
KERNEL = b"kernel"
INITRD = b"initrd"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Source:
    """Serves files by part and counts the fetches (slowly, to let threads race)."""

    def __init__(self, files):
        self.files = files
        self.fetches = 0

    def __call__(self, image_id, part):
        self.fetches += 1
        time.sleep(0.05)
        data = self.files[part]
        return [data[i:i + 1000] for i in range(0, len(data), 1000)]


def test_files_are_fetched_once_and_kept_under_their_checksum(tmp_path):
    source = Source({"disk": DISK, "kernel": KERNEL, "initrd": INITRD})
    cache = ImageCache(tmp_path, source)
    files = cache.ensure("img", "qcow2", "console=ttyS0", sha(DISK), sha(KERNEL), sha(INITRD))
    assert (files.disk_path, files.kernel_path) == (str(tmp_path / sha(DISK)), str(tmp_path / sha(KERNEL)))
    assert (tmp_path / sha(DISK)).read_bytes() == DISK
    # A tenant's private image: no other local user reads it (QEMU gets it through
    # libvirt's dynamic ownership, see libvirt_driver/driver.py).
    assert {oct(p.stat().st_mode & 0o777) for p in tmp_path.iterdir()} == {"0o600"}
    assert source.fetches == 3
    cache.ensure("img", "qcow2", "console=ttyS0", sha(DISK), sha(KERNEL), sha(INITRD))
    assert source.fetches == 3


def test_concurrent_spawns_of_a_new_image_fetch_it_once(tmp_path):
    source = Source({"disk": DISK})
    cache = ImageCache(tmp_path, source)
    threads = [threading.Thread(target=cache.ensure, args=("img", "raw", "", sha(DISK)))
               for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert source.fetches == 1


def test_a_mismatch_is_refused_and_leaves_nothing(tmp_path):
    cache = ImageCache(tmp_path, Source({"disk": DISK + b"tampered"}))
    with pytest.raises(DriverError, match="does not match its checksum"):
        cache.ensure("img", "qcow2", "", sha(DISK))
    assert list(tmp_path.iterdir()) == []


def test_a_disk_without_kernel_boots_itself_and_bad_checksums_are_refused(tmp_path):
    cache = ImageCache(tmp_path, Source({"disk": DISK}))
    files = cache.ensure("img", "raw", "", sha(DISK))
    assert (files.kernel_path, files.initrd_path, files.disk_format) == ("", "", "raw")
    with pytest.raises(DriverError, match="no valid SHA-256"):
        cache.ensure("img", "raw", "", "../../etc/passwd")
    with pytest.raises(DriverError, match="needs an initrd"):
        cache.ensure("img", "raw", "", sha(DISK), sha(KERNEL), "")


def test_files_and_a_directory_it_makes_are_owner_only(tmp_path):
    import os

    old = os.umask(0)  # whatever the process's umask, the modes are these
    try:
        cache = ImageCache(tmp_path / "cache", Source({"disk": DISK}))
        path = cache.file("img", "disk", sha(DISK))
    finally:
        os.umask(old)
    assert oct((tmp_path / "cache").stat().st_mode & 0o777) == "0o700"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    # A directory the host prepared (the libvirt driver's, group of QEMU) is left as it is.
    (tmp_path / "prepared").mkdir(mode=0o710)
    ImageCache(tmp_path / "prepared", Source({"disk": DISK})).file("img", "disk", sha(DISK))
    assert oct((tmp_path / "prepared").stat().st_mode & 0o777) == "0o710"
