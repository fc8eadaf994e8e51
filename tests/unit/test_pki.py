"""The cloud's CA (control/pki.py): chains verify, keys are owner-only, names
and roles are where the TLS checks look, and re-running never replaces the CA."""

import stat

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from control import pki


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def san(cert: x509.Certificate) -> tuple[set[str], set[str]]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return ({str(n) for n in ext.get_values_for_type(x509.DNSName)},
            {str(a) for a in ext.get_values_for_type(x509.IPAddress)})


def test_init_makes_a_ca_and_the_control_planes_certificate(tmp_path):
    ca, control = pki.init(tmp_path / "pki", dns=["api.example"], ips=["10.0.0.5"])
    ca_cert, cert = pki.load_cert(ca.cert), pki.load_cert(control.cert)
    cert.verify_directly_issued_by(ca_cert)
    assert ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert pki.identity_of(control.cert.read_bytes()) == pki.Identity(pki.CONTROL_NAME, "control")
    assert san(cert) == ({pki.CONTROL_NAME, "localhost", "api.example"}, {"127.0.0.1", "10.0.0.5"})
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert {ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH} <= set(usages)
    for key in (ca.key, control.key):
        assert mode(key) == 0o600
    assert mode(tmp_path / "pki") == 0o700


def test_a_hosts_certificate_names_the_host(tmp_path):
    pki.init(tmp_path)
    paths = pki.issue_host(tmp_path, "node-7.example", ips=["10.0.0.7"])
    cert = pki.load_cert(paths.cert)
    cert.verify_directly_issued_by(pki.load_cert(pki.ca_paths(tmp_path).cert))
    assert pki.identity_of(paths.cert.read_bytes()) == pki.Identity("node-7.example", "host")
    assert san(cert) == ({"node-7.example"}, {"10.0.0.7"})
    assert mode(paths.key) == 0o600
    assert paths == pki.host_paths(tmp_path, "node-7.example")


def test_running_again_keeps_the_ca_and_good_certificates(tmp_path):
    ca, control = pki.init(tmp_path)
    host = pki.issue_host(tmp_path, "h1")
    before = {p: p.read_bytes() for p in (ca.cert, ca.key, control.cert, control.key, host.cert)}
    assert pki.main(["init", "--dir", str(tmp_path)]) == 0
    assert pki.main(["issue-host", "h1", "--dir", str(tmp_path)]) == 0
    assert pki.main(["init", "--dir", str(tmp_path), "--force"]) == 0  # never the CA
    after = {p: p.read_bytes() for p in before}
    assert after[ca.cert] == before[ca.cert] and after[ca.key] == before[ca.key]
    assert after[host.cert] == before[host.cert]
    assert after[control.cert] != before[control.cert]  # --force: issued again, same CA
    pki.load_cert(control.cert).verify_directly_issued_by(pki.load_cert(ca.cert))
    # a name asked for that the certificate lacks: issued again, with it
    pki.issue_host(tmp_path, "h1", ips=["10.1.1.1"])
    assert san(pki.load_cert(host.cert)) == ({"h1"}, {"10.1.1.1"})


def test_a_certificate_of_another_ca_is_replaced(tmp_path):
    pki.init(tmp_path / "a")
    pki.init(tmp_path / "b")
    foreign = pki.issue_host(tmp_path / "b", "h1")
    mine = pki.host_paths(tmp_path / "a", "h1")
    mine.cert.parent.mkdir(parents=True)
    mine.cert.write_bytes(foreign.cert.read_bytes())
    mine.key.write_bytes(foreign.key.read_bytes())
    pki.issue_host(tmp_path / "a", "h1")
    pki.load_cert(mine.cert).verify_directly_issued_by(pki.load_cert(pki.ca_paths(tmp_path / "a").cert))


def test_refusals(tmp_path, capsys):
    with pytest.raises(pki.PkiError, match="no CA"):
        pki.issue_host(tmp_path, "h1")
    pki.init(tmp_path)
    for bad in ("", "-x", "a/b", "a b", pki.CONTROL_NAME, "x" * 300):
        with pytest.raises(pki.PkiError):
            pki.issue_host(tmp_path, bad)
    assert pki.main(["issue-host", "bad/name", "--dir", str(tmp_path)]) == 1
    assert "not a host name" in capsys.readouterr().err
    pki.ca_paths(tmp_path).key.unlink()
    with pytest.raises(pki.PkiError, match="half a CA"):
        pki.init_ca(tmp_path)


