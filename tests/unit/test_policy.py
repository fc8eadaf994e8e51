from cloudapi.v1 import compute_pb2, identity_pb2

from control import policy


def public_methods():
    for module in (compute_pb2, identity_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                yield f"/{service.full_name}/{method.name}"


def test_every_public_rpc_has_an_explicit_rule():
    missing = [m for m in public_methods() if m not in policy.RULES and not policy.is_public(m)]
    assert missing == []


def test_only_login_and_health_are_public():
    assert [m for m in public_methods() if policy.is_public(m)] == [
        "/cloudapi.v1.IdentityService/Login"]
    assert policy.is_public("/grpc.health.v1.Health/Check")


def test_unknown_methods_need_admin():
    assert policy.required_role("/cloudapi.v1.InstanceService/SomethingNew") == "admin"


def test_host_service_is_for_agents_only():
    assert policy.is_agent_call("/cloudapi.v1.HostService/RegisterHost")
    assert not policy.is_public("/cloudapi.v1.HostService/RegisterHost")
