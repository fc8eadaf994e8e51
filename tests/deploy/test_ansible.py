"""The Ansible deployment (ansible/), for real: the all-in-one inventory deploys the
cloud onto this machine (no systemd here: the roles' `direct` fallback runs the
rendered units' commands), a second run changes nothing, an instance created through
the deployed API with `cloudctl` reaches ACTIVE, `add-compute.yml` adds a second
compute host (a second inventory host on this same machine, with its own host name,
directories, units, port and libvirt network) that registers and takes an instance,
etcd and Redis refuse clients without the deployment's certificate or password, and
teardown.yml removes it all.

Everything lives under a temporary root with its own ports (5205x), etcd, Redis,
libvirt networks (cloud-net-ansible, cloudbr9, 10.219.0.0/24; cloud-net-ansible2,
cloudbr8, 10.218.0.0/24) and host names, so the test clouds of other tests are not
disturbed. The test writes its own inventory (the layout of inventories/local).
Timings go to test-output/ansible.txt.
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
SECOND_AGENT_PORT = 52057
GROUPS = ("etcd", "redis", "control", "compute", "dashboard")


def ensure_ansible() -> Path:
    """The pinned ansible-core (ansible/requirements.lock) in its own venv: `make ansible-venv`."""
    playbook = VENV / "bin" / "ansible-playbook"
    if not playbook.exists():
        subprocess.run(["make", "-C", str(REPO), "ansible-venv"], check=True)
    return playbook


def write_inventory(directory: Path, settings: dict, second_compute: dict | None = None) -> Path:
    """inventories/local's layout (localhost in every group, under `smallcloud`;
    the settings in group_vars/smallcloud.yml, which beats the playbook's
    group_vars/all.yml where the inventory file's group variables would not)
    and, if given, a second compute host: ansible_connection local too, its own
    names as host variables (which beat every group's)."""
    groups: dict = {group: {"hosts": {"localhost": None}} for group in GROUPS}
    if second_compute:
        groups["compute"]["hosts"]["compute2"] = second_compute
    (directory / "group_vars").mkdir(parents=True, exist_ok=True)
    (directory / "group_vars" / "smallcloud.yml").write_text(json.dumps(
        {"ansible_connection": "local", "smallcloud_address": "127.0.0.1", **settings}))
    (directory / "hosts.yml").write_text(json.dumps({"smallcloud": {"children": groups}}))
    return directory  # (YAML is a superset of JSON)


def run_playbook(playbook: Path, name: str, inventory: Path, log: Path,
                 *args: str) -> tuple[str, float]:
    start = time.monotonic()
    result = subprocess.run(
        [str(playbook), "-i", str(inventory), name, *args],
        cwd=ANSIBLE, capture_output=True, text=True, timeout=900,
        env={**os.environ, "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_NOCOLOR": "1"})
    log.write_text(result.stdout + result.stderr)
    assert result.returncode == 0, f"{name} failed, see {log}:\n{result.stdout[-4000:]}"
    return result.stdout, time.monotonic() - start


def recap_changed(output: str, host: str = "localhost") -> int:
    match = re.search(rf"^{host}\s*:.*\bchanged=(\d+)", output, re.M)
    assert match, output[-2000:]
    return int(match.group(1))


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


class CloudCtl:
    """cloudctl as installed by the deployment, logged in as its admin."""

    def __init__(self, root: Path, password: str):
        self.command = [str(root / "opt" / "venv" / "bin" / "cloudctl")]
        self.env = {**os.environ, "CLOUD_ENDPOINT": f"127.0.0.1:{PORTS['api']}",
                    "CLOUD_USERNAME": "admin", "CLOUD_PASSWORD": password,
                    "HOME": str(root)}  # no cloudctl config of the developer's

    def __call__(self, *args: str) -> str:
        done = subprocess.run(self.command + list(args), env=self.env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, f"cloudctl {' '.join(args)}: {done.stdout}{done.stderr}"
        return done.stdout

    def json(self, *args: str):
        return json.loads(self(*args, "-o", "json"))


def wait_for_host(cloudctl: CloudCtl, name: str, timeout: float = 60) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    while True:
        hosts = {h["name"]: h for h in cloudctl.json("host", "list")}
        if hosts.get(name, {}).get("up"):
            return hosts
        assert time.monotonic() < deadline, f"host {name} did not register: {hosts}"
        time.sleep(1)


def check_units(unit_dir: Path) -> None:
    """The rendered units are what systemd accepts (no systemd runs here, but
    systemd-analyze reads unit files on its own): no unknown key, bad value or
    missing executable. systemd-analyze comes from scripts/programs.txt (Debian's
    systemd): missing, this check fails rather than pass unchecked."""
    assert shutil.which("systemd-analyze"), "systemd-analyze is missing: run scripts/install-deps.sh"
    units = sorted(str(u) for u in unit_dir.glob("*.service"))
    assert units
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", *units],
                          capture_output=True, text=True, timeout=120)
    ours = [line for line in (done.stdout + done.stderr).splitlines() if str(unit_dir) in line]
    assert done.returncode == 0 and not ours, done.stdout + done.stderr


def check_backends_refuse_strangers(root: Path) -> None:
    """etcd answers only the control plane's etcd client certificate (not no
    certificate, not a compute host's), Redis only with the password."""
    tls = root / "etc" / "tls"

    def etcd_health(*cert: str) -> bool:
        return subprocess.run(["etcdctl", f"--endpoints=https://127.0.0.1:{PORTS['etcd_client']}",
                               f"--cacert={tls}/etcd-ca.crt", "--dial-timeout=3s",
                               "--command-timeout=5s", *cert, "endpoint", "health"],
                              capture_output=True, text=True, timeout=30).returncode == 0

    assert etcd_health(f"--cert={tls}/etcd-client.crt", f"--key={tls}/etcd-client.key")
    assert not etcd_health()
    assert not etcd_health(f"--cert={tls}/ansible-ci.crt", f"--key={tls}/ansible-ci.key")
    ping = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(PORTS["redis"]), "ping"],
                          capture_output=True, text=True, timeout=30)
    assert "NOAUTH" in ping.stdout + ping.stderr, ping.stdout + ping.stderr


