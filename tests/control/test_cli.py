"""cloudctl against a real cloud, as a user runs it (a separate process)."""

import json
import os
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.usefixtures("cloud")


@pytest.fixture
def cloudctl(cloud, tmp_path):
    env = {**os.environ, "CLOUD_ENDPOINT": cloud.endpoint,
           "CLOUD_USERNAME": "demo", "CLOUD_PASSWORD": cloud.password("demo"),
           "CLOUD_CONFIG": str(tmp_path / "absent.toml"), "COLUMNS": "200"}

    def run(*args, check=True):
        result = subprocess.run([sys.executable, "-m", "control.cli", *args], env=env,
                                capture_output=True, text=True, timeout=300)
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

    deadline = time.monotonic() + 120
    while f"instance_id={instance['id']}" not in cloudctl("instance", "console", "cli-web1").stdout:
        assert time.monotonic() < deadline, "no boot marker on the console"
        time.sleep(1)

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
    result = subprocess.run([sys.executable, "-m", "control.cli", "flavor", "list"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "UNAVAILABLE" in result.stderr and "127.0.0.1:1" in result.stderr


def test_wait_exits_non_zero_on_error(cloudctl, store, tmp_path):
    from control.catalog import Catalog
    from tests.integration.test_spawn_failure import make_broken_image
    tmp_path.chmod(0o755)
    Catalog(store).register_image_dir(make_broken_image(tmp_path))
    result = cloudctl("instance", "create", "--flavor", "tiny", "--name", "cli-broken",
                      "--image", "broken-kernel", "--wait", check=False)
    assert result.returncode == 1
    assert "ERROR" in result.stdout + result.stderr
    cloudctl("instance", "delete", "cli-broken", "--wait")
