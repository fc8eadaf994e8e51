"""Both servers answer gRPC health checks and list their services by reflection
(so grpcurl works against them)."""

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc


def services(channel) -> set[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    response = next(iter(stub.ServerReflectionInfo(iter([request]), timeout=10)))
    return {s.name for s in response.list_services_response.service}


def control_plane_channel(cloud, port: int):
    """As the control plane calls an agent: mutual TLS with its certificate."""
    tls = cloud.tls_settings()
    credentials = grpc.ssl_channel_credentials(*(open(tls[k], "rb").read() for k in (
        "tls_ca_file", "tls_key_file", "tls_cert_file")))
    return grpc.secure_channel(f"127.0.0.1:{port}", credentials, options=[
        ("grpc.ssl_target_name_override", cloud.host_name)])


@pytest.mark.parametrize("which,expected", [
    ("api", {"cloudapi.v1.InstanceService", "cloudapi.v1.FlavorService",
             "cloudapi.v1.ImageService"}),
    ("agent", {"cloudapi.v1.ComputeAgent"}),
])
def test_health_and_reflection(cloud, which, expected):
    channel = grpc.insecure_channel(cloud.endpoint) if which == "api" \
        else control_plane_channel(cloud, cloud.ports.agent)
    health = health_pb2_grpc.HealthStub(channel)
    for service in ["", *expected]:
        status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
        assert status == health_pb2.HealthCheckResponse.SERVING
    listed = services(channel)
    assert expected <= listed
    assert "grpc.health.v1.Health" in listed
    if which == "api":  # the agents' calls are not on the public port (tests/control/test_mtls.py)
        assert "cloudapi.v1.HostService" not in listed
