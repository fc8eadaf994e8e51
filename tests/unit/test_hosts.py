"""Looking up hosts (control/placement/hosts.py): a host that is not registered
is NotFound (a clear answer to whoever asked), never a KeyError that the API
would answer as INTERNAL."""

import pytest

from control.errors import NotFound
from control.models import Resources
from control.placement.hosts import Hosts
from control.store.memory import MemoryStore


def test_a_registered_host_is_found():
    hosts = Hosts(MemoryStore())
    hosts.register("h1", "127.0.0.1:7000", Resources(vcpus=2, memory_mb=1024, disk_gb=10), "qemu", "QEMU")
    assert hosts.get("h1").address == "127.0.0.1:7000"
    assert hosts.find("h1").name == "h1"


@pytest.mark.parametrize("name", ["gone", "", "a/b"])
def test_a_host_not_registered_is_not_found(name):
    hosts = Hosts(MemoryStore())
    assert hosts.find(name) is None
    with pytest.raises(NotFound, match="not found"):
        hosts.get(name)
