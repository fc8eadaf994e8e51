"""Tenant networks, in one run, printing one JSON object (`make bench-network`):

1. create RPC -> the guest has its DHCP address: real QEMU guests, one at a
   time, on a private cloud in tenant mode (tests/conftest.py start_cloud with
   localcloud's tenant_network_settings under its own device tag, external
   range, external bridge and VNI range, as tests/integration/
   test_tenant_networks.py has it), its agent on its own embedded libvirt
   (qemu:///embed, see real_guests). "Has its address" is the image's
   `CLOUD-NET-OK ip=<the fixed IP IPAM chose>` on the serial console, printed
   by udhcpc once the lease from the router's dnsmasq is configured.
2. `floating-ip attach` RPC -> the first ping reply from the external side:
   the last of those guests, its floating IP attached and detached repeatedly.
   On one host the external side is this machine's root namespace, reaching
   the floating IP through the cloud's external bridge (which carries the
   external gateway: external_host_gateway). Pings every 10 ms, timestamped
   (-D); between samples the IP is detached and the bench waits until it no
   longer answers.
   Then security groups: `rule create` (ingress icmp in the default group) RPC
   -> the first reply, and `rule delete` RPC -> no reply, the same way.
3. ping RTT and TCP throughput endpoint to endpoint, on one host and across two
   hosts (VXLAN over a veth underlay), and on one host between two NICs
   behind the firewall (security group "open": the TCP runs go through its
   rules), each against the same two endpoints on one plain Linux bridge.
   Namespace endpoints, not guests (a guest under QEMU
   emulation would measure QEMU, not the network): tests/compute_agent/
   tenant_lab.py's approach, with its Host (the agent's TenantNetworking in a
   forked child that entered a "host" namespace) and its guest namespaces (a
   veth on the network's bridge, MTU 1450 as DHCP gives guests). The baseline
   is a namespace holding one plain bridge, its two endpoints made exactly as
   the guests are (MTU 1450, no IPv6). Cases run interleaved (round after
   round) so all see the same machine load. TCP: Python sockets, a fixed
   number of bytes, timed by the sender from connect to the receiver's
   one-byte acknowledgement after it read everything.

Everything this makes is named with a random tag ("bnw-<tag>-" namespaces, the
cloud's "n<tag>" devices) and removed at the end, on failure too.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cloudapi.v1 import compute_pb2 as pb  # noqa: E402
from cloudapi.v1 import network_pb2 as npb  # noqa: E402
from cloudapi.v1 import security_group_pb2 as spb  # noqa: E402
from compute_agent.tenant.firewall import Firewall, tap_name  # noqa: E402
from compute_agent.tenant.model import HostNetworks, Rule, SecurityGroup  # noqa: E402
from compute_agent.tenant.networking import TenantNetworking  # noqa: E402

from localcloud.cloud import tenant_network_settings  # noqa: E402
from tests.compute_agent.tenant_lab import MTU, Topology, network, port, sh  # noqa: E402
from tests.conftest import ApiClient, login, start_cloud, stop_cloud  # noqa: E402
from tests.integration.test_tenant_networks import free_external_cidr  # noqa: E402

GUESTS = 3               # real guests booted, one at a time
ATTACHES = 20            # floating IP attach samples
RULES = 20               # security group rule create/delete samples
ROUNDS = 5               # interleaved rounds of the namespace measurements
PINGS = 20               # per case and round: ping -c 20 -i 0.01
TCP_BYTES = 2**30        # per TCP run (1 GiB)
CONSOLE_TIMEOUT_S = 120


# ------------------------------------------------------------------ helpers

def wait_for(check, timeout_s: float, interval: float = 0.05, what: str = "") -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return time.monotonic()
        time.sleep(interval)
    raise TimeoutError(f"after {timeout_s} s: {what or check}")


def p99(values: list[float]) -> float:
    """Nearest rank: with 20 samples, the largest."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


def summary(values: list[float], digits: int = 3) -> dict[str, float]:
    """Median, min, max and the count; p99 too when there are 10 samples or more."""
    found = {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
             "max": round(max(values), digits), "n": len(values)}
    if len(values) >= 10:
        found["p99"] = round(p99(values), digits)
    return found


def answers(address: str) -> bool:
    return subprocess.run(["ping", "-n", "-c", "1", "-W", "0.3", address],
                          capture_output=True).returncode == 0


# ------------------------------------------------------------------ 1, 2: real guests

