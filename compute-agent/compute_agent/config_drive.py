"""The NoCloud config drive: a small ISO 9660 image, volume label `cidata`, with
`meta-data` (instance id, hostname, SSH keys) and `user-data` (as given).

This is cloud-init's NoCloud format, so a guest running cloud-init reads it as
well as the test image's own init does. It is built with pycdlib (pure Python)
rather than genisoimage/xorriso, which a host may not have. Joliet and Rock
Ridge are both written so the names `meta-data` and `user-data` survive
whichever extension the guest's kernel reads (plain ISO 9660 allows neither
lowercase nor '-').
"""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

import pycdlib

LABEL = "cidata"
# One RFC 1123 label: what the control plane derives from the display name.
HOSTNAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def meta_data(instance_id: str, hostname: str, public_keys: list[str] | tuple[str, ...]) -> bytes:
    """NoCloud meta-data as YAML. Every value is written as a double-quoted
    (JSON) string, which YAML reads back exactly, whatever it contains."""
    lines = [f"instance-id: {json.dumps(instance_id)}"]
    if hostname:
        lines.append(f"local-hostname: {json.dumps(hostname)}")
    if public_keys:
        lines.append("public-keys:")
        lines += [f"  - {json.dumps(key)}" for key in public_keys]
    return ("\n".join(lines) + "\n").encode()


def validate(hostname: str, public_keys: list[str] | tuple[str, ...]) -> None:
    """ValueError for what the guest could not use safely: a hostname that is
    not one RFC 1123 label, or a key spanning lines (authorized_keys is one key
    a line, so a newline would smuggle in a second key)."""
    if hostname and not HOSTNAME.fullmatch(hostname):
        raise ValueError(f"invalid hostname {hostname!r}")
    for key in public_keys:
        if not key.strip() or any(c in key for c in "\r\n\0"):
            raise ValueError("a public key must be one non-empty line")


def build(path: Path, instance_id: str, hostname: str,
          public_keys: list[str] | tuple[str, ...], user_data: bytes) -> None:
    """Write the config drive to `path` (atomically: a temp file, then rename,
    so a spawn retried after a crash never attaches a half-written image)."""
    validate(hostname, public_keys)
    files = {"meta-data": meta_data(instance_id, hostname, public_keys), "user-data": user_data}
    iso = pycdlib.PyCdlib()
    # Interchange level 3 allows the long ISO 9660 names below; the label is
    # lowercase, as cloud-init's NoCloud source looks for it (it matches either case).
    iso.new(interchange_level=3, vol_ident=LABEL, joliet=3, rock_ridge="1.09")
    for name, data in files.items():
        iso.add_fp(io.BytesIO(data), len(data), f"/{name.upper().replace('-', '_')}.;1",
                   rr_name=name, joliet_path=f"/{name}")
    tmp = path.with_name(path.name + ".part")
    try:
        # Owner-only: user data may hold secrets. libvirt's dynamic ownership
        # hands the file to the qemu user when the domain starts.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            iso.write_fp(out)
        os.replace(tmp, path)
    finally:
        iso.close()
        tmp.unlink(missing_ok=True)


def read(path: Path) -> tuple[str, dict[str, bytes]]:
    """A config drive's volume label and files (by their Rock Ridge names):
    for tests, and for looking at a host's drive by hand."""
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        files = {}
        for name in ("meta-data", "user-data"):
            buffer = io.BytesIO()
            iso.get_file_from_iso_fp(buffer, rr_path=f"/{name}")
            files[name] = buffer.getvalue()
        return iso.pvd.volume_identifier.decode().rstrip(), files
    finally:
        iso.close()
