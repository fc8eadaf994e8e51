"""The cloud's own small certificate authority, for mutual TLS between the
control plane and the compute agents, and etcd's, for mutual TLS to and
between the etcd members.

    python -m control.pki init --dir D [--dns api.example --ip 10.0.0.5]
    python -m control.pki issue-host NAME --dir D [--ip 10.0.0.7 --dns node7.example]
    python -m control.pki issue-etcd NAME --dir D --ip 10.0.0.11
    python -m control.pki issue-etcd-client --dir D
    python -m control.pki show --dir D

`init` creates the CA (an ECDSA P-256 key, which gRPC's BoringSSL takes) and
the control plane's certificate; `issue-host` a host's. Both are idempotent: an
existing CA is never overwritten, and a certificate is only issued again when
it is missing, no longer signed by the CA, lacks a name asked for, or expires
within RENEW_BEFORE_DAYS. Private keys are written owner-only (0600).

Identity: a certificate's subject is CN=<name>, OU=<role>, O=smallcloud, and
its subjectAltName holds the name as a DNS name (plus any --dns/--ip). The role
is `control` for the control plane (CN = CONTROL_NAME) and `host` for a compute
host (CN = the host's name, as it registers). Both may act as client and server
(extendedKeyUsage clientAuth + serverAuth): the control plane serves the agents'
HostService and calls their ComputeAgent; a host does the reverse.

etcd has a CA of its own (created by the first issue-etcd*), so that a compute
host's certificate, which the cloud's CA signed, is no key to etcd: etcd trusts
only the etcd CA, for its clients and its peers, and the etcd CA signs only the
members (OU `etcd`, server + client, for peer TLS) and the control plane's etcd
client certificate (CN = CONTROL_NAME, OU `control`, clientAuth only). etcd then
needs no users or RBAC: every certificate it accepts is the control plane's or a
member's.

Layout of D:
    ca.crt  ca.key                  the CA (ca.key stays on the control plane)
    control.crt  control.key        the control plane (API server and workers)
    hosts/NAME.crt  hosts/NAME.key  one per compute host (copied to that host)
    etcd-ca.crt  etcd-ca.key        the etcd CA (etcd-ca.key stays on the control plane)
    etcd-client.crt  etcd-client.key  the control plane's certificate as etcd's client
    etcd/NAME.crt  etcd/NAME.key    one per etcd member (copied to that host)
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CONTROL_NAME = "smallcloud-control"
ORGANIZATION = "smallcloud"
ROLE_CONTROL = "control"
ROLE_HOST = "host"
ROLE_ETCD = "etcd"
CA_DAYS = 3650
LEAF_DAYS = 825
RENEW_BEFORE_DAYS = 30
# A host name as it appears in a certificate and in DNS: letters, digits, '-' and '.'.
_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")


class PkiError(Exception):
    """A request the CA refuses (bad name, no CA yet, ...)."""


@dataclass(frozen=True)
class CertPaths:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Identity:
    """Who a peer's certificate says it is."""

    name: str   # its common name
    role: str   # ROLE_CONTROL or ROLE_HOST (the subject's OU); "" if neither


def _pair(directory: str | Path, stem: str) -> CertPaths:
    d = Path(directory)
    return CertPaths(d / f"{stem}.crt", d / f"{stem}.key")


def ca_paths(directory: str | Path) -> CertPaths:
    return _pair(directory, "ca")


def control_paths(directory: str | Path) -> CertPaths:
    return _pair(directory, "control")


def host_paths(directory: str | Path, name: str) -> CertPaths:
    return _pair(Path(directory) / "hosts", name)


def etcd_ca_paths(directory: str | Path) -> CertPaths:
    return _pair(directory, "etcd-ca")


def etcd_client_paths(directory: str | Path) -> CertPaths:
    return _pair(directory, "etcd-client")


def etcd_member_paths(directory: str | Path, name: str) -> CertPaths:
    return _pair(Path(directory) / "etcd", name)


def validate_host_name(name: str) -> str:
    if not _NAME.match(name or ""):
        raise PkiError(f"{name!r} is not a host name (letters, digits, '-' and '.')")
    if name.lower() == CONTROL_NAME:
        raise PkiError(f"{CONTROL_NAME!r} is the control plane's name, not a host's")
    return name


# ------------------------------------------------------------------ files

