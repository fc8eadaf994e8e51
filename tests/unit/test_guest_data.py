"""Hostnames derived from display names, and how user data is stored."""

import pytest

from control.compute import guest_data
from control.errors import InvalidArgument
from control.store import keys
from control.store.etcd import Txn

ID = "0f8fad5b-d9cb-469f-a165-70867728950e"


@pytest.mark.parametrize("name, expected", [
    ("web1", "web1"),
    ("Web_Server.prod", "web-server-prod"),
    ("-web-", "web"),
    ("__", "instance-0f8fad5b"),
    ("a" * 63, "a" * 63),
    ("a" * 62 + "_b", "a" * 62),   # trimmed to 63, then no '-' at the end
    ("web-1", "web-1"),
])
def test_hostname_is_one_rfc1123_label(name, expected):
    assert guest_data.hostname(name, ID) == expected


def test_user_data_up_to_64_kib_is_accepted():
    guest_data.validate_user_data(b"x" * 65536)
    with pytest.raises(InvalidArgument, match="65537 bytes"):
        guest_data.validate_user_data(b"x" * 65537)


def test_user_data_round_trips_compressed():
    data = b"#!/bin/sh\n" + b"echo hello\n" * 5000
    encoded = guest_data.encode_user_data(data)
    assert len(encoded["zlib_base64"]) < len(data) // 10
    txn = Txn()
    guest_data.put_user_data_into(txn, "demo", ID, encoded)
    assert list(txn.puts) == [keys.user_data("demo", ID)]

    class FakeStore:
        def get(self, key):
            from control.store.etcd import Record
            return Record(key, txn.puts[key], 1) if key in txn.puts else None

    assert guest_data.load_user_data(FakeStore(), "demo", ID) == data
    assert guest_data.load_user_data(FakeStore(), "other", ID) == b""


def test_empty_user_data_stores_nothing():
    txn = Txn()
    guest_data.put_user_data_into(txn, "demo", ID, guest_data.encode_user_data(b""))
    assert not txn.puts


def test_user_data_key_is_outside_the_instance_listing():
    assert not keys.user_data("demo", ID).startswith(keys.instances("demo"))
    assert keys.user_data("demo", ID).startswith(keys.project_data("demo"))
    assert "/instances/" not in keys.user_data("demo", ID)  # catalog scans for that


def test_spawn_goes_on_without_a_keypair_deleted_since_the_create(caplog):
    from types import SimpleNamespace

    from control.compute.keypairs import Keypairs
    from control.compute.tasks import InstanceWork
    from control.models import Instance, Resources

    class EmptyStore:
        def get(self, key):
            return None

    store = EmptyStore()
    work = InstanceWork(SimpleNamespace(store=store, keypairs=Keypairs(store)))  # type: ignore[arg-type]
    instance = Instance(id=ID, project="demo", name="Web_1", flavor="tiny", image="img",
                        resources=Resources(vcpus=1, memory_mb=128, disk_gb=1), key_name="gone")
    guest = work._guest_config(instance)
    assert (guest.hostname, guest.public_keys, guest.user_data) == ("web-1", [], b"")
    assert "keypair gone was deleted" in caplog.text
