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

from control import keys
from control.errors import (
    AlreadyExists,
    InvalidArgument,
    InvalidTransition,
    NotFound,
    Unauthenticated,
)
from control.models import validate_name
from control.store import Store, Txn

log = logging.getLogger(__name__)

ROLES = ("reader", "member", "admin")  # each may do what the ones before it may
ADMIN_PROJECT = "admin"
ADMIN_USER = "admin"


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
        record = self.store.get(keys.project(name)) if name and "/" not in name else None
        if record is None:
            raise NotFound(f"project {name!r} not found")
        if name == ADMIN_PROJECT:
            raise InvalidTransition("the admin project cannot be deleted")
        instances = self.store.list(keys.instances(name))
        if instances:
            raise InvalidTransition(f"project {name!r} still has {len(instances)} instances")
        # Nothing of it may pass to a later project of the same name: roles,
        # quota, request ids, private flavor access.
        txn = Txn().expect(record).delete(keys.project(name))
        txn.delete(keys.quota_limits(name)).delete(keys.quota_usage(name))
        for role in self.store.list(keys.roles()):
            if role.key.endswith(f"/{name}"):
                txn.delete(role.key)
        txn.delete_prefix(keys.project_data(name))  # usage history can hold thousands of keys
        for flavor in self.store.list(keys.flavors()):
            if name in flavor.value.get("projects", []):
                txn.expect(flavor).put(flavor.key, {
                    **flavor.value, "projects": [p for p in flavor.value["projects"] if p != name]})
        if not self.store.commit(txn):
            raise InvalidTransition(f"project {name!r} changed while being deleted; try again")
        self._revoke_where(lambda t: t["project"] == name)
        log.info("project %s deleted", name)

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
        if not self.store.commit(txn):
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
        self.project(project)
        self.store.put(keys.role(username, project), {"role": role})

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