def _write_private(path: Path, data: bytes) -> None:
    """Owner-only from the start (never world-readable, even briefly), then renamed in place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _write_public(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{path}: not an EC key")
    return key


def load_cert(path: str | Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(Path(path).read_bytes())


# ------------------------------------------------------------------ the CA

def init_ca(directory: str | Path) -> CertPaths:
    """The CA of `directory`, created if there is none. Never overwrites one."""
    return _init_ca(ca_paths(directory), f"{ORGANIZATION} CA")


def init_etcd_ca(directory: str | Path) -> CertPaths:
    """The etcd CA of `directory`, created if there is none. Never overwrites one."""
    return _init_ca(etcd_ca_paths(directory), f"{ORGANIZATION} etcd CA")


def _init_ca(paths: CertPaths, common_name: str) -> CertPaths:
    directory = paths.cert.parent
    if paths.cert.exists() or paths.key.exists():
        if not (paths.cert.exists() and paths.key.exists()):
            raise PkiError(f"{directory}: half a CA (one of {paths.cert.name}, {paths.key.name} "
                           "is missing); restore it or remove both to start over")
        return paths
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    _write_private(paths.key, _key_pem(key))  # the key first: a cert alone is "half a CA"
    _write_public(paths.cert, cert.public_bytes(serialization.Encoding.PEM))
    return paths


_SERVER_AND_CLIENT = (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)


def _needs_issue(paths: CertPaths, ca: x509.Certificate, dns: list[str],
                 ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address]) -> bool:
    if not (paths.cert.exists() and paths.key.exists()):
        return True
    try:
        cert = load_cert(paths.cert)
        key = _load_key(paths.key)
    except (ValueError, PkiError):
        return True
    if cert.issuer != ca.subject or key.public_key().public_numbers() != \
            cert.public_key().public_numbers():  # type: ignore[union-attr]
        return True
    try:
        cert.verify_directly_issued_by(ca)
    except (InvalidSignature, ValueError, TypeError):  # another CA of the same name
        return True
    remaining = cert.not_valid_after_utc - dt.datetime.now(dt.UTC)
    if remaining < dt.timedelta(days=RENEW_BEFORE_DAYS):
        return True
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    have_dns = {n.lower() for n in san.get_values_for_type(x509.DNSName)}
    have_ips = set(san.get_values_for_type(x509.IPAddress))
    return not ({d.lower() for d in dns} <= have_dns and set(ips) <= have_ips)


def _issue(ca_files: CertPaths, paths: CertPaths, name: str, role: str, dns: list[str],
           ips: list[str], force: bool,
           usages: tuple[x509.ObjectIdentifier, ...] = _SERVER_AND_CLIENT) -> CertPaths:
    if not (ca_files.cert.exists() and ca_files.key.exists()):
        directory = ca_files.cert.parent
        raise PkiError(f"{directory} holds no CA: run `python -m control.pki init --dir {directory}`")
    ca_cert, ca_key = load_cert(ca_files.cert), _load_key(ca_files.key)
    all_dns = list(dict.fromkeys([name, *dns]))
    addresses = [ipaddress.ip_address(ip) for ip in dict.fromkeys(ips)]
    if not force and not _needs_issue(paths, ca_cert, all_dns, addresses):
        return paths
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
                         x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
                         x509.NameAttribute(NameOID.COMMON_NAME, name)])
    alt_names: list[x509.GeneralName] = [x509.DNSName(d) for d in all_dns]
    alt_names += [x509.IPAddress(a) for a in addresses]
    cert = (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(min(now + dt.timedelta(days=LEAF_DAYS), ca_cert.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
            .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    _write_private(paths.key, _key_pem(key))
    _write_public(paths.cert, cert.public_bytes(serialization.Encoding.PEM))
    return paths


def issue_control(directory: str | Path, dns: list[str] | None = None, ips: list[str] | None = None,
                  force: bool = False) -> CertPaths:
    """The control plane's certificate: CN=CONTROL_NAME, and as names also
    localhost, 127.0.0.1 and whatever names the agents reach it by."""
    return _issue(ca_paths(directory), control_paths(directory), CONTROL_NAME, ROLE_CONTROL,
                  ["localhost", *(dns or [])], ["127.0.0.1", *(ips or [])], force)


def issue_host(directory: str | Path, name: str, dns: list[str] | None = None,
               ips: list[str] | None = None, force: bool = False) -> CertPaths:
    """Host `name`'s certificate: CN and DNS name = the name it registers with."""
    validate_host_name(name)
    return _issue(ca_paths(directory), host_paths(directory, name), name, ROLE_HOST, dns or [],
                  ips or [], force)


def issue_etcd_member(directory: str | Path, name: str, dns: list[str] | None = None,
                      ips: list[str] | None = None, force: bool = False) -> CertPaths:
    """etcd member `name`'s certificate from the etcd CA (made if none): it
    serves etcd's clients and peers, and is the member's client to its peers.
    Names: `name` and the addresses the member is reached at (--ip)."""
    validate_host_name(name)
    return _issue(init_etcd_ca(directory), etcd_member_paths(directory, name), name, ROLE_ETCD,
                  dns or [], ips or [], force)


def issue_etcd_client(directory: str | Path, force: bool = False) -> CertPaths:
    """The control plane's certificate as etcd's client, from the etcd CA (made
    if none): CN = CONTROL_NAME, clientAuth only (it serves nothing)."""
    return _issue(init_etcd_ca(directory), etcd_client_paths(directory), CONTROL_NAME,
                  ROLE_CONTROL, [], [], force, usages=(ExtendedKeyUsageOID.CLIENT_AUTH,))


