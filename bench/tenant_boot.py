"""Tenant networks on one host, against the NAT network, in one run (JSON):

  - create RPC -> the guest's console shows its DHCP address (CLOUD-NET-OK), on a
    tenant network and on the host's NAT network, runs interleaved (tenant, NAT,
    tenant, ...) so both see the same machine load;
  - floating IP attach RPC -> the first ping reply from this machine (pinging
    every 10 ms, timestamped), median and max;
  - ping RTT from this machine to the floating IP (guests run under QEMU
    emulation: the guest's own reply dominates).

Two private clouds (tests/conftest.py start_cloud): the tenant one with
localcloud's tenant_network_settings under its own tag, external range and VNI
range, as tests/integration/test_tenant_networks.py has it.
"""

from __future__ import annotations

import ipaddress
import json
import re
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cloudapi.v1 import compute_pb2 as pb  # noqa: E402
from cloudapi.v1 import network_pb2 as npb  # noqa: E402

from localcloud.cloud import tenant_network_settings  # noqa: E402
from tests.conftest import ApiClient, login, start_cloud, stop_cloud  # noqa: E402
from tests.integration.test_tenant_networks import free_external_cidr  # noqa: E402

RUNS = 5


def wait_for(check, timeout_s: float = 120.0, interval: float = 0.05) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return time.monotonic()
        time.sleep(interval)
    raise TimeoutError


def boot(api: ApiClient, name: str) -> tuple[float, str]:
    """create RPC -> CLOUD-NET-OK on the console; the instance's id."""
    started = time.monotonic()
    created = api.instances.CreateInstance(pb.CreateInstanceRequest(name=name, flavor="tiny"))
    console = pb.GetConsoleOutputRequest(id_or_name=created.id)
    seen = wait_for(lambda: "CLOUD-NET-OK ip=" in api.instances.GetConsoleOutput(console).output)
    return seen - started, created.id


def delete(api: ApiClient, instance_id: str) -> None:
    api.instances.DeleteInstance(pb.DeleteInstanceRequest(id_or_name=instance_id))
    api.wait_gone(instance_id)


def attach_to_reply(api: ApiClient, address: str, instance_id: str) -> float:
    pinger = subprocess.Popen(["ping", "-n", "-D", "-i", "0.01", "-W", "1", "-w", "15", address],
                              stdout=subprocess.PIPE, text=True)
    time.sleep(0.05)
    attach_at = time.time()
    api.networks.AttachFloatingIp(npb.AttachFloatingIpRequest(address=address, instance=instance_id))
    try:
        assert pinger.stdout is not None
        for line in pinger.stdout:
            if (m := re.match(r"\[(\d+\.\d+)\] \d+ bytes from", line)):
                return float(m.group(1)) - attach_at
        raise TimeoutError(f"no reply from {address}")
    finally:
        pinger.kill()
        pinger.wait()


def main() -> None:
    tag = "b" + uuid.uuid4().hex[:2]
    external = free_external_cidr()
    control, agent = tenant_network_settings(tag=tag, external_cidr=external, external_bridge=f"cx{tag}",
                                             vni_range=(16_500_000, 16_509_999))
    tenant_cloud, _ = start_cloud("bench-tenant", control_settings=control, agent_settings=agent)
    nat_cloud = None
    try:
        nat_cloud, _ = start_cloud("bench-nat")
        tenant, nat = login(tenant_cloud), login(nat_cloud)
        times: dict[str, list[float]] = {"tenant": [], "nat": []}
        for run in range(RUNS):
            for kind, api in (("tenant", tenant), ("nat", nat)):
                took, instance_id = boot(api, f"bench-{kind}-{run}")
                times[kind].append(took)
                delete(api, instance_id)

        took, guest = boot(tenant, "bench-fip")
        address = tenant.networks.CreateFloatingIp(npb.CreateFloatingIpRequest(
            request_id=str(uuid.uuid4()))).address
        assert ipaddress.ip_address(address) in ipaddress.ip_network(external)
        attach: list[float] = []
        for _ in range(RUNS):
            attach.append(attach_to_reply(tenant, address, guest))
            tenant.networks.DetachFloatingIp(npb.FloatingIpRequest(address=address))
            wait_for(lambda: subprocess.run(["ping", "-n", "-c", "1", "-W", "0.3", address],
                                            capture_output=True).returncode != 0, timeout_s=10)
        tenant.networks.AttachFloatingIp(npb.AttachFloatingIpRequest(address=address, instance=guest))
        wait_for(lambda: subprocess.run(["ping", "-n", "-c", "1", "-W", "0.3", address],
                                        capture_output=True).returncode == 0, timeout_s=10)
        out = subprocess.run(["ping", "-n", "-q", "-c", "50", "-i", "0.05", address],
                             capture_output=True, text=True).stdout
        rtt = [float(x) for x in re.search(r"= ([\d.]+)/([\d.]+)/([\d.]+)/", out).groups()]
        delete(tenant, guest)
        print(json.dumps({
            "runs": RUNS,
            "create_to_dhcp_address_s": {
                kind: {"median": round(statistics.median(v), 2), "min": round(min(v), 2),
                       "max": round(max(v), 2)} for kind, v in times.items()},
            "floating_ip_attach_to_first_reply_s": {"median": round(statistics.median(attach), 3),
                                                    "max": round(max(attach), 3)},
            "ping_rtt_host_to_floating_ip_ms": {"min": rtt[0], "avg": rtt[1], "max": rtt[2]},
        }, indent=2))
    finally:
        stop_cloud(tenant_cloud, "bench-tenant")
        if nat_cloud is not None:
            stop_cloud(nat_cloud, "bench-nat")


if __name__ == "__main__":
    main()
