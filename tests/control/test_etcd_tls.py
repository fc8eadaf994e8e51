"""The control plane's etcd client over mutual TLS (control/store/etcd.py, the etcd CA
of control/pki.py), against a real etcd started with the flags of the Ansible
unit (https client and peer URLs, --client-cert-auth, the etcd CA trusted):
the Store works with the control plane's etcd certificate; with no client
certificate, in plain text, or with a certificate of the cloud's CA (a compute
host's, or the control plane's own for the agents) etcd refuses it; and the
Store refuses an etcd whose certificate is not the etcd CA's."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import grpc
import pyetcd
import pytest

from control import pki
from control.config import ControlConfig
from control.errors import Unavailable
from control.store.etcd import EtcdTls, Store
from localcloud.processes import free_port, wait_until


def etcd_command(pki_dir: Path, data_dir: Path, client: int, peer: int) -> list[str]:
    """ansible/roles/service/templates/etcd.service.j2's ExecStart, one member on loopback."""
    member = pki.etcd_member_paths(pki_dir, "etcd-test")
    ca = pki.etcd_ca_paths(pki_dir).cert
    return ["etcd", "--name", "etcd-test", "--data-dir", str(data_dir),
            "--listen-client-urls", f"https://127.0.0.1:{client}",
            "--advertise-client-urls", f"https://127.0.0.1:{client}",
            "--listen-peer-urls", f"https://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls", f"https://127.0.0.1:{peer}",
            "--initial-cluster", f"etcd-test=https://127.0.0.1:{peer}",
            "--initial-cluster-token", "smallcloud",
            "--client-cert-auth", "--trusted-ca-file", str(ca),
            "--cert-file", str(member.cert), "--key-file", str(member.key),
            "--peer-client-cert-auth", "--peer-trusted-ca-file", str(ca),
            "--peer-cert-file", str(member.cert), "--peer-key-file", str(member.key),
            "--logger", "zap", "--log-level", "warn"]


class Etcd:
    def __init__(self, pki_dir: Path, endpoint: str, log: Path):
        self.pki_dir = pki_dir
        self.endpoint = endpoint
        self.log = log

    def tls(self, cert: pki.CertPaths, ca: Path | None = None) -> EtcdTls:
        return EtcdTls(str(ca or pki.etcd_ca_paths(self.pki_dir).cert), str(cert.cert),
                       str(cert.key))

    def store(self, tls: EtcdTls | None) -> Store:
        return Store([self.endpoint], timeout_s=1, tls=tls)


@pytest.fixture(scope="module")
def etcd(tmp_path_factory) -> Etcd:
    root = tmp_path_factory.mktemp("etcd-tls")
    pki_dir = root / "pki"
    pki.init(pki_dir)
    pki.issue_host(pki_dir, "node1", ips=["127.0.0.1"])
    pki.issue_etcd_member(pki_dir, "etcd-test", ips=["127.0.0.1"])
    client_paths = pki.issue_etcd_client(pki_dir)
    client, peer = free_port(), free_port()
    with open(root / "etcd.log", "wb") as log:
        proc = subprocess.Popen(etcd_command(pki_dir, root / "data", client, peer),
                                stdout=log, stderr=subprocess.STDOUT)
    cluster = Etcd(pki_dir, f"https://127.0.0.1:{client}", root / "etcd.log")
    try:
        store = cluster.store(cluster.tls(client_paths))
        wait_until(lambda: store.revision() > 0, 15, "etcd over TLS")
        store.close()
        yield cluster
    finally:
        proc.terminate()
        proc.wait(10)


def test_the_store_works_over_mutual_tls(etcd):
    config = ControlConfig(etcd_endpoints=[etcd.endpoint],
                           etcd_ca_file=str(pki.etcd_ca_paths(etcd.pki_dir).cert),
                           etcd_cert_file=str(pki.etcd_client_paths(etcd.pki_dir).cert),
                           etcd_key_file=str(pki.etcd_client_paths(etcd.pki_dir).key))
    store = Store(config.etcd_endpoints, config.etcd_timeout_s, EtcdTls.of(config))
    try:
        store.put("/tls/a", {"n": 1})
        assert store.put_if_absent("/tls/b", {"n": 2})  # a transaction
        assert [r.value for r in store.list("/tls/")] == [{"n": 1}, {"n": 2}]
        feed = store.watch_changes(["/tls/"], store.revision())
        store.put("/tls/a", {"n": 3})
        batch = feed.get(timeout=5)
        feed.close()
        assert batch and batch[0].value == {"n": 3}
    finally:
        store.close()


def refused(store: Store) -> bool:
    start = time.monotonic()
    try:
        with pytest.raises(Unavailable):
            store.get("/tls/a")
    finally:
        store.close()
    return time.monotonic() - start < 5


def test_etcd_refuses_a_client_without_the_etcd_cas_certificate(etcd):
    # no client certificate at all (the server's is trusted)
    ca = pki.etcd_ca_paths(etcd.pki_dir).cert.read_bytes()
    host, _, port = etcd.endpoint.removeprefix("https://").rpartition(":")
    bare = pyetcd.MultiEndpointEtcd3Client(endpoints=[pyetcd.Endpoint(
        host, int(port), secure=True, creds=grpc.ssl_channel_credentials(ca))], timeout=1)
    with pytest.raises(pyetcd.exceptions.Etcd3Exception):
        bare.get("/tls/a")
    bare.close()
    # plain text
    assert refused(Store([etcd.endpoint.removeprefix("https://")], timeout_s=1))
    # a compute host's certificate: the cloud's CA signed it, not the etcd CA
    assert refused(etcd.store(etcd.tls(pki.host_paths(etcd.pki_dir, "node1"))))
    # nor the control plane's certificate for the agents
    assert refused(etcd.store(etcd.tls(pki.control_paths(etcd.pki_dir))))
    # the right client certificate still works, on the same endpoint
    good = etcd.store(etcd.tls(pki.etcd_client_paths(etcd.pki_dir)))
    assert good.revision() > 0
    good.close()
    # and etcd says why it refused each (so none was refused for another reason)
    log = etcd.log.read_text()
    for reason in ("client didn't provide a certificate",
                   "first record does not look like a TLS handshake",
                   "failed to verify client certificate: x509: certificate signed by unknown "
                   "authority"):
        assert reason in log


def test_the_store_refuses_an_etcd_it_does_not_trust(etcd):
    """The client checks the server too: trusting the cloud's CA instead of the
    etcd CA, the member's certificate does not verify."""
    tls = etcd.tls(pki.etcd_client_paths(etcd.pki_dir), ca=pki.ca_paths(etcd.pki_dir).cert)
    assert refused(etcd.store(tls))


def test_tls_settings_go_together():
    with pytest.raises(ValueError, match="go together"):
        ControlConfig(etcd_ca_file="/ca.crt")
    with pytest.raises(ValueError, match="https, but"):
        ControlConfig(etcd_endpoints=["https://10.0.0.1:2379"])
    with pytest.raises(ValueError, match="plain text"):
        ControlConfig(etcd_endpoints=["http://10.0.0.1:2379"], etcd_ca_file="a",
                      etcd_cert_file="b", etcd_key_file="c")