def boot(api: ApiClient, name: str) -> tuple[float, str, str]:
    """create RPC -> CLOUD-NET-OK with the fixed IP IPAM chose; (seconds, id, fixed IP)."""
    started = time.monotonic()
    created = api.instances.CreateInstance(pb.CreateInstanceRequest(name=name, flavor="tiny"))
    fixed_ip = created.nics[0].fixed_ip
    console = pb.GetConsoleOutputRequest(id_or_name=created.id)

    def leased() -> bool:
        if f"CLOUD-NET-OK ip={fixed_ip}" in api.instances.GetConsoleOutput(console).output:
            return True
        now = api.instances.GetInstance(pb.GetInstanceRequest(id_or_name=created.id))
        if now.status == "ERROR":  # stop at once, saying why
            raise RuntimeError(f"{name} went to ERROR: {now.fault.message}")
        return False
    seen = wait_for(leased, CONSOLE_TIMEOUT_S, what=f"CLOUD-NET-OK ip={fixed_ip} on {name}'s console")
    return seen - started, created.id, fixed_ip


def first_reply_after(address: str, act) -> float:
    """Seconds from act() (an RPC) to the first ping reply from `address`, pinged
    every 10 ms, timestamped (-D)."""
    pinger = subprocess.Popen(["ping", "-n", "-D", "-i", "0.01", "-W", "1", "-w", "15", address],
                              stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.05)
        acted_at = time.time()
        act()
        assert pinger.stdout is not None
        for line in pinger.stdout:
            if (m := re.match(r"\[(\d+\.\d+)\] \d+ bytes from", line)):
                return float(m.group(1)) - acted_at
        raise TimeoutError(f"no reply from {address} within 15 s")
    finally:
        pinger.kill()
        pinger.wait()


def rule_to_effect(api: ApiClient, address: str) -> tuple[list[float], list[float]]:
    """A guest behind `address` (floating IP attached), in the default group
    alone: `rule create` (ingress icmp) RPC -> the first ping reply; `rule
    delete` RPC -> pings unanswered. Seconds, RULES samples each."""
    created, deleted = [], []
    for _ in range(RULES):
        rule: list[spb.SecurityGroupRule] = []

        def create(made: list = rule) -> None:
            made.append(api.security_groups.CreateSecurityGroupRule(spb.CreateSecurityGroupRuleRequest(
                security_group="default", direction="ingress", protocol="icmp")))
        created.append(first_reply_after(address, create))
        started = time.monotonic()
        api.security_groups.DeleteSecurityGroupRule(spb.DeleteSecurityGroupRuleRequest(id=rule[0].id))
        silent = wait_for(lambda: not answers(address), 10, interval=0, what=f"{address} silent")
        deleted.append(silent - started)
    return created, deleted


def attach_to_reply(api: ApiClient, address: str, instance_id: str) -> tuple[float, float]:
    """(attach RPC -> first ping reply, attach RPC's own duration), seconds."""
    pinger = subprocess.Popen(["ping", "-n", "-D", "-i", "0.01", "-W", "1", "-w", "15", address],
                              stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.05)
        attach_at = time.time()
        api.networks.AttachFloatingIp(npb.AttachFloatingIpRequest(address=address, instance=instance_id))
        returned = time.time() - attach_at
        assert pinger.stdout is not None
        for line in pinger.stdout:
            if (m := re.match(r"\[(\d+\.\d+)\] \d+ bytes from", line)):
                return float(m.group(1)) - attach_at, returned
        raise TimeoutError(f"no reply from {address} within 15 s of its attach")
    finally:
        pinger.kill()
        pinger.wait()


