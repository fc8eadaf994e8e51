"""The one pagination helper every list RPC uses (control/api/paging.py)."""

import pytest

from control.api.paging import MAX_PAGE_SIZE, page
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
