"""The stream guard's shares and idle sweep (control/api/streams.py), without a server."""

import pytest

from control.api.streams import StreamGuard, StreamLimits, StreamOwner, peer_address
from control.errors import ResourceExhausted

LIMITS = StreamLimits(total=6, per_project=3, per_user=2, anonymous=2, per_address=1,
                      idle_timeout_s=10)


def open_(guard, owner, waits_on_client=False, cancelled=None):
    def cancel():
        if cancelled is not None:
            cancelled.append(owner)
    return guard.open(owner, "/x.Y/Z", cancel, waits_on_client)


def test_each_share_is_capped_and_says_which():
    guard = StreamGuard(LIMITS)
    alice = StreamOwner("ipv4:10.0.0.1", "alice", "a")
    open_(guard, alice)
    open_(guard, alice)
    with pytest.raises(ResourceExhausted, match="user 'alice' has 2 streams open"):
        open_(guard, alice)
    open_(guard, StreamOwner("ipv4:10.0.0.1", "bob", "a"))
    with pytest.raises(ResourceExhausted, match="project 'a' has 3 streams open"):
        open_(guard, StreamOwner("ipv4:10.0.0.1", "carol", "a"))
    anon = open_(guard, StreamOwner("ipv4:10.0.0.9"))
    with pytest.raises(ResourceExhausted, match="ipv4:10.0.0.9 has 1 streams without a login"):
        open_(guard, StreamOwner("ipv4:10.0.0.9"))
    open_(guard, StreamOwner("ipv4:10.0.0.8"))
    with pytest.raises(ResourceExhausted, match="2 streams without a login"):
        open_(guard, StreamOwner("ipv4:10.0.0.7"))
    open_(guard, StreamOwner("ipv4:10.0.0.1", "dave", "d"))  # the sixth
    with pytest.raises(ResourceExhausted, match="this API server has 6 streams open"):
        open_(guard, StreamOwner("ipv4:10.0.0.1", "erin", "e"))
    guard.close(anon)
    guard.close(anon)  # twice is harmless
    assert guard.count("total") == 5 and guard.count("anonymous") == 1
    open_(guard, StreamOwner("ipv4:10.0.0.1", "erin", "e"))


def test_sweep_cancels_only_streams_idle_on_their_client():
    guard = StreamGuard(LIMITS)
    cancelled: list = []
    upload = open_(guard, StreamOwner("a", "u1", "p"), waits_on_client=True, cancelled=cancelled)
    watch = open_(guard, StreamOwner("a", "u2", "p"), waits_on_client=False, cancelled=cancelled)
    start = upload.last_activity
    assert guard.sweep(start + 5) == 0
    upload.touch(start + 5)
    assert guard.sweep(start + 14) == 0  # touched 9 s before
    assert guard.sweep(start + 16) == 1
    assert cancelled == [upload.owner]
    assert guard.count("total") == 1  # the watch, never idle-swept
    guard.close(watch)
    assert guard.count("total") == 0


def test_peer_address_drops_the_port():
    assert peer_address("ipv4:127.0.0.1:53422") == "ipv4:127.0.0.1"
    assert peer_address("ipv6:[::1]:53422") == "ipv6:[::1]"
    assert peer_address("unix:/run/x.sock") == "unix:/run/x.sock"
