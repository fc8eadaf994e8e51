"""Request size limits through the real API (control/api/limits.py, issue 15):
an oversized field is INVALID_ARGUMENT, naming the field and its limit, and
nothing is written. Reported: 20 imports and deletes of a 955 KB "ssh-rsa" key
grew etcd's database from 17 to 39 MiB with nothing left stored; an image's
`os` took 1 MB."""

import base64
import secrets
import struct
import uuid

import grpc
import pytest
from cloudapi.v1 import compute_pb2 as pb

from control.compute.keypairs import parse_public_key
from control.store import keys


def status(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), caught.value.details()


def huge_rsa_key(modulus_bytes: int = 716_000) -> str:
    """A well-formed OpenSSH ssh-rsa public key of about 955 KB: the control plane's
    parser (control.compute.keypairs) accepts it, as it did the reported one."""
    def string(b: bytes) -> bytes:
        return struct.pack(">I", len(b)) + b

    n = secrets.randbits(8 * modulus_bytes) | 1 | (1 << (8 * modulus_bytes - 1))
    blob = string(b"ssh-rsa") + string((65537).to_bytes(3, "big")) + \
        string(n.to_bytes(modulus_bytes + 1, "big"))
    return "ssh-rsa " + base64.b64encode(blob).decode()


def test_an_oversized_keypair_import_is_refused_and_nothing_is_written(api, store):
    key = huge_rsa_key()
    assert len(key) > 950_000 and parse_public_key(key)[1] == "ssh-rsa"
    name = f"kp-{uuid.uuid4().hex[:8]}"
    code, details = status(lambda: api.keypairs.ImportKeypair(
        pb.ImportKeypairRequest(name=name, public_key=key), timeout=30))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details == f"public_key is {len(key)} characters; at most 16384"
    assert store.get(keys.keypair("demo", name)) is None
    assert name not in [k.name for k in api.keypairs.ListKeypairs(pb.ListKeypairsRequest()).keypairs]


def test_an_oversized_image_os_is_refused_and_nothing_is_written(api, cloud, store):
    name = f"img-{uuid.uuid4().hex[:8]}"
    before = {p.name for p in (cloud.root / "images").iterdir()}
    upload = iter([pb.ImageUpload(info=pb.ImageInfo(name=name, disk_format="raw", os="x" * 1_000_000)),
                   pb.ImageUpload(data=pb.ImageData(part="disk", chunk=b"\0" * 512))])
    code, details = status(lambda: api.images.CreateImage(upload, timeout=30))
    assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT,
                               "info.os is 1000000 characters; at most 64")
    assert store.get(keys.image_name("demo", name)) is None
    assert name not in [i.name for i in api.images.ListImages(pb.ListImagesRequest()).images]
    staging = cloud.root / "images" / ".staging"
    assert {p.name for p in (cloud.root / "images").iterdir()} == before
    assert not staging.exists() or not any(staging.iterdir())


def test_an_oversized_image_chunk_is_refused(api, cloud, store):
    name = f"img-{uuid.uuid4().hex[:8]}"
    upload = iter([pb.ImageUpload(info=pb.ImageInfo(name=name, disk_format="raw")),
                   pb.ImageUpload(data=pb.ImageData(part="disk", chunk=b"\0" * (1024 * 1024 + 512)))])
    code, details = status(lambda: api.images.CreateImage(upload, timeout=30))
    assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT,
                               "data.chunk is 1049088 bytes; at most 1048576 (1 MiB)")
    assert store.get(keys.image_name("demo", name)) is None


@pytest.mark.parametrize("many", [False, True])
def test_oversized_user_data_is_refused_naming_the_field(api, store, many):
    name = f"ud-{uuid.uuid4().hex[:8]}"
    if many:
        call = lambda: api.instances.CreateInstances(pb.CreateInstancesRequest(  # noqa: E731
            name=name, flavor="tiny", count=2, user_data=b"u" * 70_000), timeout=30)
    else:
        call = lambda: api.instances.CreateInstance(pb.CreateInstanceRequest(  # noqa: E731
            name=name, flavor="tiny", user_data=b"u" * 70_000), timeout=30)
    code, details = status(call)
    assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT,
                               "user_data is 70000 bytes; at most 65536 (64 KiB)")
    for instance_name in (name, f"{name}-1", f"{name}-2"):
        assert store.get(keys.instance_name("demo", instance_name)) is None


def test_a_request_far_past_every_limit_is_refused_by_grpc_itself(api):
    # Past the largest request the table allows plus headroom: gRPC's receive
    # limit (control/api/limits.py receive_limit) refuses it before it is parsed.
    code, _ = status(lambda: api.keypairs.ImportKeypair(
        pb.ImportKeypairRequest(name="x", public_key="k" * 3_500_000), timeout=30))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
