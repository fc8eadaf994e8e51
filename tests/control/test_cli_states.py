"""cloudctl reads an instance's state from the API's enums and allowed_actions, not
from rules of its own: `instance show` lists the allowed actions, a refused
operation says what is allowed instead, --wait ends on the enums."""

import json
import os
import subprocess
import sys
import time
import uuid

import pytest

pytestmark = pytest.mark.usefixtures("cloud")

# Measured here: the boot line that follows acpid (a stop is clean from then on) 3-5 s
# after ACTIVE, bounded for a loaded machine.
CONSOLE_S = 60


@pytest.fixture
def cloudctl(cloud, tmp_path):
    env = {**os.environ, "CLOUD_ENDPOINT": cloud.endpoint,
           "CLOUD_USERNAME": "demo", "CLOUD_PASSWORD": cloud.password("demo"),
           "CLOUD_CONFIG": str(tmp_path / "absent.toml"), "COLUMNS": "200"}

    def run(*args, check=True):
        result = subprocess.run([sys.executable, "-m", "cloudclient.cli", *args], env=env,
                                capture_output=True, text=True, timeout=300)
        if check and result.returncode != 0:
            raise AssertionError(f"cloudctl {' '.join(args)} failed:\n{result.stderr}")
        return result
    return run


def show(cloudctl, name: str) -> dict:
    return json.loads(cloudctl("instance", "show", name, "-o", "json").stdout)


def test_states_and_allowed_actions_through_cloudctl(cloudctl):
    name = f"cli-states-{uuid.uuid4().hex[:6]}"
    created = json.loads(cloudctl("instance", "create", "--flavor", "tiny", "--name", name,
                                  "--wait", "-o", "json").stdout)
    try:
        # -o json: the string fields as before, the enums and allowed_actions beside them.
        assert created["status"] == "ACTIVE" and created["status_enum"] == "INSTANCE_STATUS_ACTIVE"
        assert created["vm_state_enum"] == "VM_STATE_ACTIVE"
        assert created["task_state"] == "" and created["task_state_enum"] == "TASK_STATE_NONE"
        assert created["allowed_actions"] == ["stop", "reboot", "scale", "resize", "delete"]

        table = cloudctl("instance", "show", name).stdout
        assert "allowed_actions" in table and "stop, reboot, scale, resize, delete" in table

        # Refused by the API (FAILED_PRECONDITION), then what it would accept.
        refused = cloudctl("instance", "start", name, check=False)
        assert refused.returncode == 1 and "Traceback" not in refused.stderr
        lines = refused.stderr.strip().splitlines()
        assert "FAILED_PRECONDITION" in lines[0]
        assert lines[1] == f"{name} is ACTIVE; allowed now: stop, reboot, scale, resize, delete"

        # A clean stop needs the guest's acpid: its CLOUD-RESOURCES line comes after it.
        deadline = time.monotonic() + CONSOLE_S
        while "CLOUD-RESOURCES" not in cloudctl("instance", "console", name).stdout:
            assert time.monotonic() < deadline, "no CLOUD-RESOURCES line on the console"
            time.sleep(1)
        # --wait follows the operation until no task is in flight (TASK_STATE_NONE).
        stopped = json.loads(cloudctl("instance", "stop", name, "--wait", "-o", "json").stdout)
        assert (stopped["status_enum"], stopped["task_state_enum"]) == (
            "INSTANCE_STATUS_SHUTOFF", "TASK_STATE_NONE")
        assert stopped["power_state_enum"] == "POWER_STATE_SHUTOFF"
        assert stopped["allowed_actions"] == ["start", "scale", "resize", "delete"]
        assert show(cloudctl, name)["allowed_actions"] == ["start", "scale", "resize", "delete"]
    finally:
        cloudctl("instance", "delete", name, "--wait", check=False)