def test_the_command_line_says_whether_it_issued(tmp_path, capsys):
    """Ansible runs init/issue-host every time and reads the first word: a
    control host added later gets its address into the certificate."""
    def run(*args: str) -> str:
        assert pki.main([*args, "--dir", str(tmp_path)]) == 0
        return capsys.readouterr().out.split()[0]

    assert run("init", "--ip", "10.0.0.5") == "issued"
    assert run("init", "--ip", "10.0.0.5") == "kept"
    assert run("init", "--ip", "10.0.0.5", "--ip", "10.0.0.6") == "issued"  # a second control host
    assert san(pki.load_cert(pki.control_paths(tmp_path).cert))[1] == {"127.0.0.1", "10.0.0.5",
                                                                       "10.0.0.6"}
    assert run("issue-host", "h1") == "issued"
    assert run("issue-host", "h1") == "kept"


def test_etcd_has_a_ca_of_its_own(tmp_path, capsys):
    """etcd trusts only the etcd CA: its members' and the control plane's etcd
    client certificates come from it, a compute host's (the cloud CA's) does not."""
    ca, _ = pki.init(tmp_path)
    host = pki.issue_host(tmp_path, "node1")
    member = pki.issue_etcd_member(tmp_path, "ctl1", ips=["10.0.0.11"])
    client = pki.issue_etcd_client(tmp_path)
    etcd_ca = pki.load_cert(pki.etcd_ca_paths(tmp_path).cert)
    assert etcd_ca.subject != pki.load_cert(ca.cert).subject
    for paths in (member, client):
        pki.load_cert(paths.cert).verify_directly_issued_by(etcd_ca)
        with pytest.raises(ValueError):  # not the cloud CA's: no use to the agents' TLS
            pki.load_cert(paths.cert).verify_directly_issued_by(pki.load_cert(ca.cert))
        assert mode(paths.key) == 0o600
    with pytest.raises(ValueError):  # a compute host's certificate is no key to etcd
        pki.load_cert(host.cert).verify_directly_issued_by(etcd_ca)
    assert mode(pki.etcd_ca_paths(tmp_path).key) == 0o600

    cert = pki.load_cert(member.cert)
    assert "OU=etcd" in cert.subject.rfc4514_string()
    assert san(cert) == ({"ctl1"}, {"10.0.0.11"})
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    cert = pki.load_cert(client.cert)
    assert pki.identity_of(client.cert.read_bytes()) == pki.Identity(pki.CONTROL_NAME, "control")
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.CLIENT_AUTH]  # it serves nothing


def test_etcd_certificates_are_kept_and_issued_like_the_others(tmp_path, capsys):
    def run(*args: str) -> str:
        assert pki.main([*args, "--dir", str(tmp_path)]) == 0
        return capsys.readouterr().out.split()[0]

    assert run("issue-etcd", "ctl1", "--ip", "10.0.0.11") == "issued"  # makes the etcd CA
    etcd_ca = pki.etcd_ca_paths(tmp_path).cert.read_bytes()
    assert run("issue-etcd", "ctl1", "--ip", "10.0.0.11") == "kept"
    assert run("issue-etcd-client") == "issued"
    assert run("issue-etcd-client") == "kept"
    assert run("issue-etcd", "ctl1", "--ip", "10.0.0.11", "--ip", "10.0.1.11") == "issued"
    assert run("issue-etcd-client", "--force") == "issued"
    assert pki.etcd_ca_paths(tmp_path).cert.read_bytes() == etcd_ca  # never replaced
    assert san(pki.load_cert(pki.etcd_member_paths(tmp_path, "ctl1").cert))[1] == {
        "10.0.0.11", "10.0.1.11"}
    assert pki.main(["show", "--dir", str(tmp_path)]) == 0
    listed = capsys.readouterr().out
    assert "etcd-ca.crt" in listed and "etcd-client.crt" in listed and "ctl1.crt" in listed
    assert pki.main(["issue-etcd", "bad/name", "--dir", str(tmp_path)]) == 1
    assert "not a host name" in capsys.readouterr().err
