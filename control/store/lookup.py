"""Finding a project's record by id or name: the one lookup every resource with
a name index (instances, networks, security groups) shares."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from control.errors import NotFound


def is_uuid(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


def by_id_or_name(store: Any, id_or_name: str, record_key: Callable[[str], str],
                  name_key: Callable[[str], str], what: str) -> Any:
    """The record at record_key(id), the id being `id_or_name` itself when it is
    a UUID, else what name_key(name) indexes. NOT_FOUND ("<what> '<ref>' not
    found") when there is none: keys are per project, so another project's
    resource is not found either."""
    if id_or_name and "/" not in id_or_name:
        found_id = id_or_name
        if not is_uuid(id_or_name):
            index = store.get(name_key(id_or_name))
            found_id = index.value["id"] if index else ""
        if found_id:
            record = store.get(record_key(found_id))
            if record is not None:
                return record
    raise NotFound(f"{what} {id_or_name!r} not found")
