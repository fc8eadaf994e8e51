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


@pytest.mark.parametrize("which,expected", [
    ("api", {"cloudapi.v1.InstanceService", "cloudapi.v1.FlavorService",
             "cloudapi.v1.ImageService", "cloudapi.v1.HostService"}),
    ("agent", {"cloudapi.v1.ComputeAgent"}),
])
def test_health_and_reflection(cloud, which, expected):
    port = cloud.ports.api if which == "api" else cloud.ports.agent
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    health = health_pb2_grpc.HealthStub(channel)
    for service in ["", *expected]:
        status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
        assert status == health_pb2.HealthCheckResponse.SERVING
    listed = services(channel)
    assert expected <= listed
    assert "grpc.health.v1.Health" in listed


def test_host_calls_need_the_agents_secret(cloud, api):
    """A tenant must not be able to register a host and have guests sent to it."""
    from cloudapi.v1 import agent_pb2, agent_pb2_grpc

    request = agent_pb2.RegisterHostRequest(name="rogue", address="127.0.0.1:1",
                                            inventory=agent_pb2.HostInventory(vcpus=64,
                                                                              memory_mb=10**6,
                                                                              disk_gb=10**4))
    stub = agent_pb2_grpc.HostServiceStub(grpc.insecure_channel(cloud.endpoint))
    for metadata in [(), (("authorization", f"Bearer {api.token}"),),
                     (("authorization", "Bearer not-the-secret"),)]:
        with pytest.raises(grpc.RpcError) as info:
            stub.RegisterHost(request, metadata=metadata, timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
