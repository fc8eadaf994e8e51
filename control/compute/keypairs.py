"""SSH keypairs of a project: public keys only. A generated keypair's private
key is returned once, to the caller, and never stored."""

from __future__ import annotations

import base64
import hashlib
import time

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from pydantic import BaseModel, Field

from control.errors import AlreadyExists, InvalidArgument, NotFound
from control.identity.accounts import check_project, expect_project_into
from control.models import validate_name
from control.store import keys
from control.store.etcd import Store, Txn


class Keypair(BaseModel):
    name: str
    public_key: str
    fingerprint: str
    type: str
    created_at: float = Field(default_factory=time.time)


def parse_public_key(text: str) -> tuple[str, str, str]:
    """(normalized key, its type, its SHA256 fingerprint), or InvalidArgument."""
    parts = text.strip().split()
    if len(parts) < 2:
        raise InvalidArgument("not an OpenSSH public key (expected: TYPE BASE64 [COMMENT])")
    try:
        serialization.load_ssh_public_key(" ".join(parts[:2]).encode())
        blob = base64.b64decode(parts[1], validate=True)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise InvalidArgument(f"not a valid OpenSSH public key: {exc}") from None
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return " ".join(parts[:2]), parts[0], f"SHA256:{digest}"


class Keypairs:
    def __init__(self, store: Store):
        self.store = store

    def _save(self, project: str, name: str, public_key: str) -> Keypair:
        validate_name(name, "keypair name")
        normalized, key_type, fingerprint = parse_public_key(public_key)
        keypair = Keypair(name=name, public_key=normalized, fingerprint=fingerprint, type=key_type)
        key = keys.keypair(project, name)
        txn = Txn().expect_absent(key).put(key, keypair.model_dump())
        guard = expect_project_into(self.store, txn, project)
        if not self.store.commit(txn):
            check_project(self.store, guard)
            raise AlreadyExists(f"keypair {name!r} already exists")
        return keypair

    def create(self, project: str, name: str) -> tuple[Keypair, str]:
        """A new ed25519 keypair: stored public key, and the private key (once)."""
        validate_name(name, "keypair name")
        private = ed25519.Ed25519PrivateKey.generate()
        public = private.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                   serialization.PublicFormat.OpenSSH).decode()
        pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                    serialization.NoEncryption()).decode()
        return self._save(project, name, public), pem

    def import_(self, project: str, name: str, public_key: str) -> Keypair:
        return self._save(project, name, public_key)

    def get(self, project: str, name: str) -> Keypair:
        record = self.store.get(keys.keypair(project, name)) if name and "/" not in name else None
        if record is None:
            raise NotFound(f"keypair {name!r} not found")
        return Keypair(**record.value)

    def list(self, project: str) -> list[Keypair]:
        return [Keypair(**r.value) for r in self.store.list(keys.keypairs(project))]

    def delete(self, project: str, name: str) -> None:
        self.get(project, name)
        self.store.commit(Txn().delete(keys.keypair(project, name)))
