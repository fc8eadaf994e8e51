from cloudapi.v1 import compute_pb2, identity_pb2

from control.identity import policy


def public_methods():
    for module in (compute_pb2, identity_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                yield f"/{service.full_name}/{method.name}"


def all_api_methods():
    from cloudapi.v1 import events_pb2, network_pb2, scaling_pb2, security_group_pb2, usage_pb2

    for module in (compute_pb2, identity_pb2, scaling_pb2, events_pb2, usage_pb2, network_pb2,
                   security_group_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            if service.name != "HostService":  # the agents' (mutual TLS, not by role)
                for method in service.methods:
                    yield f"/{service.full_name}/{method.name}"


def test_every_public_rpc_is_an_action_with_an_explicit_rule():
    missing = [m for m in all_api_methods()
               if policy.action_of(m) not in policy.ACTIONS and not policy.is_public(m)]
    assert missing == []


def test_every_action_is_some_rpc():
    """No stale names: each action of the table is performed by an RPC (until
    another front end brings actions of its own)."""
    performed = {policy.action_of(m) for m in all_api_methods()}
    assert set(policy.ACTIONS) - performed == set()


def test_actions_are_named_by_area_and_verb():
    assert policy.action_of("/cloudapi.v1.InstanceService/CreateInstance") == "compute:create_instance"
    assert policy.action_of("/cloudapi.v1.IdentityService/WhoAmI") == "identity:who_am_i"
    assert policy.action_of("/cloudapi.v1.HostAdminService/GetStoreStatus") == \
        "placement:get_store_status"
    assert policy.action_of("/grpc.health.v1.Health/Check") == ""
    assert policy.role_for("compute:create_instance") == "member"
    assert policy.role_for("compute:something_new") == "admin"


def test_only_login_and_health_are_public():
    assert [m for m in public_methods() if policy.is_public(m)] == [
        "/cloudapi.v1.IdentityService/Login"]
    assert policy.is_public("/grpc.health.v1.Health/Check")


def test_unknown_methods_need_admin():
    assert policy.required_role("/cloudapi.v1.InstanceService/SomethingNew") == "admin"


def test_host_service_is_for_agents_only():
    assert policy.is_agent_call("/cloudapi.v1.HostService/RegisterHost")
    assert not policy.is_public("/cloudapi.v1.HostService/RegisterHost")
