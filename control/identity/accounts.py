"""Projects, users, roles and tokens.

- Passwords are stored as argon2 hashes.
- Tokens are 256-bit random strings; only their SHA-256 is stored, so a copy of
  etcd does not hand out working tokens. They expire and can be revoked.
- A user's role is per project: reader (look only), member (create and manage
  the project's resources), admin (the whole cloud).
- Validating a token re-reads the user's role, so taking a role away takes
  effect on the next call, not at the token's expiry.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time

from argon2 import PasswordHasher
from argon2.exceptions import VerificationError
from pydantic import BaseModel, Field

from control.errors import (
    AlreadyExists,
    Conflict,
    InvalidArgument,
    InvalidTransition,
    NotFound,
    Unauthenticated,
)
from control.models import validate_name
from control.store import keys
from control.store.etcd import CAS_ATTEMPTS, Record, Store, Txn

log = logging.getLogger(__name__)

ROLES = ("reader", "member", "admin")  # each may do what the ones before it may
ADMIN_PROJECT = "admin"
ADMIN_USER = "admin"
# Not a project's name: private image names are indexed under their project's
# name, public ones under "public" (keys.image_name).
RESERVED_PROJECT_NAMES = ("public",)
# How many names of each kind a refused project delete lists.
NAMES_SHOWN = 10


class Caller(BaseModel):
    """Who is calling: set by the auth interceptor for every RPC."""

    username: str
    project: str
    role: str
    token_hash: str = ""
    expires_at: float = 0.0

    def has_role(self, needed: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(needed)

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


class Project(BaseModel):
    """A project's record is written once, when it is created, and deleted
    with it: a write of something the project owns expects it unchanged
    (expect_project_into), and etcd's creation revision of it tells this
    project from an earlier one of the same name (the event streams use it)."""

    name: str
    description: str = ""
    created_at: float = Field(default_factory=time.time)


class User(BaseModel):
    name: str
    password_hash: str
    created_at: float = Field(default_factory=time.time)


def validate_role(role: str, project: str) -> str:
    if role not in ROLES:
        raise InvalidArgument(f"invalid role {role!r}: one of {', '.join(ROLES)}")
    # admin means the whole cloud, so it is only given in the admin project,
    # where granting it is plainly a decision about the cloud.
    if role == "admin" and project != ADMIN_PROJECT:
        raise InvalidArgument(f"the admin role is given in project {ADMIN_PROJECT!r} only "
                              f"(it covers the whole cloud)")
    return role


def expect_project_into(store: Store, txn: Txn, name: str) -> Record:
    """Make `txn`, a write of something project `name` owns, commit only while
    the project is the one there now, and return its record. A write racing
    with the project's delete then either commits first (and the delete, which
    compares what it checked, refuses or takes it along) or fails: nothing is
    written for a deleted project, nor passes to a later one of its name.
    NotFound if there is no such project."""
    record = store.get(keys.project(name)) if name and "/" not in name else None
    if record is None:
        raise NotFound(f"project {name!r} not found")
    txn.expect(record)
    return record


def check_project(store: Store, record: Record) -> None:
    """After a transaction that expected project `record` (expect_project_into)
    failed: NotFound if that project is gone (deleted, maybe created again
    since); otherwise nothing, the failure had another cause."""
    current = store.get(record.key)
    if current is None or current.mod_revision != record.mod_revision:
        raise NotFound(f"project {record.value['name']!r} not found (deleted meanwhile)")


def _names(found: list[str]) -> str:
    shown = ", ".join(sorted(found)[:NAMES_SHOWN])
    return shown + (f" and {len(found) - NAMES_SHOWN} more" if len(found) > NAMES_SHOWN else "")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# Free text kept in etcd is bounded (a record must stay well under etcd's request limit).
MAX_DESCRIPTION = 1024
MAX_PASSWORD = 1024


def generate_password() -> str:
    return secrets.token_urlsafe(15)


class Identity:
    def __init__(self, store: Store, token_ttl_s: float = 3600):
        self.store = store
        self.token_ttl_s = token_ttl_s
        self.hasher = PasswordHasher()
        self._decoy_hash = self.hasher.hash(secrets.token_urlsafe(16))

    # ---------------------------------------------------------------- projects

    def create_project(self, name: str, description: str = "") -> Project:
        validate_name(name, "project name")
        if name in RESERVED_PROJECT_NAMES:
            raise InvalidArgument(f"{name!r} is reserved: it cannot be a project's name")
        if len(description) > MAX_DESCRIPTION:
            raise InvalidArgument(f"a project description is at most {MAX_DESCRIPTION} characters")
        project = Project(name=name, description=description)
        if not self.store.put_if_absent(keys.project(name), project.model_dump()):
            raise AlreadyExists(f"project {name!r} already exists")
        log.info("project %s created", name)
        return project

    def project(self, name: str) -> Project:
        record = self.store.get(keys.project(name)) if name and "/" not in name else None
        if record is None:
            raise NotFound(f"project {name!r} not found")
        return Project(**record.value)

    def projects(self) -> list[Project]:
        return [Project(**r.value) for r in self.store.list(keys.projects())]

    def delete_project(self, name: str) -> None:
        """Delete a project and all it has: keypairs, server groups, request
        ids, usage history, quota, roles, flavor access, tokens. Refused
        (FAILED_PRECONDITION, naming them) while it owns what costs money,
        occupies hosts or holds files or addresses: instances, images, scaling
        groups, networks, floating IPs; those are deleted first, by their own
        calls, which release what they hold.

        The transaction compares what was checked (no instance, image name or
        scaling group under the project's keys), and every write of the
        project's things expects the project's record (expect_project_into):
        whichever of a racing create and this delete commits second fails, so
        nothing is left behind for a later project of the same name."""
        if name == ADMIN_PROJECT:
            self.project(name)
            raise InvalidTransition("the admin project cannot be deleted")
        for _ in range(CAS_ATTEMPTS):
            record = self.store.get(keys.project(name)) if name and "/" not in name else None
            if record is None:
                raise NotFound(f"project {name!r} not found")
            owned = self._owned(name)
            if owned:
                raise InvalidTransition(f"project {name!r} still owns {owned}: delete them first")
            txn = Txn().expect(record).delete(keys.project(name))
            txn.expect_empty(keys.instances(name)).expect_empty(keys.scaling_groups(name))
            txn.expect_empty(keys.networks(name)).expect_empty(keys.floating_ips(name))
            if name not in RESERVED_PROJECT_NAMES:  # (one made before the name was reserved)
                txn.expect_empty(keys.image_names(name))
            txn.delete(keys.quota_limits(name)).delete(keys.quota_usage(name))
            for role in self.store.list(keys.roles()):
                if role.key.endswith(f"/{name}"):
                    txn.delete(role.key)
            # Keypairs, server groups, request ids, actions, usage history: one
            # prefix (usage history alone can hold thousands of keys).
            txn.delete_prefix(keys.project_data(name))
            txn.delete_prefix(keys.scaling_group_indexes_of(name))
            for flavor in self.store.list(keys.flavors()):
                if name in flavor.value.get("projects", []):
                    txn.expect(flavor).put(flavor.key, {
                        **flavor.value,
                        "projects": [p for p in flavor.value["projects"] if p != name]})
            if self.store.commit(txn):
                break
            log.info("project %s changed while being deleted: checking again", name)
        else:
            raise Conflict(f"project {name!r} kept changing while being deleted; try again")
        self._revoke_where(lambda t: t["project"] == name)
        log.info("project %s deleted", name)

    def _owned(self, name: str) -> str:
        """What a project owns that its delete does not take along, in words
        ("" if nothing)."""
        found = {
            "instances": [r.value.get("name", "") for r in self.store.list(keys.instances(name))],
            "images": [r.value.get("name", r.key.rsplit("/", 1)[1])
                       for r in self.store.list(keys.images()) if r.value.get("project") == name],
            "scaling groups": [r.value.get("name", "")
                               for r in self.store.list(keys.scaling_groups(name))],
            # They hold cloud-wide VNIs and external addresses (control/network/).
            "networks": [r.value.get("name", "") for r in self.store.list(keys.networks(name))],
            "floating IPs": [r.value.get("address", "")
                             for r in self.store.list(keys.floating_ips(name))],
        }
        return "; ".join(f"{kind} {_names(names)}" for kind, names in found.items() if names)

    # ---------------------------------------------------------------- users and roles

    def create_user(self, name: str, password: str, project: str, role: str) -> tuple[User, str]:
        """Create a user with a role in a project. Returns the user and the
        password generated for it (empty when one was given)."""
        validate_name(name, "user name")
        if len(password) > MAX_PASSWORD:
            raise InvalidArgument(f"a password is at most {MAX_PASSWORD} characters")
        validate_role(role, project)
        self.project(project)
        generated = "" if password else generate_password()
        user = User(name=name, password_hash=self.hasher.hash(password or generated))
        txn = (Txn().expect_absent(keys.user(name)).put(keys.user(name), user.model_dump())
               .put(keys.role(name, project), {"role": role}))
        guard = expect_project_into(self.store, txn, project)
        if not self.store.commit(txn):
            check_project(self.store, guard)
            raise AlreadyExists(f"user {name!r} already exists")
        log.info("user %s created with role %s in %s", name, role, project)
        return user, generated

    def user(self, name: str) -> User:
        record = self.store.get(keys.user(name)) if name and "/" not in name else None
        if record is None:
            raise NotFound(f"user {name!r} not found")
        return User(**record.value)

    def users(self) -> list[User]:
        return [User(**r.value) for r in self.store.list(keys.users())]

    def roles_of(self, username: str) -> dict[str, str]:
        """project -> role"""
        return {r.key.rsplit("/", 1)[1]: r.value["role"]
                for r in self.store.list(keys.roles_of(username))}

    def delete_user(self, name: str) -> None:
        self.user(name)
        if name == ADMIN_USER:
            raise InvalidTransition("the admin user cannot be deleted")
        txn = Txn().delete(keys.user(name))
        for project in self.roles_of(name):
            txn.delete(keys.role(name, project))
        self.store.commit(txn)
        self.revoke_user(name)

    def add_role(self, username: str, project: str, role: str) -> None:
        validate_role(role, project)
        self.user(username)
        txn = Txn().put(keys.role(username, project), {"role": role})
        guard = expect_project_into(self.store, txn, project)
        if not self.store.commit(txn):  # (the project record is the only compare)
            check_project(self.store, guard)
            raise Conflict(f"project {project!r} changed meanwhile; try again")

    def remove_role(self, username: str, project: str) -> None:
        self.user(username)
        if self.store.get(keys.role(username, project)) is None:
            raise NotFound(f"user {username!r} has no role in project {project!r}")
        self.store.commit(Txn().delete(keys.role(username, project)))
        self._revoke_where(lambda t: t["username"] == username and t["project"] == project)

    # ---------------------------------------------------------------- tokens

    def login(self, username: str, password: str, project: str = "") -> tuple[str, Caller]:
        """A new token for `username` acting in `project`. Any failure is the
        same Unauthenticated, so it does not tell which part was wrong."""
        refused = Unauthenticated("wrong user name, password or project")
        try:
            password_hash = self.user(username).password_hash
        except (NotFound, InvalidArgument):
            # Hash anyway, so an unknown name takes as long as a wrong password
            # and the answer's timing does not tell which names exist.
            password_hash = self._decoy_hash
        try:
            self.hasher.verify(password_hash, password)
        except VerificationError:
            raise refused from None
        if password_hash is self._decoy_hash:
            raise refused
        roles = self.roles_of(username)
        if not project:
            if not roles:
                raise refused
            project = ADMIN_PROJECT if ADMIN_PROJECT in roles else sorted(roles)[0]
        if project not in roles:
            raise refused
        token = secrets.token_urlsafe(32)
        caller = Caller(username=username, project=project, role=roles[project],
                        token_hash=hash_token(token), expires_at=time.time() + self.token_ttl_s)
        # etcd forgets the token record when it expires; expires_at is still
        # checked on every call, since a lease may outlive its TTL by a little.
        self.store.put_expiring(keys.token(caller.token_hash), {
            "username": username, "project": project, "expires_at": caller.expires_at,
            "issued_at": time.time()}, self.token_ttl_s)
        return token, caller

    def authenticate(self, token: str) -> Caller:
        if not token:
            raise Unauthenticated("no token: log in first (cloudctl login)")
        token_hash = hash_token(token)
        record = self.store.get(keys.token(token_hash))
        if record is None:
            raise Unauthenticated("invalid or revoked token")
        if record.value["expires_at"] < time.time():
            self.store.commit(Txn().delete(record.key))
            raise Unauthenticated("token expired: log in again")
        username, project = record.value["username"], record.value["project"]
        role = self.store.get(keys.role(username, project))
        if role is None:
            raise Unauthenticated(f"user {username} no longer has a role in {project}")
        return Caller(username=username, project=project, role=role.value["role"],
                      token_hash=token_hash, expires_at=record.value["expires_at"])

    def revoke(self, token_hash: str) -> None:
        self.store.commit(Txn().delete(keys.token(token_hash)))

    def revoke_user(self, username: str) -> int:
        return self._revoke_where(lambda t: t["username"] == username)

    def _revoke_where(self, match) -> int:
        doomed = [r.key for r in self.store.list(keys.tokens()) if match(r.value)]
        if doomed:
            txn = Txn()
            for key in doomed:
                txn.delete(key)
            self.store.commit(txn)
        return len(doomed)

    # ---------------------------------------------------------------- bootstrap

    def bootstrap_admin(self, password: str) -> None:
        """Make sure the admin project and the admin user exist (safe on every start).
        An existing admin keeps its password."""
        if self.store.get(keys.project(ADMIN_PROJECT)) is None:
            self.store.put_if_absent(keys.project(ADMIN_PROJECT), Project(
                name=ADMIN_PROJECT, description="cloud administrators").model_dump())
        if self.store.get(keys.user(ADMIN_USER)) is None:
            user = User(name=ADMIN_USER, password_hash=self.hasher.hash(password))
            self.store.commit(Txn().expect_absent(keys.user(ADMIN_USER))
                              .put(keys.user(ADMIN_USER), user.model_dump())
                              .put(keys.role(ADMIN_USER, ADMIN_PROJECT), {"role": "admin"}))
            log.info("bootstrap: admin user created")