def init(directory: str | Path, dns: list[str] | None = None,
         ips: list[str] | None = None) -> tuple[CertPaths, CertPaths]:
    """The CA and the control plane's certificate (each kept if it exists)."""
    return init_ca(directory), issue_control(directory, dns, ips)


# ------------------------------------------------------------------ peers

def identity_of(pem: bytes) -> Identity:
    """A verified peer certificate's (PEM) name and role."""
    cert = x509.load_pem_x509_certificate(pem)
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    ou = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    role = str(ou[0].value) if ou else ""
    return Identity(name=str(cn[0].value) if cn else "",
                    role=role if role in (ROLE_CONTROL, ROLE_HOST) else "")


def describe(path: Path) -> str:
    cert = load_cert(path)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = [str(n.value) for n in san]
    return (f"{path.name}: {cert.subject.rfc4514_string()}; names {', '.join(names)}; "
            f"expires {cert.not_valid_after_utc:%Y-%m-%d}")


# ------------------------------------------------------------------ command line

def _read_or_empty(path: Path) -> bytes:
    return path.read_bytes() if path.exists() else b""


def _verdict(before: bytes, cert: Path) -> str:
    return "kept" if before and cert.read_bytes() == before else "issued"


def show(d: Path) -> None:
    cas = {ca_paths(d).cert, etcd_ca_paths(d).cert}
    for path in [ca_paths(d).cert, control_paths(d).cert, *sorted((d / "hosts").glob("*.crt")),
                 etcd_ca_paths(d).cert, etcd_client_paths(d).cert,
                 *sorted((d / "etcd").glob("*.crt"))]:
        if path.exists():
            print(describe(path) if path not in cas else
                  f"{path.name}: {load_cert(path).subject.rfc4514_string()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m control.pki",
        description="The cloud's CA for mutual TLS between the control plane and the agents, "
                    "and etcd's CA for etcd's members and its one client, the control plane.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_init = sub.add_parser("init", help="create the CA and the control plane's certificate "
                                         "(kept if they exist)")
    p_host = sub.add_parser("issue-host", help="issue (or keep) a compute host's certificate")
    p_host.add_argument("name", help="the host's name, as its agent registers (host_name)")
    p_etcd = sub.add_parser("issue-etcd", help="issue (or keep) an etcd member's certificate "
                                               "(from the etcd CA, made if none)")
    p_etcd.add_argument("name", help="the member's name (etcd --name)")
    p_etcd_client = sub.add_parser("issue-etcd-client",
                                   help="issue (or keep) the control plane's etcd client "
                                        "certificate (from the etcd CA, made if none)")
    p_show = sub.add_parser("show", help="list the certificates")
    for p in (p_init, p_host, p_etcd):
        p.add_argument("--dns", action="append", default=[], help="another DNS name (repeat)")
        p.add_argument("--ip", action="append", default=[], help="an IP address (repeat)")
        p.add_argument("--force", action="store_true",
                       help="issue the certificate again even if the one there is still good "
                            "(never the CA)")
    p_etcd_client.add_argument("--force", action="store_true",
                               help="issue the certificate again (never the CA)")
    for p in (p_init, p_host, p_etcd, p_etcd_client, p_show):
        p.add_argument("--dir", required=True, help="the PKI directory (e.g. .cloud/pki)")
    args = parser.parse_args(argv)
    try:
        # The first word says whether a certificate was (re)issued: "issued" or
        # "kept" (Ansible's changed_when reads it; a new one needs a restart).
        if args.command == "init":
            init_ca(args.dir)
            before = _read_or_empty(control_paths(args.dir).cert)
            paths = issue_control(args.dir, args.dns, args.ip, args.force)
            print(f"{_verdict(before, paths.cert)} control plane: {paths.cert} {paths.key} "
                  f"(CA {ca_paths(args.dir).cert})")
        elif args.command == "issue-host":
            before = _read_or_empty(host_paths(args.dir, args.name).cert)
            paths = issue_host(args.dir, args.name, args.dns, args.ip, args.force)
            print(f"{_verdict(before, paths.cert)} host {args.name}: {paths.cert} {paths.key} "
                  f"(CA {ca_paths(args.dir).cert})")
        elif args.command == "issue-etcd":
            before = _read_or_empty(etcd_member_paths(args.dir, args.name).cert)
            paths = issue_etcd_member(args.dir, args.name, args.dns, args.ip, args.force)
            print(f"{_verdict(before, paths.cert)} etcd member {args.name}: {paths.cert} "
                  f"{paths.key} (CA {etcd_ca_paths(args.dir).cert})")
        elif args.command == "issue-etcd-client":
            before = _read_or_empty(etcd_client_paths(args.dir).cert)
            paths = issue_etcd_client(args.dir, args.force)
            print(f"{_verdict(before, paths.cert)} etcd client: {paths.cert} {paths.key} "
                  f"(CA {etcd_ca_paths(args.dir).cert})")
        else:
            show(Path(args.dir))
    except (PkiError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