def real_guests() -> dict:
    tag = "n" + uuid.uuid4().hex[:2]
    external = free_external_cidr()
    low = random.randrange(1_000_000, 16_000_000, 10_000)
    control, agent = tenant_network_settings(tag=tag, external_cidr=external, external_bridge=f"cx{tag}",
                                             vni_range=(low, low + 9_999))
    # The agent's own embedded QEMU driver (as tests/multihost has it), not the
    # machine's libvirtd: its guests die with nobody else's restart of that.
    # Serial output goes straight to its file (stdio_handler "file"), not
    # through virtlogd.
    libvirt_root = Path(tempfile.mkdtemp(prefix="bench-network-libvirt-"))
    libvirt_root.chmod(0o755)  # QEMU, running unprivileged, reads its files below
    (libvirt_root / "etc").mkdir()
    (libvirt_root / "etc" / "qemu.conf").write_text('stdio_handler = "file"\n')
    agent = {**agent, "libvirt_uri": f"qemu:///embed?root={libvirt_root}", "virt_type": "qemu"}
    made: list[str] = []
    try:
        cloud, _ = start_cloud("bench-network", control_settings=control, agent_settings=agent)
    except BaseException:
        shutil.rmtree(libvirt_root, ignore_errors=True)
        raise
    try:
        api = login(cloud)
        boots: list[float] = []
        for n in range(GUESTS):
            took, instance_id, _ = boot(api, f"bench-net-{n}")
            made.append(instance_id)
            boots.append(took)
            if n < GUESTS - 1:  # one guest at a time (2 cores); the last one stays
                api.instances.DeleteInstance(pb.DeleteInstanceRequest(id_or_name=instance_id))
                api.wait_gone(instance_id)
                made.remove(instance_id)
        guest = made[-1]

        address = api.networks.CreateFloatingIp(npb.CreateFloatingIpRequest(
            request_id=str(uuid.uuid4()))).address
        assert ipaddress.ip_address(address) in ipaddress.ip_network(external)
        assert not answers(address), "answers before any attach"
        # The default group lets in only its members: pings from outside need a rule.
        icmp = api.security_groups.CreateSecurityGroupRule(spb.CreateSecurityGroupRuleRequest(
            security_group="default", direction="ingress", protocol="icmp"))
        first_reply: list[float] = []
        rpc: list[float] = []
        detach_to_silence: list[float] = []
        for _ in range(ATTACHES):
            reply, returned = attach_to_reply(api, address, guest)
            first_reply.append(reply)
            rpc.append(returned)
            started = time.monotonic()
            api.networks.DetachFloatingIp(npb.FloatingIpRequest(address=address))
            silent = wait_for(lambda: not answers(address), 10, interval=0, what=f"{address} silent")
            detach_to_silence.append(silent - started)
        api.networks.AttachFloatingIp(npb.AttachFloatingIpRequest(address=address, instance=guest))
        wait_for(lambda: answers(address), 10, what=f"{address} answers")
        out = subprocess.run(["ping", "-n", "-c", str(PINGS), "-i", "0.01", address],
                             capture_output=True, text=True).stdout
        rtt = [float(x) for x in re.findall(r"time=([\d.]+) ms", out)]
        api.security_groups.DeleteSecurityGroupRule(spb.DeleteSecurityGroupRuleRequest(id=icmp.id))
        wait_for(lambda: not answers(address), 10, what=f"{address} silent without the rule")
        rule_created, rule_deleted = rule_to_effect(api, address)
        api.networks.DetachFloatingIp(npb.FloatingIpRequest(address=address))
        api.networks.DeleteFloatingIp(npb.FloatingIpRequest(address=address))
        return {
            "create_to_dhcp_address_s": summary(boots, 2),
            "floating_ip_attach_to_first_reply_s": summary(first_reply),
            "floating_ip_attach_rpc_returns_s": summary(rpc),
            "floating_ip_detach_rpc_to_silence_s": summary(detach_to_silence),
            "ping_rtt_root_namespace_to_floating_ip_ms": {"median": round(statistics.median(rtt), 3),
                                                          "n": len(rtt)},
            "security_group_rule_create_to_effect_s": summary(rule_created),
            "security_group_rule_delete_to_effect_s": summary(rule_deleted),
        }
    finally:
        for instance_id in made:
            try:
                api.instances.DeleteInstance(pb.DeleteInstanceRequest(id_or_name=instance_id))
                api.wait_gone(instance_id)
            except Exception as exc:  # QEMU processes left are killed below
                print(f"deleting {instance_id}: {exc}", file=sys.stderr)
        qemus = embedded_qemu_pids(libvirt_root)
        stop_cloud(cloud, "bench-network")
        for pid in qemus:  # guests the API did not delete (a failed run): ours only
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(libvirt_root, ignore_errors=True)


def embedded_qemu_pids(root: Path) -> list[int]:
    """The QEMU processes of the embedded libvirt root (from its pid files)."""
    pids = []
    for path in root.glob("**/*.pid"):
        try:
            pid = int(path.read_text().strip())
            if b"qemu-system" in Path(f"/proc/{pid}/cmdline").read_bytes():
                pids.append(pid)
        except (OSError, ValueError):
            continue
    return pids


# ------------------------------------------------------------------ 3: namespace endpoints

