"""Pagination of list RPCs, the same way for every list.

A list is sorted by a key that is unique per item (its usual order plus a
tie-breaker), and a page token names the key of the last item sent: the next
page starts after it. Items added or removed between pages never make a page
repeat or skip one of the others (unlike an offset). Tokens are opaque to
clients (URL-safe base64 of JSON) and carry which list they belong to, so a
token of another list, or a mangled one, is INVALID_ARGUMENT.

page_size 0 returns everything (what clients that do not paginate, like
cloudctl and the dashboard, get); a larger page_size than MAX_PAGE_SIZE is cut
to it.

A token longer than MAX_TOKEN_LENGTH is refused before it is decoded, and one
nested too deep for the JSON decoder (RecursionError) is INVALID_ARGUMENT like
any other mangled token: a client's bytes never become an INTERNAL error.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from control.errors import InvalidArgument

T = TypeVar("T")
Key = tuple[Any, ...]

MAX_PAGE_SIZE = 1000
# The tokens handed out are a list's name and one short key (names are at most
# 63 characters, ids are UUIDs): a few hundred characters. Far more than that,
# and still small enough that decoding one is cheap.
MAX_TOKEN_LENGTH = 4096


def _encode(listing: str, key: Key) -> str:
    raw = json.dumps([listing, list(key)], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(listing: str, token: str, sample: Key | None) -> Key:
    if len(token) > MAX_TOKEN_LENGTH:
        raise InvalidArgument("invalid page_token")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        name, key = json.loads(raw)
    except (ValueError, TypeError, binascii.Error, RecursionError):
        raise InvalidArgument("invalid page_token") from None
    if name != listing or not isinstance(key, list):
        raise InvalidArgument(f"invalid page_token (not one of {listing})")
    key = tuple(key)
    if sample is not None and (len(key) != len(sample) or any(
            not isinstance(k, type(s)) and not (isinstance(s, float) and isinstance(k, int))
            for k, s in zip(key, sample, strict=False))):
        raise InvalidArgument(f"invalid page_token (not one of {listing})")
    return key


def page(listing: str, items: Sequence[T], key: Callable[[T], Key], page_size: int,
         page_token: str) -> tuple[list[T], str]:
    """One page of `items` in `key` order: (the page, the next page's token, or
    "" on the last page). `listing` names the list (e.g. "ListInstances")."""
    if page_size < 0:
        raise InvalidArgument("page_size must be 0 (everything) or more")
    ordered = sorted(items, key=key)
    if page_token:
        after = _decode(listing, page_token, key(ordered[0]) if ordered else None)
        ordered = [i for i in ordered if key(i) > after]
    if page_size == 0:
        return ordered, ""
    size = min(page_size, MAX_PAGE_SIZE)
    if len(ordered) <= size:
        return ordered, ""
    chosen = ordered[:size]
    return chosen, _encode(listing, key(chosen[-1]))


def paged(listing: str, items: Sequence[T], key: Callable[[T], Key], request: Any,
          ) -> tuple[list[T], str]:
    """page() with the request's page_size and page_token."""
    return page(listing, items, key, request.page_size, request.page_token)
