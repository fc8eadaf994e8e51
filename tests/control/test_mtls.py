"""Mutual TLS between the control plane and the compute agents (control/pki.py,
control/api/host_auth.py, compute_agent/tls.py), on the session's real cloud:
no certificate, another CA's certificate, or a host's certificate speaking for
another host is refused both ways; the public port has no agent surface."""

import uuid

import grpc
import pytest
from cloudapi.v1 import agent_pb2, agent_pb2_grpc
from cloudapi.v1 import compute_pb2 as pb

from control import pki
from control.compute.agent_client import AgentClient
from control.errors import Unavailable
from control.store import keys


def read(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def credentials(ca, paths: pki.CertPaths | None) -> grpc.ChannelCredentials:
    if paths is None:
        return grpc.ssl_channel_credentials(read(ca))
    return grpc.ssl_channel_credentials(read(ca), read(paths.key), read(paths.cert))


def channel(address: str, creds: grpc.ChannelCredentials, target: str) -> grpc.Channel:
    return grpc.secure_channel(address, creds, options=[("grpc.ssl_target_name_override", target)])


def host_service(cloud, paths: pki.CertPaths | None, ca=None) -> agent_pb2_grpc.HostServiceStub:
    """HostService on the agent listener, as the holder of `paths` (None: no certificate)."""
    ca = ca or pki.ca_paths(cloud.pki_dir).cert
    return agent_pb2_grpc.HostServiceStub(
        channel(cloud.agent_endpoint, credentials(ca, paths), pki.CONTROL_NAME))


def compute_agent(cloud, paths: pki.CertPaths | None, ca=None) -> agent_pb2_grpc.ComputeAgentStub:
    """The session cloud's agent, called as the holder of `paths`."""
    ca = ca or pki.ca_paths(cloud.pki_dir).cert
    return agent_pb2_grpc.ComputeAgentStub(
        channel(f"127.0.0.1:{cloud.ports.agent}", credentials(ca, paths), cloud.host_name))


def code_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code()


@pytest.fixture(scope="module")
def rogue(cloud) -> tuple[str, pki.CertPaths]:
    """A real certificate of the cloud's CA, for a host that is not registered."""
    name = f"rogue-{uuid.uuid4().hex[:6]}"
    return name, pki.issue_host(cloud.pki_dir, name)


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory, cloud) -> tuple:
    """Another CA, with certificates bearing the cloud's own names."""
    directory = tmp_path_factory.mktemp("other-pki")
    pki.init(directory)
    return pki.ca_paths(directory).cert, pki.control_paths(directory), \
        pki.issue_host(directory, cloud.host_name)


def inventory_request(name: str) -> agent_pb2.RegisterHostRequest:
    return agent_pb2.RegisterHostRequest(
        name=name, address="127.0.0.1:1", virt_type="qemu",
        inventory=agent_pb2.HostInventory(vcpus=64, memory_mb=10**6, disk_gb=10**4))


def test_no_certificate_is_refused_in_the_handshake(cloud):
    for address in (cloud.agent_endpoint, f"127.0.0.1:{cloud.ports.agent}"):
        stub = agent_pb2_grpc.HostServiceStub(grpc.insecure_channel(address))
        assert code_of(lambda s=stub: s.Heartbeat(agent_pb2.HeartbeatRequest(name=cloud.host_name),
                                                  timeout=5)) == grpc.StatusCode.UNAVAILABLE
    # TLS, but no client certificate
    assert code_of(lambda: host_service(cloud, None).Heartbeat(
        agent_pb2.HeartbeatRequest(name=cloud.host_name), timeout=5)) == grpc.StatusCode.UNAVAILABLE
    assert code_of(lambda: compute_agent(cloud, None).GetInventory(
        agent_pb2.GetInventoryRequest(), timeout=5)) == grpc.StatusCode.UNAVAILABLE


def test_another_cas_certificates_are_refused_both_ways(cloud, other_ca):
    ca, control, host = other_ca
    # the agent's certificate, same name, another CA: the control plane refuses it
    for trust in (pki.ca_paths(cloud.pki_dir).cert, ca):
        stub = host_service(cloud, host, ca=trust)
        assert code_of(lambda s=stub: s.Heartbeat(agent_pb2.HeartbeatRequest(name=cloud.host_name),
                                                  timeout=5)) == grpc.StatusCode.UNAVAILABLE
    # the control plane's name, another CA: the agent refuses it
    stub = compute_agent(cloud, control)
    assert code_of(lambda: stub.GetConsoleOutput(
        agent_pb2.AgentConsoleRequest(instance_id=str(uuid.uuid4())), timeout=5)) == \
        grpc.StatusCode.UNAVAILABLE


