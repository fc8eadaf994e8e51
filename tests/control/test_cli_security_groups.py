"""cloudctl security-group commands (and instance create --security-group,
instance set-security-groups, groups in instance show) against a real cloud
with tenant networks on, as a user runs them: a separate process per command.
The fake driver: this is about the CLI and the API's answers."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest

from tests.conftest import start_cloud, stop_cloud
from tests.control.test_cli_networks import Run, cloudctl_as, refused


@pytest.fixture(scope="module")
def sg_cloud() -> Iterator:
    cloud, _store = start_cloud("cli-security-groups", control_settings={"tenant_networks": True},
                                agent_settings={"driver": "fake"})
    yield cloud
    stop_cloud(cloud, "cli-security-groups")


@pytest.fixture
def cloudctl(sg_cloud, tmp_path) -> Run:
    """The demo project's member."""
    return cloudctl_as(sg_cloud, tmp_path, "demo", sg_cloud.password("demo"))


def group_names(cloudctl: Run) -> list[str]:
    return [g["name"] for g in json.loads(cloudctl("security-group", "list", "-o", "json").stdout)]


def test_groups_and_rules(cloudctl):
    name = f"web-{uuid.uuid4().hex[:6]}"
    made = json.loads(cloudctl("security-group", "create", name, "--description", "web tier",
                               "-o", "json").stdout)
    assert made["name"] == name and made["description"] == "web tier" and made["id"]
    assert [(r["direction"], r["protocol"]) for r in made["rules"]] == [("egress", "any")]
    assert {"default", name} <= set(group_names(cloudctl))
    assert name in cloudctl("security-group", "list").stdout

    http = json.loads(cloudctl("security-group", "rule", "create", name, "--direction", "ingress",
                               "--protocol", "tcp", "--port", "80", "-o", "json").stdout)
    assert (http["port_min"], http["port_max"]) == (80, 80)
    ranged = cloudctl("security-group", "rule", "create", name, "--direction", "ingress",
                      "--protocol", "tcp", "--port", "8000-8080", "--remote-cidr", "100.64.0.0/24").stdout
    assert "8000-8080" in ranged and "100.64.0.0/24" in ranged
    peers = json.loads(cloudctl("security-group", "rule", "create", name, "--direction", "ingress",
                                "--protocol", "any", "--remote-group", name, "-o", "json").stdout)
    assert peers["remote_group_id"] == made["id"] and peers["remote_group_name"] == name
    shown = cloudctl("security-group", "show", name).stdout
    assert http["id"] in shown and f"group {name}" in shown and "anyone" in shown
    by_id = json.loads(cloudctl("security-group", "show", made["id"], "-o", "json").stdout)
    assert len(by_id["rules"]) == 4

    assert f"rule {http['id']} deleted" in cloudctl("security-group", "rule", "delete", http["id"]).stderr
    assert len(json.loads(cloudctl("security-group", "show", name, "-o", "json").stdout)["rules"]) == 3
    assert f"security group {name} deleted" in cloudctl("security-group", "delete", name).stderr
    assert name not in group_names(cloudctl)
    refused(cloudctl("security-group", "show", name, check=False), "NOT_FOUND")


def test_bad_input_is_one_line_and_changes_nothing(cloudctl):
    name = f"bad-{uuid.uuid4().hex[:6]}"
    cloudctl("security-group", "create", name)
    before = json.loads(cloudctl("security-group", "show", name, "-o", "json").stdout)
    for args in (["--protocol", "tcp", "--port", "70000"], ["--protocol", "icmp", "--port", "8"],
                 ["--protocol", "any", "--port", "22"], ["--protocol", "tcp", "--port", "90-80"],
                 ["--protocol", "tcp", "--remote-cidr", "10.0.0.1/8"]):
        refused(cloudctl("security-group", "rule", "create", name, "--direction", "ingress", *args,
                         check=False), "INVALID_ARGUMENT")
    refused(cloudctl("security-group", "rule", "create", name, "--direction", "ingress",
                     "--protocol", "tcp", "--remote-group", "ghost", check=False), "NOT_FOUND")
    refused(cloudctl("security-group", "create", name, check=False), "ALREADY_EXISTS")
    refused(cloudctl("security-group", "delete", "default", check=False), "FAILED_PRECONDITION")
    assert json.loads(cloudctl("security-group", "show", name, "-o", "json").stdout) == before
    # Refused by cloudctl itself (click's usage error): both remotes; a port that is not one.
    both = cloudctl("security-group", "rule", "create", name, "--direction", "ingress", "--protocol",
                    "tcp", "--remote-cidr", "10.0.0.0/8", "--remote-group", name, check=False)
    assert both.returncode == 2 and "not both" in both.stderr
    word = cloudctl("security-group", "rule", "create", name, "--direction", "ingress", "--protocol",
                    "tcp", "--port", "ssh", check=False)
    assert word.returncode == 2 and "a port (22) or a range" in word.stderr
    cloudctl("security-group", "delete", name)


def test_instance_groups(cloudctl):
    web, vm = f"web-{uuid.uuid4().hex[:6]}", f"vm-{uuid.uuid4().hex[:6]}"
    cloudctl("security-group", "create", web)
    instance = json.loads(cloudctl("instance", "create", "--flavor", "tiny", "--name", vm,
                                   "--security-group", web, "--security-group", "default",
                                   "--wait", "-o", "json").stdout)
    assert [g["name"] for g in instance["security_groups"]] == [web, "default"]
    assert f"{web}, default" in cloudctl("instance", "show", vm).stdout
    message = refused(cloudctl("security-group", "delete", web, check=False), "FAILED_PRECONDITION")
    assert vm in message
    changed = json.loads(cloudctl("instance", "set-security-groups", vm, "default", "-o", "json").stdout)
    assert [g["name"] for g in changed["security_groups"]] == ["default"]
    refused(cloudctl("instance", "set-security-groups", vm, "ghost", check=False), "NOT_FOUND")
    cloudctl("instance", "delete", vm, "--wait")
    # A scale-out joins them too.
    many = json.loads(cloudctl("instance", "create", "--flavor", "tiny", "--name", vm, "--count", "2",
                               "--security-group", web, "-o", "json").stdout)
    assert [[g["name"] for g in i["security_groups"]] for i in many] == [[web], [web]]
    for made in many:
        cloudctl("instance", "delete", made["name"], "--wait")
    cloudctl("security-group", "delete", web)  # no longer in use
