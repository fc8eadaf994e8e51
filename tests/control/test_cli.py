"""cloudctl against a real cloud, as a user runs it (a separate process)."""

import json
import os
import subprocess
import sys
import time

import pytest

from tests.conftest import log_wait, until

pytestmark = pytest.mark.usefixtures("cloud")


@pytest.fixture
def cloudctl(cloud, tmp_path):
    env = {**os.environ, "CLOUD_ENDPOINT": cloud.endpoint,
           "CLOUD_USERNAME": "demo", "CLOUD_PASSWORD": cloud.password("demo"),
           "CLOUD_CONFIG": str(tmp_path / "absent.toml"), "COLUMNS": "200"}

    def run(*args, check=True):
        # A guard against a hung cloudctl: a call took 0.3-3.1 s (create --wait
        # included; 3 runs, loaded 2-core machine).
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "cloudclient.cli", *args], env=env,
                                capture_output=True, text=True, timeout=60)
        log_wait(started, 60, "cloudctl " + " ".join(args[:3]))
        if check and result.returncode != 0:
            raise AssertionError(f"cloudctl {' '.join(args)} failed:\n{result.stderr}")
        return result
    return run


def test_flavors_and_images(cloudctl):
    flavors = json.loads(cloudctl("flavor", "list", "-o", "json").stdout)
    assert {f["name"]: (f["vcpus"], f["memory_mb"], f["disk_gb"]) for f in flavors} == {
        "tiny": (1, 256, 1), "small": (1, 512, 2), "medium": (2, 1024, 5), "large": (4, 2048, 10)}
    assert "small" in cloudctl("flavor", "list").stdout
    images = json.loads(cloudctl("image", "list", "-o", "json").stdout)
    assert "debian-busybox" in [i["name"] for i in images]


def test_instance_lifecycle(cloudctl, cloud):
    created = cloudctl("instance", "create", "--flavor", "small", "--name", "cli-web1",
                       "--wait", "-o", "json")
    instance = json.loads(created.stdout)
    assert instance["status"] == "ACTIVE"
    assert instance["host"] == cloud.host_name
    assert {"id", "name", "status", "flavor", "host"} <= instance.keys()
    assert "BUILD" in created.stderr  # --wait showed the phases

    listed = json.loads(cloudctl("instance", "list", "-o", "json").stdout)
    assert "cli-web1" in [i["name"] for i in listed]
    assert "cli-web1" in cloudctl("instance", "list").stdout
    by_id = json.loads(cloudctl("instance", "show", instance["id"], "-o", "json").stdout)
    by_name = json.loads(cloudctl("instance", "show", "cli-web1", "-o", "json").stdout)
    assert by_id["id"] == by_name["id"] == instance["id"]
    assert "ACTIVE" in cloudctl("instance", "show", "cli-web1").stdout

    # The marker was on the console 2.4-9.1 s after ACTIVE (median 2.5 s, 3 runs,
    # loaded machine; each look is a cloudctl process of its own).
    until(lambda: f"instance_id={instance['id']}" in cloudctl("instance", "console", "cli-web1").stdout,
          30, "the boot marker on the console", every_s=0.5)

    cloudctl("instance", "delete", "cli-web1", "--wait")
    listed = json.loads(cloudctl("instance", "list", "-o", "json").stdout)
    assert "cli-web1" not in [i["name"] for i in listed]


def test_errors_are_one_line_and_non_zero(cloudctl):
    result = cloudctl("instance", "create", "--flavor", "nope", "--name", "x", check=False)
    assert result.returncode == 1
    assert "NOT_FOUND" in result.stderr and "nope" in result.stderr
    assert "Traceback" not in result.stderr
    result = cloudctl("instance", "show", "ghost", check=False)
    assert result.returncode == 1 and "NOT_FOUND" in result.stderr


