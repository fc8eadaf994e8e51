"""cloudctl network and floating-ip commands (and instance create --network, instance
show's NICs) against a real cloud with tenant networks on, as a user runs them: a
separate process per command. The fake driver: this is about the CLI and the API's
answers, not about guests' traffic (tests/multihost has that)."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from cloudapi.v1 import identity_pb2 as ipb

from tests.conftest import log_wait, login, start_cloud, stop_cloud

Run = Callable[..., subprocess.CompletedProcess]


@pytest.fixture(scope="module")
def net_cloud() -> Iterator:
    cloud, _store = start_cloud("cli-networks", control_settings={"tenant_networks": True},
                                agent_settings={"driver": "fake"})
    yield cloud
    stop_cloud(cloud, "cli-networks")


def cloudctl_as(cloud, tmp_path, username: str, password: str) -> Run:
    env = {**os.environ, "CLOUD_ENDPOINT": cloud.endpoint, "CLOUD_USERNAME": username,
           "CLOUD_PASSWORD": password, "CLOUD_CONFIG": str(tmp_path / "absent.toml"),
           "COLUMNS": "200"}

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        # A guard against a hung cloudctl: a call took 0.3-3.1 s in tests/control/test_cli.py
        # (create --wait on the fake driver included).
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "cloudclient.cli", *args], env=env,
                                capture_output=True, text=True, timeout=60)
        log_wait(started, 60, "cloudctl " + " ".join(args[:3]))
        if check and result.returncode != 0:
            raise AssertionError(f"cloudctl {' '.join(args)} failed:\n{result.stderr}")
        return result
    return run


@pytest.fixture
def cloudctl(net_cloud, tmp_path) -> Run:
    """The demo project's member."""
    return cloudctl_as(net_cloud, tmp_path, "demo", net_cloud.password("demo"))


def refused(result: subprocess.CompletedProcess, code: str) -> str:
    """The one-line error of a refused command (exit 1, the API's code, no traceback)."""
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert f"({code})" in result.stderr and "Traceback" not in result.stderr, result.stderr
    return result.stderr


def names(cloudctl: Run, group: str) -> list[str]:
    key = "name" if group == "network" else "address"
    return [item[key] for item in json.loads(cloudctl(group, "list", "-o", "json").stdout)]


def test_network_create_list_show_delete(cloudctl):
    name = f"net-{uuid.uuid4().hex[:6]}"
    made = json.loads(cloudctl("network", "create", name, "--cidr", "10.20.0.0/24", "-o", "json").stdout)
    assert made["name"] == name and made["cidr"] == "10.20.0.0/24"
    assert made["gateway_ip"] == "10.20.0.1" and made["mtu"] > 0 and made["id"]
    assert name in names(cloudctl, "network")
    table = cloudctl("network", "list").stdout
    assert name in table and "10.20.0.0/24" in table
    by_name = json.loads(cloudctl("network", "show", name, "-o", "json").stdout)
    by_id = json.loads(cloudctl("network", "show", made["id"], "-o", "json").stdout)
    assert by_name["id"] == by_id["id"] == made["id"]
    assert "10.20.0.1" in cloudctl("network", "show", name).stdout

    deleted = cloudctl("network", "delete", name)
    assert f"network {name} deleted" in deleted.stderr
    assert name not in names(cloudctl, "network")
    refused(cloudctl("network", "show", name, check=False), "NOT_FOUND")


def test_bad_input_is_one_line_and_changes_nothing(cloudctl):
    before = names(cloudctl, "network")
    for cidr in ("10.0.0.0/33", "not-a-cidr", "10.0.0.0/30"):
        refused(cloudctl("network", "create", "bad", "--cidr", cidr, check=False), "INVALID_ARGUMENT")
    name = f"dup-{uuid.uuid4().hex[:6]}"
    cloudctl("network", "create", name, "--cidr", "10.21.0.0/24")
    refused(cloudctl("network", "create", name, "--cidr", "10.22.0.0/24", check=False), "ALREADY_EXISTS")
    assert sorted(names(cloudctl, "network")) == sorted([*before, name])
    cloudctl("network", "delete", name)
    # --network is for one instance at a time: refused by cloudctl itself (click's usage error).
    result = cloudctl("instance", "create", "--flavor", "tiny", "--name", "x", "--count", "2",
                      "--network", "default", check=False)
    assert result.returncode == 2 and "--network does not go with --count" in result.stderr


