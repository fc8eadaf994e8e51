"""The control plane's image store keeps tenants' uploads private: files 0600 in
directories only the API's user opens, whatever the process's umask."""

import os

from control.images.files import ImageStore


def mode(path) -> int:
    return path.stat().st_mode & 0o777


def test_uploaded_and_imported_files_are_owner_only(tmp_path):
    source = tmp_path / "disk.raw"
    source.write_bytes(b"\0" * 4096)
    root = tmp_path / "images"
    store = ImageStore(root, max_bytes=1 << 20)
    old = os.umask(0)
    try:
        store.import_files("img-1", {"disk": source, "kernel": source})
        upload = store.begin()
        upload.write("disk", b"private bytes")
        assert mode(upload.path("disk")) == 0o600
        store.keep(upload, "img-2")
    finally:
        os.umask(old)
    assert mode(root) == 0o700 and mode(root / ".staging") == 0o700
    for image in ("img-1", "img-2"):
        assert mode(root / image) == 0o700
        for f in (root / image).iterdir():
            assert mode(f) == 0o600, f
    assert b"".join(store.read("img-2", "disk")) == b"private bytes"


def test_an_existing_root_keeps_the_operators_mode(tmp_path):
    # e.g. ansible's 0750 for the service's group: the images below it stay private.
    root = tmp_path / "images"
    root.mkdir(mode=0o750)
    ImageStore(root, max_bytes=1 << 20).begin()
    assert mode(root) == 0o750 and mode(root / ".staging") == 0o700
