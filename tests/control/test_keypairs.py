"""Keypairs: generated or imported public keys, per project; private keys are
returned once and never stored."""

import json
import os
import subprocess
import sys
import uuid

import grpc
import pytest
from cloudapi.v1 import compute_pb2 as pb
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from control.compute.keypairs import parse_public_key
from control.store import keys


def name() -> str:
    return f"kp-{uuid.uuid4().hex[:8]}"


def test_create_returns_the_private_key_once_and_stores_only_the_public(api, store):
    kp = name()
    created = api.keypairs.CreateKeypair(pb.CreateKeypairRequest(name=kp))
    assert created.private_key.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert created.keypair.public_key.startswith("ssh-ed25519 ")
    assert created.keypair.fingerprint.startswith("SHA256:")
    private = serialization.load_ssh_private_key(created.private_key.encode(), None)
    public = private.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                               serialization.PublicFormat.OpenSSH).decode()
    assert public == created.keypair.public_key
    secret_part = created.private_key.splitlines()[1]
    assert all(secret_part not in json.dumps(r.value) for r in store.list(keys.PREFIX + "/"))
    assert kp in [k.name for k in api.keypairs.ListKeypairs(pb.ListKeypairsRequest()).keypairs]
    api.keypairs.DeleteKeypair(pb.DeleteKeypairRequest(name=kp))
    assert kp not in [k.name for k in api.keypairs.ListKeypairs(pb.ListKeypairsRequest()).keypairs]


@pytest.mark.parametrize("make", [
    lambda: ed25519.Ed25519PrivateKey.generate(),
    lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
])
def test_import_and_fingerprint(api, make):
    public = make().public_key().public_bytes(serialization.Encoding.OpenSSH,
                                              serialization.PublicFormat.OpenSSH).decode()
    kp = name()
    imported = api.keypairs.ImportKeypair(pb.ImportKeypairRequest(name=kp,
                                                                  public_key=public + " me@laptop\n"))
    assert imported.public_key == public
    assert imported.fingerprint == parse_public_key(public)[2]
    with pytest.raises(grpc.RpcError) as info:
        api.keypairs.ImportKeypair(pb.ImportKeypairRequest(name=kp, public_key=public))
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
    api.keypairs.DeleteKeypair(pb.DeleteKeypairRequest(name=kp))


@pytest.mark.parametrize("garbage", ["", "ssh-ed25519", "ssh-ed25519 !!!notbase64", "hello world"])
def test_bad_public_keys_are_refused(api, garbage):
    with pytest.raises(grpc.RpcError) as info:
        api.keypairs.ImportKeypair(pb.ImportKeypairRequest(name=name(), public_key=garbage))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_keypairs_are_per_project_and_unknown_ones_not_found(api, admin):
    kp = name()
    api.keypairs.CreateKeypair(pb.CreateKeypairRequest(name=kp))
    assert kp not in [k.name for k in admin.keypairs.ListKeypairs(pb.ListKeypairsRequest()).keypairs]
    with pytest.raises(grpc.RpcError) as info:
        admin.keypairs.DeleteKeypair(pb.DeleteKeypairRequest(name=kp))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as info:
        api.instances.CreateInstance(pb.CreateInstanceRequest(name="k1", flavor="tiny", key_name="nope"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND and "keypair" in info.value.details()
    assert "k1" not in [i.name for i in api.instances.ListInstances(pb.ListInstancesRequest()).instances]
    created = api.instances.CreateInstance(pb.CreateInstanceRequest(name="k2", flavor="tiny", key_name=kp))
    assert created.key_name == kp
    api.instances.DeleteInstance(pb.DeleteInstanceRequest(id_or_name=created.id))
    assert api.wait_gone(created.id)
    api.keypairs.DeleteKeypair(pb.DeleteKeypairRequest(name=kp))


def test_cli_keypairs(cloud, tmp_path):
    env = {**os.environ, "CLOUD_ENDPOINT": cloud.endpoint, "CLOUD_CONFIG": str(tmp_path / "c.toml"),
           "CLOUD_USERNAME": "demo", "CLOUD_PASSWORD": cloud.password("demo"), "COLUMNS": "200"}

    def run(*args):
        result = subprocess.run([sys.executable, "-m", "cloudclient.cli", *args], env=env,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout

    kp, key_file = name(), tmp_path / "id_ed25519"
    run("keypair", "create", kp, "--private-key-file", str(key_file))
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    assert key_file.read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    public = serialization.load_ssh_private_key(key_file.read_bytes(), None).public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    (tmp_path / "id.pub").write_text(public)
    other = name()
    run("keypair", "import", other, "--public-key-file", str(tmp_path / "id.pub"))
    listed = {k["name"]: k["fingerprint"] for k in json.loads(run("keypair", "list", "-o", "json"))}
    assert listed[kp] == listed[other]
    run("keypair", "delete", kp)
    run("keypair", "delete", other)
