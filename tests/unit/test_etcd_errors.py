"""How the store translates etcd's gRPC errors (control/store/etcd.py): a
failure of the store is Unavailable (callers retry it, with their request
ids), never a raw gRPC error that the API would answer as INTERNAL."""

import grpc
import pytest

from control.errors import OutOfRange, Unavailable
from control.store.etcd import _etcd_errors


class EtcdError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str):
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


@pytest.mark.parametrize("code, details", [
    (grpc.StatusCode.UNKNOWN, "Stream removed"),  # a member killed mid-call
    (grpc.StatusCode.CANCELLED, "Channel closed"),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, "etcdserver: too many requests"),
])
def test_a_failing_store_is_unavailable(code, details):
    with pytest.raises(Unavailable, match=code.name) as raised:
        with _etcd_errors():
            raise EtcdError(code, details)
    assert details in str(raised.value)


def test_a_full_store_says_so():
    with pytest.raises(Unavailable, match="NOSPACE"):
        with _etcd_errors():
            raise EtcdError(grpc.StatusCode.RESOURCE_EXHAUSTED, "etcdserver: mvcc: database space exceeded")


def test_a_compacted_revision_is_out_of_range():
    with pytest.raises(OutOfRange):
        with _etcd_errors():
            raise EtcdError(grpc.StatusCode.OUT_OF_RANGE,
                            "etcdserver: mvcc: required revision has been compacted")
