"""What a guest gets on its config drive besides its keys: the user data
(cloud-init's user-data: a script or #cloud-config) and its hostname.

User data is kept under its own key (keys.user_data), not in the instance
record: instances are listed often, and user data may be 64 KiB. It is written
in the transaction that records the instance and deleted in the one that
removes it. Values are JSON, so the bytes are stored zlib-compressed and
base64-encoded: a scale-out writes one copy per instance in one etcd
transaction, which must stay under etcd's request limit (1.5 MiB by default).
"""

from __future__ import annotations

import base64
import re
import zlib

from control.errors import InvalidArgument
from control.store import keys
from control.store.etcd import Store, Txn

MAX_USER_DATA_BYTES = 65536  # as Nova: 64 KiB of user data
# What the user data of one scale-out may take in its transaction, all copies
# together, leaving room under etcd's 1.5 MiB for the instance records.
SCALE_OUT_BUDGET = 1024 * 1024


def validate_user_data(user_data: bytes) -> None:
    if len(user_data) > MAX_USER_DATA_BYTES:
        raise InvalidArgument(f"user data is {len(user_data)} bytes; at most {MAX_USER_DATA_BYTES} "
                              f"({MAX_USER_DATA_BYTES // 1024} KiB) are allowed")


def encode_user_data(user_data: bytes) -> dict[str, str]:
    """The stored form; empty (nothing is stored) for empty user data."""
    if not user_data:
        return {}
    return {"zlib_base64": base64.b64encode(zlib.compress(user_data, 9)).decode()}


def put_user_data_into(txn: Txn, project: str, instance_id: str, encoded: dict[str, str]) -> None:
    """Add the user data (from `encode_user_data`) to the transaction recording the instance."""
    if encoded:
        txn.put(keys.user_data(project, instance_id), encoded)


def delete_user_data_into(txn: Txn, project: str, instance_id: str) -> None:
    """Add the user data's removal to the transaction removing the instance
    (deleting an absent key is fine: the instance may have none)."""
    txn.delete(keys.user_data(project, instance_id))


def load_user_data(store: Store, project: str, instance_id: str) -> bytes:
    record = store.get(keys.user_data(project, instance_id))
    if record is None:
        return b""
    return zlib.decompress(base64.b64decode(record.value["zlib_base64"]))


def hostname(display_name: str, instance_id: str) -> str:
    """An RFC 1123 host name (one label) from the display name: lowercase,
    anything but letters, digits and '-' becomes '-', no '-' at either end,
    at most 63 characters; 'instance-<short id>' when nothing is left."""
    label = re.sub(r"[^a-z0-9-]", "-", display_name.lower())[:63].strip("-")
    return label or f"instance-{instance_id[:8]}"