def test_unreachable_endpoint_says_so(cloudctl, tmp_path):
    env = {**os.environ, "CLOUD_ENDPOINT": "127.0.0.1:1"}
    result = subprocess.run([sys.executable, "-m", "cloudclient.cli", "flavor", "list"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "UNAVAILABLE" in result.stderr and "127.0.0.1:1" in result.stderr


def test_wait_exits_non_zero_on_error(cloudctl, api, tmp_path):
    from tests.integration.test_spawn_failure import upload_broken_image
    upload_broken_image(api, tmp_path, "cli-broken-kernel")
    result = cloudctl("instance", "create", "--flavor", "tiny", "--name", "cli-broken",
                      "--image", "cli-broken-kernel", "--wait", check=False)
    assert result.returncode == 1
    assert "ERROR" in result.stdout + result.stderr
    cloudctl("instance", "delete", "cli-broken", "--wait")


def test_login_logout_and_token_issue(cloud, tmp_path):
    config = tmp_path / "cli.toml"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUD_")}
    env.update({"CLOUD_ENDPOINT": cloud.endpoint, "CLOUD_CONFIG": str(config)})

    def run(*args, extra=None):
        return subprocess.run([sys.executable, "-m", "cloudclient.cli", *args], env={**env, **(extra or {})},
                              capture_output=True, text=True, timeout=60)

    refused = run("instance", "list")
    assert refused.returncode == 1 and "UNAUTHENTICATED" in refused.stderr

    logged_in = run("login", "--username", "demo", "--password", cloud.password("demo"))
    assert logged_in.returncode == 0, logged_in.stderr
    assert 'token = "' in config.read_text()
    assert oct(config.stat().st_mode & 0o777) == "0o600"
    assert run("instance", "list").returncode == 0

    issued = run("token", "issue", "-o", "json",
                 extra={"CLOUD_USERNAME": "demo", "CLOUD_PASSWORD": cloud.password("demo")})
    token = json.loads(issued.stdout)
    assert token["project"] == "demo" and token["role"] == "member" and token["token"]
    with_token = run("instance", "list", extra={"CLOUD_TOKEN": token["token"]})
    assert with_token.returncode == 0

    assert run("logout").returncode == 0
    assert run("instance", "list").returncode == 1
    # The environment's token is another one, and still valid.
    assert run("instance", "list", extra={"CLOUD_TOKEN": token["token"]}).returncode == 0

    bad = run("login", "--username", "demo", "--password", "wrong")
    assert bad.returncode == 1 and "UNAUTHENTICATED" in bad.stderr


def test_admin_commands(cloud, tmp_path):
    import uuid
    env = {**os.environ, "CLOUD_ENDPOINT": cloud.endpoint, "CLOUD_CONFIG": str(tmp_path / "x.toml"),
           "CLOUD_USERNAME": "admin", "CLOUD_PASSWORD": cloud.password("admin"), "CLOUD_PROJECT": ""}

    def run(*args, check=True):
        result = subprocess.run([sys.executable, "-m", "cloudclient.cli", *args], env=env,
                                capture_output=True, text=True, timeout=60)
        assert not check or result.returncode == 0, result.stderr
        return result

    project = f"cli-{uuid.uuid4().hex[:6]}"
    run("project", "create", project)
    assert project in [p["name"] for p in json.loads(run("project", "list", "-o", "json").stdout)]
    created = json.loads(run("user", "create", f"{project}-u", "--project", project, "--role", "reader",
                             "-o", "json").stdout)
    assert created[0]["password"] and created[0]["roles"] == [f"reader@{project}"]
    run("role", "add", f"{project}-u", "--project", project, "--role", "member")
    users = json.loads(run("user", "list", "-o", "json").stdout)
    assert [u["roles"] for u in users if u["name"] == f"{project}-u"] == [[f"member@{project}"]]

    run("quota", "set", project, "--instances", "3", "--ram", "2048")
    quota = json.loads(run("quota", "show", project, "-o", "json").stdout)
    assert quota["limits"]["instances"] == 3 and quota["limits"]["memory_mb"] == 2048
    assert "in use" in run("quota", "show", project).stdout

    flavor = f"f-{project}"
    run("flavor", "create", flavor, "--vcpus", "1", "--ram", "128", "--disk", "1", "--private",
        "--project", project)
    flavors = json.loads(run("flavor", "list", "-o", "json").stdout)
    assert [f["projects"] for f in flavors if f["name"] == flavor] == [[project]]
    run("flavor", "delete", flavor)

    revoked = run("token", "revoke", "--user", f"{project}-u")
    assert "revoked" in revoked.stderr
    run("role", "remove", f"{project}-u", "--project", project)
    run("user", "delete", f"{project}-u")
    run("project", "delete", project)
    assert project not in run("project", "list").stdout


def test_image_create_show_list_delete(cloudctl, tmp_path):
    import hashlib
    import uuid
    disk = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "1G"], check=True)
    name = f"cli-img-{uuid.uuid4().hex[:6]}"
    created = json.loads(cloudctl("image", "create", name, "--file", str(disk), "--format", "qcow2",
                                  "-o", "json").stdout)
    assert created["checksum_sha256"] == hashlib.sha256(disk.read_bytes()).hexdigest()
    assert (created["visibility"], created["disk_format"], created["status"]) == \
        ("private", "qcow2", "ACTIVE")
    assert "checksum_sha256" in cloudctl("image", "show", name).stdout
    assert name in cloudctl("image", "list").stdout
    refused = cloudctl("image", "create", name + "-raw", "--file", str(disk), "--format", "raw", check=False)
    assert refused.returncode == 1 and "declared raw but is a qcow2" in refused.stderr
    cloudctl("image", "delete", name)
    assert name not in cloudctl("image", "list").stdout


def test_create_with_user_data_file(cloudctl, store, tmp_path):
    from control.store import keys
    script = tmp_path / "init.sh"
    script.write_bytes(b"#!/bin/sh\necho from the cli\n")
    made = json.loads(cloudctl("instance", "create", "--flavor", "tiny", "--name", "cli-ud",
                               "--user-data", str(script), "-o", "json").stdout)
    scaled = json.loads(cloudctl("instance", "create", "--flavor", "tiny", "--name", "cli-uds",
                                 "--count", "2", "--user-data", str(script), "-o", "json").stdout)
    ids = [made["id"]] + [i["id"] for i in scaled]
    for instance_id in ids:
        project = store.get(keys.instance_index(instance_id)).value["project"]
        assert store.get(keys.user_data(project, instance_id)) is not None
    for instance_id in ids:
        cloudctl("instance", "delete", instance_id, "--wait")

    big = tmp_path / "big"
    big.write_bytes(b"x" * 65537)
    refused = cloudctl("instance", "create", "--flavor", "tiny", "--name", "cli-ud-big",
                       "--user-data", str(big), check=False)
    assert refused.returncode != 0 and "64 KiB" in refused.stderr