def test_instance_nics_and_floating_ip(cloudctl):
    net, vm = f"backend-{uuid.uuid4().hex[:6]}", f"db-{uuid.uuid4().hex[:6]}"
    cloudctl("network", "create", net, "--cidr", "10.30.0.0/24")
    instance = json.loads(cloudctl("instance", "create", "--flavor", "tiny", "--name", vm,
                                   "--network", net, "--wait", "-o", "json").stdout)
    assert instance["status"] == "ACTIVE"
    [nic] = instance["nics"]
    assert nic["network_name"] == net and nic["mac"] and nic["floating_ip"] == ""
    assert ipaddress.ip_address(nic["fixed_ip"]) in ipaddress.ip_network("10.30.0.0/24")
    shown = cloudctl("instance", "show", vm).stdout
    assert net in shown and nic["fixed_ip"] in shown and nic["mac"] in shown

    # A network with instances on it: refused, naming them, and still there.
    message = refused(cloudctl("network", "delete", net, check=False), "FAILED_PRECONDITION")
    assert vm in message
    assert json.loads(cloudctl("network", "show", net, "-o", "json").stdout)["ports"] == 1

    fip = json.loads(cloudctl("floating-ip", "create", "-o", "json").stdout)
    address = fip["address"]
    assert ipaddress.ip_address(address) and fip["instance_id"] == ""
    attached = json.loads(cloudctl("floating-ip", "attach", address, vm, "-o", "json").stdout)
    assert attached["instance_id"] == instance["id"] and attached["fixed_ip"] == nic["fixed_ip"]
    shown = json.loads(cloudctl("instance", "show", vm, "-o", "json").stdout)
    assert shown["nics"][0]["floating_ip"] == address
    assert address in cloudctl("instance", "show", vm).stdout
    listing = cloudctl("floating-ip", "list").stdout
    assert address in listing and vm in listing and net in listing  # names, not ids

    detached = json.loads(cloudctl("floating-ip", "detach", address, "-o", "json").stdout)
    assert detached["instance_id"] == "" and detached["fixed_ip"] == ""
    assert json.loads(cloudctl("instance", "show", vm, "-o", "json").stdout)["nics"][0]["floating_ip"] == ""
    assert address in names(cloudctl, "floating-ip")  # the project keeps it
    assert f"floating IP {address} released" in cloudctl("floating-ip", "delete", address).stderr
    assert address not in names(cloudctl, "floating-ip")

    cloudctl("instance", "delete", vm, "--wait")
    cloudctl("network", "delete", net)


def test_attach_with_network_and_unknown_names(cloudctl):
    net, vm = f"front-{uuid.uuid4().hex[:6]}", f"web-{uuid.uuid4().hex[:6]}"
    cloudctl("network", "create", net, "--cidr", "10.31.0.0/28")
    cloudctl("instance", "create", "--flavor", "tiny", "--name", vm, "--network", net, "--wait")
    address = json.loads(cloudctl("floating-ip", "create", "-o", "json").stdout)["address"]
    try:
        attached = json.loads(cloudctl("floating-ip", "attach", address, vm, "--network", net,
                                       "-o", "json").stdout)
        assert ipaddress.ip_address(attached["fixed_ip"]) in ipaddress.ip_network("10.31.0.0/28")
        refused(cloudctl("floating-ip", "attach", address, "ghost-vm", check=False), "NOT_FOUND")
        refused(cloudctl("instance", "create", "--flavor", "tiny", "--name", "x",
                         "--network", "ghost-net", check=False), "NOT_FOUND")
    finally:
        cloudctl("floating-ip", "delete", address)
        cloudctl("instance", "delete", vm, "--wait")
        cloudctl("network", "delete", net)


def test_another_projects_network_and_floating_ip_are_not_found(net_cloud, cloudctl, tmp_path):
    admin = login(net_cloud, "admin")
    project = f"other-{uuid.uuid4().hex[:6]}"
    password = f"pw-{uuid.uuid4().hex}"
    admin.identity.CreateProject(ipb.CreateProjectRequest(name=project, description="cli networks"))
    admin.identity.CreateUser(ipb.CreateUserRequest(name=project, password=password, project=project,
                                                    role="member"))
    other = cloudctl_as(net_cloud, tmp_path, project, password)

    net = f"mine-{uuid.uuid4().hex[:6]}"
    made = json.loads(cloudctl("network", "create", net, "--cidr", "10.0.0.0/24", "-o", "json").stdout)
    address = json.loads(cloudctl("floating-ip", "create", "-o", "json").stdout)["address"]
    try:
        for ref in (net, made["id"]):
            refused(other("network", "show", ref, check=False), "NOT_FOUND")
            refused(other("network", "delete", ref, check=False), "NOT_FOUND")
        refused(other("floating-ip", "detach", address, check=False), "NOT_FOUND")
        refused(other("floating-ip", "delete", address, check=False), "NOT_FOUND")
        # The same range in another project is normal.
        theirs = json.loads(other("network", "create", net, "--cidr", "10.0.0.0/24", "-o", "json").stdout)
        assert theirs["id"] != made["id"]
        assert names(other, "network") == [net] and address not in names(other, "floating-ip")
        other("network", "delete", net)
    finally:
        cloudctl("floating-ip", "delete", address)
        cloudctl("network", "delete", net)
