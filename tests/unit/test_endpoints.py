"""Several API (or agent-listener) endpoints as one failing-over gRPC target."""

from __future__ import annotations

import json

from cloudclient.endpoints import channel_target, split


def test_one_endpoint_is_used_as_given():
    assert channel_target("127.0.0.1:50051") == ("127.0.0.1:50051", [])
    assert channel_target(["localhost:50051"]) == ("localhost:50051", [])


def test_several_endpoints_make_one_pick_first_target_with_retries():
    target, options = channel_target("127.0.0.1:50051, 127.0.0.2:50053")
    assert target == "ipv4:127.0.0.1:50051,127.0.0.2:50053"
    config = json.loads(dict(options)["grpc.service_config"])
    assert config["loadBalancingConfig"] == [{"pick_first": {}}]
    assert config["methodConfig"][0]["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert dict(options)["grpc.enable_retries"] == 1


def test_names_are_resolved_and_kept_as_authority():
    target, options = channel_target(["localhost:50051", "127.0.0.1:50053"])
    assert target.startswith("ipv4:127.0.0.1:50051,")
    assert dict(options)["grpc.default_authority"] == "localhost:50051"


def test_ipv6_endpoints():
    assert channel_target("[::1]:1,[::1]:2")[0] == "ipv6:[::1]:1,[::1]:2"


def test_split():
    assert split("a:1,b:2") == ["a:1", "b:2"]
    assert split(["a:1", "b:2,c:3"]) == ["a:1", "b:2", "c:3"]


def test_agent_copy_agrees():
    from compute_agent.tls import _channel_target

    assert _channel_target("127.0.0.1:1,127.0.0.1:2")[0] == \
        channel_target("127.0.0.1:1,127.0.0.1:2")[0]
    assert _channel_target("127.0.0.1:1") == ("127.0.0.1:1", [])