class BenchTopology(Topology):
    """tenant_lab's Topology, its namespaces named for this benchmark."""

    def netns(self, name: str) -> str:
        ns = f"bnw-{self.tag}-{name}"
        sh("ip", "netns", "add", ns)
        self.namespaces.append(ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        return ns


def plain_bridge(topo: BenchTopology) -> tuple[str, str]:
    """Two endpoints (10.0.0.2, 10.0.0.3: MTU 1450, no IPv6) on one plain bridge
    in a namespace of its own; the endpoints' namespaces."""
    box = topo.netns("plain")
    sh("ip", "-n", box, "link", "add", "br0", "type", "bridge")
    sh("ip", "-n", box, "link", "set", "br0", "addrgenmode", "none", "mtu", str(MTU), "up")
    ends = []
    for n in (2, 3):
        ns = topo.netns(f"pe{n}")
        sh("ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", f"pv{n}", "netns", box)
        sh("ip", "-n", ns, "link", "set", "eth0", "mtu", str(MTU), "addrgenmode", "none")
        sh("ip", "-n", ns, "addr", "add", f"10.0.0.{n}/24", "dev", "eth0")
        sh("ip", "-n", box, "link", "set", f"pv{n}", "mtu", str(MTU), "addrgenmode", "none", "master", "br0")
        sh("ip", "-n", box, "link", "set", f"pv{n}", "up")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        ends.append(ns)
    return ends[0], ends[1]


def ping_rtts(ns: str, address: str) -> list[float]:
    out = sh("ip", "netns", "exec", ns, "ping", "-n", "-c", str(PINGS), "-i", "0.01", address)
    return [float(x) for x in re.findall(r"time=([\d.]+) ms", out)]


RECEIVE = """
import socket, sys
s = socket.create_server(("0.0.0.0", 0))
print(s.getsockname()[1], flush=True)
c, _ = s.accept()
n = 0
while (b := c.recv(1 << 20)):
    n += len(b)
c.sendall(b"k")
print(n, flush=True)
"""

SEND = """
import socket, sys, time
address, port, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
chunk = b"x" * (1 << 20)
t0 = time.perf_counter()
c = socket.create_connection((address, port))
left = total
while left > 0:
    c.sendall(chunk[:min(left, len(chunk))])
    left -= len(chunk)
c.shutdown(socket.SHUT_WR)
assert c.recv(1) == b"k"
print(time.perf_counter() - t0)
"""


def tcp_gbits(src: str, dst: str, address: str) -> float:
    receiver = subprocess.Popen(["ip", "netns", "exec", dst, sys.executable, "-c", RECEIVE],
                                stdout=subprocess.PIPE, text=True)
    try:
        assert receiver.stdout is not None
        listen_port = receiver.stdout.readline().strip()
        seconds = float(sh("ip", "netns", "exec", src, sys.executable, "-c", SEND,
                           address, listen_port, str(TCP_BYTES)))
        received = int(receiver.stdout.readline())
        assert received == TCP_BYTES, (received, TCP_BYTES)
        return TCP_BYTES * 8 / seconds / 1e9
    finally:
        receiver.kill()
        receiver.wait()


# The firewalled case's group: TCP and ICMP in from anyone, anything out (the
# packets of the TCP runs go through its rules: the opener's every packet).
OPEN = SecurityGroup("open", (Rule("tcp-in", "ingress", "tcp"), Rule("icmp-in", "ingress", "icmp"),
                              Rule("all-out", "egress")))


def firewalled(vtep: str, name: str, state: Path) -> TenantNetworking:
    """A host as the agent has it with security_groups on (its default)."""
    return TenantNetworking(vtep, name, state, firewall=Firewall(vtep))


def namespace_endpoints() -> dict:
    vni, walled = 4242, 4243
    records = Path(tempfile.mkdtemp(prefix="bench-network-"))  # the hosts' NIC records (none)
    topo = BenchTopology(records)
    try:
        topo.underlay(firewalled)
        net = network(vni, port(2, "h1", vni), port(3, "h1", vni), port(4, "h2", vni))
        # A second network whose two NICs on h1 are in OPEN: their taps are the
        # firewall's (tap_name), so its rules apply; the first network's taps
        # are not, so only conntrack (br_netfilter) sees their frames.
        walled_ports = tuple(replace(port(n, "h1", walled), security_group_ids=("open",)) for n in (2, 3))
        net_walled = network(walled, *walled_ports)
        for host in topo.hosts.values():
            host.converge(HostNetworks(networks=(net, net_walled), security_groups=(OPEN,)))
        ends = {n: topo.guest(f"g{n}", "h1" if n < 4 else "h2", net, port(n, "h1" if n < 4 else "h2", vni))
                for n in (2, 3, 4)}
        walled_ends = [topo.guest(f"w{p.fixed_ip.rsplit('.', 1)[1]}", "h1", net_walled, p,
                                  tap=tap_name(p.mac)) for p in walled_ports]
        plain_a, plain_b = plain_bridge(topo)
        cases = {
            "plain_bridge": (plain_a, plain_b, "10.0.0.3"),
            "same_host": (ends[2], ends[3], "10.0.0.3"),
            "same_host_firewalled": (walled_ends[0], walled_ends[1], "10.0.0.3"),
            "cross_host_vxlan": (ends[2], ends[4], "10.0.0.4"),
        }
        for src, _, address in cases.values():  # ARP, warm caches: not counted
            sh("ip", "netns", "exec", src, "ping", "-n", "-c", "3", "-i", "0.01", "-W", "1", address)
        rtts: dict[str, list[float]] = {case: [] for case in cases}
        gbits: dict[str, list[float]] = {case: [] for case in cases}
        for _ in range(ROUNDS):
            for case, (src, dst, address) in cases.items():
                rtts[case] += ping_rtts(src, address)
                gbits[case].append(tcp_gbits(src, dst, address))
        rtt = {case: statistics.median(v) for case, v in rtts.items()}
        tput = {case: statistics.median(v) for case, v in gbits.items()}
        base_rtt, base_tput = rtt["plain_bridge"], tput["plain_bridge"]
        return {
            "ping_rtt_ms": {case: {"median": round(v, 4), "n": len(rtts[case])} for case, v in rtt.items()},
            "tcp_gbit_s": {case: {"median": round(v, 2), "runs": [round(x, 2) for x in gbits[case]]}
                           for case, v in tput.items()},
            "ratio_to_plain_bridge": {
                case: {"ping_rtt": round(rtt[case] / base_rtt, 2),
                       "tcp_throughput": round(tput[case] / base_tput, 2)}
                for case in ("same_host", "same_host_firewalled", "cross_host_vxlan")},
            "cross_host_over_same_host_throughput": round(tput["cross_host_vxlan"] / tput["same_host"], 2),
        }
    finally:
        topo.close()
        shutil.rmtree(records, ignore_errors=True)
        left = [ns for ns in sh("ip", "netns", "list").split() if ns.startswith(f"bnw-{topo.tag}")]
        if left:
            print(f"namespaces left: {left}", file=sys.stderr)


# ------------------------------------------------------------------ main

def main() -> None:
    lab = namespace_endpoints()
    guests = real_guests()
    attach = guests["floating_ip_attach_to_first_reply_s"]
    cross_over_same = lab["cross_host_over_same_host_throughput"]
    print(json.dumps({
        "sources": {
            "real_guests": ["create_to_dhcp_address_s", "floating_ip_attach_to_first_reply_s",
                            "floating_ip_attach_rpc_returns_s", "floating_ip_detach_rpc_to_silence_s",
                            "ping_rtt_root_namespace_to_floating_ip_ms",
                            "security_group_rule_create_to_effect_s",
                            "security_group_rule_delete_to_effect_s"],
            "namespace_endpoints": ["ping_rtt_ms", "tcp_gbit_s", "ratio_to_plain_bridge",
                                    "cross_host_over_same_host_throughput"],
        },
        "setup": {"guests_booted": GUESTS, "attach_samples": ATTACHES, "rule_samples": RULES,
                  "rounds": ROUNDS,
                  "pings_per_case_and_round": PINGS, "tcp_bytes_per_run": TCP_BYTES,
                  "endpoint_mtu": MTU, "cores": 2,
                  "guests": "QEMU emulation (no KVM), the agent's embedded libvirt (qemu:///embed)"},
        **guests,
        **lab,
        "targets": {
            "attach_effective_within_1s": {"median_met": attach["median"] <= 1.0,
                                           "p99_met": attach["p99"] <= 1.0},
            "cross_host_throughput_at_least_half_of_same_host": cross_over_same >= 0.5,
            "rule_in_effect_median_under_100ms_p99_under_300ms": {
                "median_met": guests["security_group_rule_create_to_effect_s"]["median"] < 0.1,
                "p99_met": guests["security_group_rule_create_to_effect_s"]["p99"] < 0.3},
        },
    }, indent=2))


if __name__ == "__main__":
    main()
