"""The store contract (tests/store_contract.py) against the real Store over a
real etcd: one member of its own on free ports in a temporary directory,
started the way localcloud starts it, for this module only."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import pytest

from control.store.etcd import Store
from localcloud.cloud import LocalCloud, Ports
from tests.store_contract import Backend, StoreContract


@pytest.fixture(scope="module")
def etcd_store():
    root = Path(tempfile.mkdtemp(prefix="smallcloud-store-contract-"))
    cloud = LocalCloud(root, ports=Ports.free())
    try:
        cloud.start_etcd()  # answers 0.3 s after it starts (measured)
        store = Store(cloud.etcd_endpoints, timeout_s=3)
        yield store
        store.close()
    finally:
        cloud.procs.stop("etcd")
        shutil.rmtree(root, ignore_errors=True)


class TestEtcdStore(StoreContract):
    @pytest.fixture
    def backend(self, etcd_store):
        # Measured here: a lease's keys go 0.1-0.5 s after its TTL (etcd checks
        # expiry every 0.5 s); a watch delivers a change within milliseconds.
        return Backend(etcd_store, time.sleep, expiry_lag_s=2.0, delivery_s=5.0)