def test_a_hosts_certificate_cannot_speak_for_another_host(cloud, store, rogue):
    name, paths = rogue
    stub = host_service(cloud, paths)
    victim = f"victim-{uuid.uuid4().hex[:6]}"
    before = store.get(keys.host(cloud.host_name)).value["address"]
    for call in [
        lambda: stub.RegisterHost(inventory_request(victim), timeout=5),
        lambda: stub.RegisterHost(inventory_request(cloud.host_name), timeout=5),
        lambda: stub.Heartbeat(agent_pb2.HeartbeatRequest(name=cloud.host_name), timeout=5),
        lambda: stub.ReportMetrics(agent_pb2.ReportMetricsRequest(name=cloud.host_name), timeout=5),
    ]:
        with pytest.raises(grpc.RpcError) as caught:
            call()
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert f"host {name}'s certificate cannot" in caught.value.details()
    assert store.get(keys.host(victim)) is None
    assert store.get(keys.host(cloud.host_name)).value["address"] == before  # not redirected


def test_image_files_go_to_registered_hosts_only(cloud, admin, rogue):
    image = admin.images.ListImages(pb.ListImagesRequest()).images[0]
    request = agent_pb2.FetchImageFileRequest(image_id=image.id, part="kernel")
    assert code_of(lambda: next(iter(host_service(cloud, rogue[1]).FetchImageFile(
        request, timeout=10)))) == grpc.StatusCode.PERMISSION_DENIED
    own = pki.host_paths(cloud.pki_dir, cloud.host_name)
    chunks = host_service(cloud, own).FetchImageFile(request, timeout=10)
    assert next(iter(chunks)).data
    chunks.cancel()


def test_the_control_planes_certificate_is_not_a_hosts(cloud):
    stub = host_service(cloud, pki.control_paths(cloud.pki_dir))
    assert code_of(lambda: stub.Heartbeat(agent_pb2.HeartbeatRequest(name=pki.CONTROL_NAME),
                                          timeout=5)) == grpc.StatusCode.PERMISSION_DENIED


def test_the_public_port_has_no_host_service(cloud, api, admin):
    stub = agent_pb2_grpc.HostServiceStub(grpc.insecure_channel(cloud.endpoint))
    for token in (None, api.token, admin.token):
        metadata = [("authorization", f"Bearer {token}")] if token else []
        assert code_of(lambda m=metadata: stub.RegisterHost(
            inventory_request("rogue"), metadata=m, timeout=5)) == grpc.StatusCode.UNIMPLEMENTED
    # and the agent listener serves nothing but HostService, to no token
    flavors = pb.ListFlavorsRequest()
    from cloudapi.v1 import compute_pb2_grpc
    own = pki.host_paths(cloud.pki_dir, cloud.host_name)
    secure = channel(cloud.agent_endpoint, credentials(pki.ca_paths(cloud.pki_dir).cert, own),
                     pki.CONTROL_NAME)
    assert code_of(lambda: compute_pb2_grpc.FlavorServiceStub(secure).ListFlavors(
        flavors, metadata=[("authorization", f"Bearer {admin.token}")], timeout=5)) == \
        grpc.StatusCode.UNIMPLEMENTED


def test_the_agent_serves_the_control_plane_only(cloud, rogue):
    request = agent_pb2.AgentConsoleRequest(instance_id=str(uuid.uuid4()), max_bytes=10)
    # a valid certificate of the CA, but a host's (its own, or another's): refused
    for paths in (pki.host_paths(cloud.pki_dir, cloud.host_name), rogue[1]):
        with pytest.raises(grpc.RpcError) as caught:
            compute_agent(cloud, paths).GetConsoleOutput(request, timeout=5)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "only the control plane" in caught.value.details()
    assert compute_agent(cloud, pki.control_paths(cloud.pki_dir)).GetConsoleOutput(
        request, timeout=5).output == b""


def test_the_control_plane_checks_the_agents_name(cloud):
    """The agent at a host's address must hold that host's certificate."""
    tls = cloud.tls_settings()
    creds = grpc.ssl_channel_credentials(read(tls["tls_ca_file"]), read(tls["tls_key_file"]),
                                         read(tls["tls_cert_file"]))
    address = f"127.0.0.1:{cloud.ports.agent}"
    instance = str(uuid.uuid4())
    impostor = AgentClient(timeout_s=5, credentials=creds, name_of=lambda _: "some-other-host")
    with pytest.raises(Unavailable):
        impostor.console(address, instance, 10)
    right = AgentClient(timeout_s=5, credentials=creds, name_of=lambda _: cloud.host_name)
    assert right.console(address, instance, 10) == b""
    with pytest.raises(Unavailable, match="no TLS certificate"):
        AgentClient(timeout_s=5).console(address, instance, 10)


def test_nothing_starts_without_certificates(tmp_path):
    from compute_agent.config import AgentConfig
    from compute_agent.server import create_agent
    from compute_agent.tls import TlsNotConfigured

    from control.api.host_auth import server_credentials
    from control.config import ControlConfig

    with pytest.raises(TlsNotConfigured, match="issue-host"):
        create_agent(AgentConfig(driver="fake", listen="127.0.0.1:0", state_dir=str(tmp_path)))
    with pytest.raises(ValueError, match="mutual TLS"):
        server_credentials(ControlConfig())
