"""Client side of the public API, shared by cloudctl and tests: where the API is,
which token to send, and the stubs on one authenticated channel.

Settings come, first match wins, from:
  1. the environment: CLOUD_ENDPOINT (one "host:port", or several API replicas
     comma-separated, to fail over between); CLOUD_TOKEN, or CLOUD_USERNAME +
     CLOUD_PASSWORD (+ CLOUD_PROJECT), which log in afresh on every command;
  2. the config file ($CLOUD_CONFIG, default ~/.config/cloudctl/config.toml),
     which `cloudctl login` and `make up` write.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import grpc
from cloudapi.v1 import (
    compute_pb2,
    compute_pb2_grpc,
    events_pb2_grpc,
    identity_pb2,
    identity_pb2_grpc,
    network_pb2_grpc,
    scaling_pb2_grpc,
    security_group_pb2_grpc,
    usage_pb2_grpc,
)

from cloudclient.endpoints import channel_target

DEFAULT_ENDPOINT = "127.0.0.1:50051"
UPLOAD_CHUNK_BYTES = 1024 * 1024


def config_path() -> Path:
    return Path(os.environ.get("CLOUD_CONFIG") or Path.home() / ".config/cloudctl/config.toml")


def read_config() -> dict[str, str]:
    path = config_path()
    if not path.exists():
        return {}
    with open(path, "rb") as f:
        return {k: str(v) for k, v in tomllib.load(f).items()}


def write_config(settings: dict[str, str]) -> Path:
    """Write the CLI's config (it may hold a token: readable by its owner only)."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f'{k} = "{v}"' for k, v in settings.items() if v]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("# cloudctl settings (written by cloudctl login / make up)\n" + "\n".join(lines) + "\n")
    return path


def endpoint() -> str:
    return os.environ.get("CLOUD_ENDPOINT") or read_config().get("endpoint") or DEFAULT_ENDPOINT


class _BearerToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                   grpc.StreamUnaryClientInterceptor):
    def __init__(self, token_source):
        self.token_source = token_source

    def _with_token(self, details):
        token = self.token_source()
        if not token:
            return details
        metadata = list(details.metadata or []) + [("authorization", f"Bearer {token}")]
        return _Details(details.method, details.timeout, metadata, details.credentials,
                        details.wait_for_ready, details.compression)

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._with_token(details), request)

    def intercept_stream_unary(self, continuation, details, request_iterator):
        return continuation(self._with_token(details), request_iterator)


class _Details(grpc.ClientCallDetails):
    def __init__(self, method, timeout, metadata, credentials, wait_for_ready, compression):
        self.method = method
        self.timeout = timeout
        self.metadata = metadata
        self.credentials = credentials
        self.wait_for_ready = wait_for_ready
        self.compression = compression


class CloudClient:
    """Stubs of every public service on one channel that sends the token."""

    def __init__(self, target: str, token: str = ""):
        self.target = target
        self.token = token
        # `target` may list several API replicas, comma-separated: the channel
        # fails over between them (client/cloudclient/endpoints.py).
        address, options = channel_target(target)
        channel = grpc.intercept_channel(grpc.insecure_channel(address, options=options),
                                         _BearerToken(lambda: self.token))
        self.channel = channel
        self.instances = compute_pb2_grpc.InstanceServiceStub(channel)
        self.flavors = compute_pb2_grpc.FlavorServiceStub(channel)
        self.images = compute_pb2_grpc.ImageServiceStub(channel)
        self.hosts = compute_pb2_grpc.HostAdminServiceStub(channel)
        self.groups = compute_pb2_grpc.ServerGroupServiceStub(channel)
        self.keypairs = compute_pb2_grpc.KeypairServiceStub(channel)
        self.identity = identity_pb2_grpc.IdentityServiceStub(channel)
        self.quotas = identity_pb2_grpc.QuotaServiceStub(channel)
        self.metrics = scaling_pb2_grpc.MetricsServiceStub(channel)
        self.scaling_groups = scaling_pb2_grpc.ScalingGroupServiceStub(channel)
        self.events = events_pb2_grpc.EventServiceStub(channel)
        self.usage = usage_pb2_grpc.UsageServiceStub(channel)
        self.networks = network_pb2_grpc.NetworkServiceStub(channel)
        self.security_groups = security_group_pb2_grpc.SecurityGroupServiceStub(channel)

    def login(self, username: str, password: str, project: str = "") -> identity_pb2.Token:
        result = self.identity.Login(identity_pb2.LoginRequest(
            username=username, password=password, project=project), timeout=30)
        self.token = result.token
        return result

    def upload_image(self, info: compute_pb2.ImageInfo, disk: str | Path, kernel: str | Path = "",
                     initrd: str | Path = "", progress=None) -> compute_pb2.Image:
        """CreateImage: stream the info, then each file in chunks. `progress(n)`
        is called with the bytes of each chunk sent."""
        files = {"disk": disk, "kernel": kernel, "initrd": initrd}

        def messages():
            yield compute_pb2.ImageUpload(info=info)
            for part, path in files.items():
                if not path:
                    continue
                with open(path, "rb") as f:
                    while chunk := f.read(UPLOAD_CHUNK_BYTES):
                        yield compute_pb2.ImageUpload(data=compute_pb2.ImageData(part=part, chunk=chunk))
                        if progress:
                            progress(len(chunk))
        return self.images.CreateImage(messages(), timeout=3600)

    @classmethod
    def from_environment(cls) -> CloudClient:
        client = cls(endpoint())
        if os.environ.get("CLOUD_TOKEN"):
            client.token = os.environ["CLOUD_TOKEN"]
        elif os.environ.get("CLOUD_USERNAME"):
            client.login(os.environ["CLOUD_USERNAME"], os.environ.get("CLOUD_PASSWORD", ""),
                         os.environ.get("CLOUD_PROJECT", ""))
        else:
            client.token = read_config().get("token", "")
        return client
