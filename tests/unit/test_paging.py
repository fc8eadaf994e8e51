"""The one pagination helper every list RPC uses (control/api/paging.py)."""

import pytest

from control.api.paging import MAX_PAGE_SIZE, MAX_TOKEN_LENGTH, page
from control.errors import InvalidArgument


def key(item):
    return (item,)


def pages(items, size, listing="L"):
    got, token = [], ""
    while True:
        chunk, token = page(listing, items, key, size, token)
        got.append(chunk)
        if not token:
            return got


def test_zero_is_everything_and_sizes_split_in_key_order():
    items = ["c", "a", "b", "e", "d"]
    assert page("L", items, key, 0, "") == (["a", "b", "c", "d", "e"], "")
    assert pages(items, 2) == [["a", "b"], ["c", "d"], ["e"]]
    assert pages(items, 5) == [["a", "b", "c", "d", "e"]]
    assert pages([], 3) == [[]]


def test_page_size_is_capped():
    items = list(range(MAX_PAGE_SIZE + 5))
    first, token = page("L", items, lambda i: (i,), 10**6, "")
    assert len(first) == MAX_PAGE_SIZE and token
    rest, token = page("L", items, lambda i: (i,), 10**6, token)
    assert rest == list(range(MAX_PAGE_SIZE, MAX_PAGE_SIZE + 5)) and token == ""


def test_token_is_a_position_not_an_offset():
    items = ["a", "b", "c", "d"]
    first, token = page("L", items, key, 2, "")
    # "a" (seen) and "c" (not yet) go away, "bb" and "0" arrive.
    after, _ = page("L", ["b", "bb", "d", "0"], key, 10, token)
    assert first == ["a", "b"] and after == ["bb", "d"]


def test_bad_tokens_and_sizes_are_invalid_argument():
    _, token = page("L", ["a", "b"], key, 1, "")
    for bad in ("!!", "e30", "W10", token + "x"):
        with pytest.raises(InvalidArgument):
            page("L", ["a", "b"], key, 1, bad)
    with pytest.raises(InvalidArgument, match="page_token"):
        page("Other", ["a", "b"], key, 1, token)
    with pytest.raises(InvalidArgument):  # a key of another shape
        page("L", [1.5, 2.5], lambda i: (i, "x"), 1, token)
    with pytest.raises(InvalidArgument):
        page("L", ["a"], key, -1, "")


def test_deeply_nested_or_huge_tokens_are_invalid_argument():
    import base64
    for raw in (b"[" * 100_000, b"[" * 3000, b'["L",' + b"[" * 2000 + b"]" * 2001):
        token = base64.urlsafe_b64encode(raw).decode().rstrip("=")
        with pytest.raises(InvalidArgument, match="invalid page_token"):
            page("L", ["a", "b"], key, 1, token)
    # Longer than any token the API hands out, even when it decodes fine.
    long = base64.urlsafe_b64encode(b'["L",["' + b"a" * 100_000 + b'"]]').decode()
    with pytest.raises(InvalidArgument, match="invalid page_token"):
        page("L", ["a", "b"], key, 1, long)
    # The bound leaves room for any key a list pages by: a timestamp, a 63-character name
    # and a UUID, even with every character escaped.
    items = [("2024-01-01T00:00:00.000000+00:00", "\u00e9" * 63 + str(n), "0" * 36)
             for n in range(2)]
    first, token = page("ListInstances" * 4, items, lambda i: i, 1, "")
    assert len(token) < MAX_TOKEN_LENGTH / 2
    assert page("ListInstances" * 4, items, lambda i: i, 1, token) == ([items[1]], "")
