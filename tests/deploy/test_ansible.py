"""The Ansible deployment (ansible/), for real: the all-in-one inventory deploys the
cloud onto this machine (no systemd here: the roles' `direct` fallback runs the
rendered units' commands), a second run changes nothing, an instance created through
the deployed API with `cloudctl` reaches ACTIVE, and teardown.yml removes it all.

Everything lives under a temporary root with its own ports (5205x), etcd, Redis,
libvirt network (cloud-net-ansible, cloudbr9, 10.219.0.0/24) and host name, so the
test clouds of other tests are not disturbed. Timings go to test-output/ansible.txt.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ANSIBLE = REPO / "ansible"
VENV = REPO / ".venv-ansible"
PORTS = {"etcd_client": 52050, "etcd_peer": 52051, "redis": 52052, "api": 52053,
         "agent_api": 52054, "agent": 52055, "dashboard": 52056}


def ensure_ansible() -> Path:
    """The pinned ansible-core (ansible/requirements.lock) in its own venv: `make ansible-venv`."""
    playbook = VENV / "bin" / "ansible-playbook"
    if not playbook.exists():
        subprocess.run(["make", "-C", str(REPO), "ansible-venv"], check=True)
    return playbook


def run_playbook(playbook: Path, name: str, varsfile: Path, log: Path) -> tuple[str, float]:
    start = time.monotonic()
    result = subprocess.run(
        [str(playbook), "-i", "inventories/local", name, "-e", f"@{varsfile}"],
        cwd=ANSIBLE, capture_output=True, text=True, timeout=900,
        env={**os.environ, "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_NOCOLOR": "1"})
    log.write_text(result.stdout + result.stderr)
    assert result.returncode == 0, f"{name} failed, see {log}:\n{result.stdout[-4000:]}"
    return result.stdout, time.monotonic() - start


def recap_changed(output: str) -> int:
    match = re.search(r"^localhost\s*:.*\bchanged=(\d+)", output, re.M)
    assert match, output[-2000:]
    return int(match.group(1))


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.skipif(os.geteuid() != 0, reason="deploys system services: needs root")
def test_all_in_one_deploy_is_idempotent_and_serves_instances():
    busy = [p for p in PORTS.values() if not port_free(p)]
    assert not busy, f"ports in use: {busy}"
    playbook = ensure_ansible()
    out_dir = REPO / "test-output"
    out_dir.mkdir(exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="smallcloud-ansible-", dir="/tmp"))
    root.chmod(0o755)  # the etcd, redis and smallcloud users (and qemu) go below it
    settings = {
        "smallcloud_install_dir": f"{root}/opt", "smallcloud_config_dir": f"{root}/etc",
        "smallcloud_state_dir": f"{root}/var", "smallcloud_log_dir": f"{root}/log",
        "smallcloud_run_dir": f"{root}/run", "smallcloud_unit_dir": f"{root}/units",
        "smallcloud_secrets_dir": f"{root}/secrets", "smallcloud_host_name": "ansible-ci",
        "smallcloud_network_name": "cloud-net-ansible", "smallcloud_network_bridge": "cloudbr9",
        "smallcloud_network_cidr": "10.219.0.0/24",
        **{f"smallcloud_{k}_port": v for k, v in PORTS.items()},
    }
    varsfile = root / "vars.json"
    varsfile.write_text(json.dumps(settings))
    timings: dict[str, float] = {}
    try:
        out, timings["first run"] = run_playbook(playbook, "site.yml", varsfile,
                                                 out_dir / "ansible-run1.log")
        assert recap_changed(out) > 0
        out, timings["second run"] = run_playbook(playbook, "site.yml", varsfile,
                                                  out_dir / "ansible-run2.log")
        assert recap_changed(out) == 0, "the second run changed something:\n" + "\n".join(
            line for line in out.splitlines() if line.startswith(("TASK", "changed")))

        # Secrets were generated outside the repository, owner-only.
        assert (root / "secrets" / "pki" / "ca.key").stat().st_mode & 0o077 == 0
        password = (root / "secrets" / "admin-password").read_text().strip()
        assert len(password) >= 20
        # The units are real systemd units; the direct fallback runs their ExecStart.
        api_unit = (root / "units" / "smallcloud-api.service").read_text()
        assert f"ExecStart={root}/opt/venv/bin/python -m control.api.server" in api_unit

        start = time.monotonic()
        env = {**os.environ, "CLOUD_ENDPOINT": f"127.0.0.1:{PORTS['api']}",
               "CLOUD_USERNAME": "admin", "CLOUD_PASSWORD": password,
               "HOME": str(root)}  # no cloudctl config of the developer's
        cloudctl = [str(root / "opt" / "venv" / "bin" / "cloudctl")]
        created = subprocess.run(cloudctl + ["instance", "create", "--flavor", "tiny",
                                             "--name", "ansible-smoke", "--wait"],
                                 env=env, capture_output=True, text=True, timeout=300)
        assert created.returncode == 0, created.stdout + created.stderr
        shown = subprocess.run(cloudctl + ["instance", "show", "ansible-smoke", "-o", "json"],
                               env=env, capture_output=True, text=True, timeout=60, check=True)
        assert json.loads(shown.stdout)["status"] == "ACTIVE"
        deleted = subprocess.run(cloudctl + ["instance", "delete", "ansible-smoke", "--wait"],
                                 env=env, capture_output=True, text=True, timeout=300)
        assert deleted.returncode == 0, deleted.stdout + deleted.stderr
        timings["smoke (create --wait, delete --wait)"] = time.monotonic() - start
    finally:
        try:
            _, timings["teardown"] = run_playbook(playbook, "teardown.yml", varsfile,
                                                  out_dir / "ansible-teardown.log")
        finally:
            shutil.rmtree(root, ignore_errors=True)
            (out_dir / "ansible.txt").write_text(
                "".join(f"{k}: {v:.1f} s\n" for k, v in timings.items()))
            print(timings, file=sys.stderr)
    left = subprocess.run(["pgrep", "-f", str(root)], capture_output=True, text=True).stdout
    assert not left.strip(), f"processes left after teardown: {left}"
    nets = subprocess.run(["virsh", "-c", "qemu:///system", "net-list", "--all", "--name"],
                          capture_output=True, text=True, timeout=60).stdout.split()
    assert "cloud-net-ansible" not in nets, "teardown left the agent's network"