def check_dashboard_proxy(root: Path) -> None:
    """The dashboard answers through its proxy (nginx, workers as the service
    user), which refuses a body over 1 MiB on its Content-Length, before reading
    it; gunicorn listens only on its unix socket."""
    with socket.create_connection(("127.0.0.1", PORTS["dashboard"]), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 200") and b"Server: nginx" in answer, answer
    with socket.create_connection(("127.0.0.1", PORTS["dashboard"]), timeout=10) as sock:
        sock.sendall(b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2097152\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 413")
    assert (root / "var" / "dashboard" / "gunicorn.sock").is_socket()


@pytest.mark.skipif(os.geteuid() != 0, reason="deploys system services: needs root")
@pytest.mark.timeout(600)  # measured 223 s (first run 95 s, second 54 s, teardown 24 s)
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
    inventory = write_inventory(root / "inventory", settings)
    second = {"smallcloud_host_name": "ansible-ci-2", "smallcloud_unit_prefix": "smallcloud-c2",
              "smallcloud_config_dir": f"{root}/etc2", "smallcloud_state_dir": f"{root}/var2",
              "smallcloud_log_dir": f"{root}/log2", "smallcloud_run_dir": f"{root}/run2",
              "smallcloud_agent_port": SECOND_AGENT_PORT,
              "smallcloud_network_name": "cloud-net-ansible2",
              "smallcloud_network_bridge": "cloudbr8", "smallcloud_network_cidr": "10.218.0.0/24"}
    timings: dict[str, float] = {}
    try:
        out, timings["first run"] = run_playbook(playbook, "site.yml", inventory,
                                                 out_dir / "ansible-run1.log")
        assert recap_changed(out) > 0
        out, timings["second run"] = run_playbook(playbook, "site.yml", inventory,
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
        check_units(root / "units")
        check_backends_refuse_strangers(root)
        check_dashboard_proxy(root)

        start = time.monotonic()
        cloudctl = CloudCtl(root, password)
        cloudctl("instance", "create", "--flavor", "tiny", "--name", "ansible-smoke", "--wait")
        assert cloudctl.json("instance", "show", "ansible-smoke")["status"] == "ACTIVE"
        cloudctl("instance", "delete", "ansible-smoke", "--wait")
        timings["smoke (create --wait, delete --wait)"] = time.monotonic() - start

        # A second compute host joins: only it is changed, it registers over mTLS
        # with its own certificate and takes an instance.
        inventory = write_inventory(root / "inventory", settings, second)
        out, timings["add-compute"] = run_playbook(playbook, "add-compute.yml", inventory,
                                                   out_dir / "ansible-add-compute.log",
                                                   "-l", "compute2")
        assert recap_changed(out, "compute2") > 0
        assert not re.search(r"^localhost\s*:", out, re.M), "add-compute touched localhost"
        assert (root / "secrets" / "pki" / "hosts" / "ansible-ci-2.crt").exists()
        start = time.monotonic()
        hosts = wait_for_host(cloudctl, "ansible-ci-2")
        timings["second host registered"] = time.monotonic() - start
        assert hosts["ansible-ci"]["up"] and hosts["ansible-ci-2"]["up"]
        cloudctl("host", "disable", "ansible-ci")  # so the scheduler has one choice
        cloudctl("instance", "create", "--flavor", "tiny", "--name", "on-second", "--wait")
        shown = cloudctl.json("instance", "show", "on-second")
        assert (shown["status"], shown["host"]) == ("ACTIVE", "ansible-ci-2")
        cloudctl("instance", "delete", "on-second", "--wait")
        cloudctl("host", "enable", "ansible-ci")
        timings["add-compute + instance on it"] = time.monotonic() - start + timings["add-compute"]
    finally:
        try:
            _, timings["teardown"] = run_playbook(playbook, "teardown.yml", inventory,
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
    assert not {"cloud-net-ansible", "cloud-net-ansible2"} & set(nets), \
        "teardown left an agent's network"
