"""Identity on real etcd: token expiry, revocation and what is stored."""

import re
import time
import uuid

import pytest

from control.errors import AlreadyExists, InvalidArgument, NotFound, Unauthenticated
from control.identity.accounts import Identity, hash_token
from control.store import keys
from tests.conftest import until


@pytest.fixture
def identity(store):
    return Identity(store, token_ttl_s=1)


@pytest.fixture
def member(identity):
    project = f"id-{uuid.uuid4().hex[:8]}"
    identity.create_project(project)
    identity.create_user(f"{project}-u", "secret-pw", project, "member")
    return project, f"{project}-u"


def test_token_expires_and_etcd_forgets_it(identity, store, member):
    project, user = member
    token, caller = identity.login(user, "secret-pw")
    assert caller.project == project and caller.role == "member"
    assert identity.authenticate(token).username == user
    logged_in = time.monotonic()

    def refused() -> bool:
        try:
            identity.authenticate(token)
        except Unauthenticated as exc:
            assert re.search("expired|invalid", str(exc)), exc
            return True
        return False
    until(refused, 5, "the token to expire")  # its TTL is 1 s
    assert time.monotonic() - logged_in >= 1  # not before its TTL
    # etcd forgets it (its lease runs out; measured ~1 s after the TTL).
    until(lambda: store.get(keys.token(hash_token(token))) is None, 10, "the token's record gone")


def test_only_hashes_are_stored(identity, store, member):
    _, user = member
    token, _ = identity.login(user, "secret-pw")
    assert store.get(keys.user(user)).value["password_hash"].startswith("$argon2")
    assert "secret-pw" not in str(store.get(keys.user(user)).value)
    assert all(token not in r.key and token not in str(r.value) for r in store.list(keys.tokens()))


def test_generated_password_works_and_is_not_returned_twice(identity, member):
    project, _ = member
    _, generated = identity.create_user(f"{project}-gen", "", project, "reader")
    assert len(generated) >= 16
    _, caller = identity.login(f"{project}-gen", generated)
    assert caller.role == "reader"
    _, given = identity.create_user(f"{project}-given", "pw", project, "reader")
    assert given == ""


def test_bad_identity_input(identity, member):
    project, user = member
    with pytest.raises(AlreadyExists):
        identity.create_user(user, "x", project, "member")
    with pytest.raises(InvalidArgument):
        identity.create_user("new-user", "x", project, "owner")
    with pytest.raises(NotFound):
        identity.create_user("new-user", "x", "no-such-project", "member")
    with pytest.raises(InvalidArgument):
        identity.create_project("bad name")


def test_a_project_with_a_long_history_can_be_deleted(identity, store, member):
    """Its data (300 usage records here) goes in one range delete: etcd refuses a
    transaction of more than 128 operations, and deleting key by key made every
    project with a long history undeletable (INVALID_ARGUMENT)."""
    project, _ = member
    for start in range(300):
        store.put(keys.usage_record(project, str(uuid.uuid4()), start), {"start_ms": start})
    identity.delete_project(project)
    assert store.list(keys.project_data(project)) == []
    with pytest.raises(NotFound):
        identity.project(project)
