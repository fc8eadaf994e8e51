"""Tenant networks with real guests on one host: QEMU guests (libvirt, the busybox
image) on their project's network bridge, their fixed IPs from the router's
dnsmasq, each other, the other project's guests (same CIDR, not reachable), a
floating IP from this machine's root namespace, and nothing left behind.

The cloud is this module's own, with tenant networks on (localcloud's
tenant_network_settings, as `make up` has them) under a device tag, an external
range, an external bridge and a VNI range of its own, so it shares the machine
with any other cloud (`make up`'s included) without touching its devices. The
external bridge carries the external gateway on this machine (a single host:
external_host_gateway): the test reaches floating IPs from the root namespace,
and listens on the gateway address for what the guests send out. Nothing else
is reached: guests report what they saw on their serial consoles (user data
scripts with busybox ping and nc).
"""

from __future__ import annotations

import ipaddress
import json
import random
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid

import grpc
import pytest
from cloudapi.v1 import compute_pb2 as pb
from cloudapi.v1 import identity_pb2 as ipb
from cloudapi.v1 import network_pb2 as npb
from cloudapi.v1 import security_group_pb2 as spb
from compute_agent.tenant.router import run_dir, short_id

from control.store import keys
from localcloud.cloud import tenant_network_settings
from tests.conftest import login, start_cloud, stop_cloud, until

# Measured here (2 shared cores, QEMU emulation, one guest booting at a time):
# create RPC -> CLOUD-NET-OK on the console 4.6-9.9 s, 26 s once while another
# session's guests booted; the user data script's first lines 1-2 s later.
CONSOLE_TIMEOUT_S = 90
PORT = 7777            # the guests' listeners
OTHER_PROJECT = "tn-other"


# ---------------------------------------------------------------- the host's view

def ip_json(*args: str) -> list[dict]:
    out = subprocess.run(["ip", "-j", *args], capture_output=True, text=True, check=True).stdout
    return json.loads(out) if out.strip() else []


def free_external_cidr() -> str:
    """A /24 of 100.64.0.0/10 (carrier-grade NAT space: routed nowhere here) that
    no route of this machine overlaps; 100.64.0.0/24 is `make up`'s."""
    routes = [ipaddress.ip_network(r["dst"]) for r in ip_json("route", "show")
              if r.get("dst", "default") != "default"]
    for third in random.sample(range(1, 255), 254):
        candidate = ipaddress.ip_network(f"100.64.{third}.0/24")
        if not any(candidate.overlaps(route) for route in routes):
            return str(candidate)
    raise AssertionError("no free /24 in 100.64.0.0/10")


def leftovers(tag: str, router_dir: str, network_ids: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """What the kernel has of this cloud's tenant networks: bridges and VXLAN
    devices of its tag, the host ends of its routers' veths (of these networks),
    its router namespaces (each with its nft table), dnsmasq processes
    serving from its router directory, and its firewall's nft tables."""
    links = [link["ifname"] for link in ip_json("link", "show")]
    namespaces = [n["name"] for n in ip_json("netns", "list")]
    processes = subprocess.run(["pgrep", "-a", "dnsmasq"], capture_output=True, text=True).stdout
    veths = {f"{end}-{short_id(i)}" for i in network_ids for end in ("tr", "tg")}
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout.splitlines()
    return {"bridges": [n for n in links if re.fullmatch(rf"brq{tag}-\d+", n)],
            "firewall": [t for t in tables if t.endswith(f" cloudfw{tag}")],
            "vxlans": [n for n in links if re.fullmatch(rf"vxq{tag}-\d+", n)],
            "veths": [n for n in links if n in veths],
            "namespaces": [n for n in namespaces if n.startswith(f"qrouter{tag}-")],
            "dnsmasq": [line for line in processes.splitlines() if router_dir in line]}


def ping_replies(address: str, count: int = 3, wait_s: float = 1) -> int:
    out = subprocess.run(["ping", "-n", "-c", str(count), "-i", "0.2", "-W", str(wait_s), address],
                         capture_output=True, text=True).stdout
    found = re.search(r"(\d+) received", out)
    return int(found.group(1)) if found else 0


# ---------------------------------------------------------------- guests

def console(api, instance_id: str) -> list[str]:
    output = api.instances.GetConsoleOutput(pb.GetConsoleOutputRequest(id_or_name=instance_id)).output
    return [line.rstrip("\r") for line in output.split("\n")]


def wait_line(api, instance_id: str, pattern: str, timeout_s: float = CONSOLE_TIMEOUT_S) -> re.Match:
    """The first console line matching `pattern`, once there."""
    def look():
        return next((m for line in console(api, instance_id) if (m := re.search(pattern, line))), None)
    return until(look, timeout_s, what=lambda: f"{pattern!r} on the console of {instance_id}: "
                 + " | ".join(console(api, instance_id)[-25:]), every_s=0.2)


WAIT_NET = """while [ ! -s /run/cloud-net.ip ]; do usleep 100000; done
echo "NET ip=$(cat /run/cloud-net.ip) mtu=$(cat /sys/class/net/eth0/mtu)"
gw=$(ip route | awk '/^default/ {{print $3}}')
if ping -c 1 -W 2 "$gw" > /dev/null; then echo "GW-OK $gw"; else echo "GW-FAIL $gw"; fi
"""

# A listener: prints each line any connection brings.
LISTEN = """( while :; do nc -l -p {port} 2>&1 | while read -r line; do echo "GOT $line"; done; done ) &
echo LISTENING
"""

# A client of the listener at {peer}: pings it, sends one line, then another
# every 2 s for 5 minutes (the other project's guest, booted later, must see none).
TALK = """ok=0; i=0
while [ $i -lt 60 ]; do
  if ping -c 1 -W 1 {peer} > /dev/null; then ok=1; break; fi
  i=$((i + 1))
done
echo "PEER-PING ok=$ok"
i=0
while [ $i -lt 60 ]; do
  if echo "{message}" | nc -w 2 {peer} {port}; then echo "PEER-TCP sent"; break; fi
  sleep 1; i=$((i + 1))
done
( n=0; while [ $n -lt 150 ]; do n=$((n + 1)); sleep 2; echo "{message} $n" | nc -w 1 {peer} {port}; done ) \
  > /dev/null 2>&1 &
"""

# Every second a connection to the external gateway (this machine), saying who sent it.
TICK = """( n=0; while :; do n=$((n + 1)); echo "tick {name} $n" | nc -w 1 {gateway} {port}; sleep 1; done ) \
  > /dev/null 2>&1 &
echo TICKING
"""

# The other project's guest: tries the first project's guest's address from its own network.
PROBE = """r=0
for i in 1 2 3; do ping -c 1 -W 1 {target} > /dev/null && r=$((r + 1)); done
echo "PROBE-PING replies=$r"
if echo "from-{name}" | nc -w 2 {target} {port}; then echo "PROBE-TCP connected"
else echo "PROBE-TCP failed"; fi
"""


def script(*parts: str, **values: object) -> bytes:
    return ("#!/bin/sh\n" + "".join(parts).format(**values)).encode()


class Listener:
    """TCP on this machine's external gateway address: records (time, peer, line)
    of each connection the guests make out through their router."""

    def __init__(self, address: str, port: int = 0):
        self.seen: list[tuple[float, str, str]] = []
        self.sock = socket.create_server((address, port))
        self.port = self.sock.getsockname()[1]
        self.sock.settimeout(0.5)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                conn, (peer, _) = self.sock.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(2)
                try:
                    data = conn.recv(200).decode(errors="replace").strip()
                except OSError:
                    data = ""
            self.seen.append((time.monotonic(), peer, data))

    def peers_since(self, since: float, name: str) -> set[str]:
        return {peer for at, peer, data in self.seen if at >= since and data.startswith(f"tick {name} ")}

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=2)
        self.sock.close()


# ---------------------------------------------------------------- the cloud

@pytest.fixture(scope="module")
def tenant_cloud():
    tag = "t" + uuid.uuid4().hex[:2]
    external = free_external_cidr()
    low = random.randrange(1_000_000, 16_000_000, 10_000)
    control, agent = tenant_network_settings(tag=tag, external_cidr=external, external_bridge=f"cx{tag}",
                                             vni_range=(low, low + 9_999))
    cloud, store = start_cloud("tenant", control_settings=control, agent_settings=agent)
    net = {"tag": tag, "external": external, "bridge": f"cx{tag}",
           "gateway": str(next(ipaddress.ip_network(external).hosts())),
           "router_dir": f"{run_dir(cloud.host_name, tag)}/"}
    try:
        yield cloud, store, net
    finally:
        stop_cloud(cloud, "tenant")
        # `down` removed what the agent left (its stop leaves the data plane up).
        left = leftovers(tag, net["router_dir"])
        assert not any(left.values()) and not _exists(net["bridge"]), left


def _exists(device: str) -> bool:
    return subprocess.run(["ip", "link", "show", "dev", device], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def projects(tenant_cloud):
    cloud, _, _ = tenant_cloud
    admin = login(cloud, "admin")
    admin.identity.CreateProject(ipb.CreateProjectRequest(name=OTHER_PROJECT, description="tenant networks"))
    admin.identity.CreateUser(ipb.CreateUserRequest(
        name=OTHER_PROJECT, password=cloud.password(OTHER_PROJECT), project=OTHER_PROJECT, role="member"))
    return login(cloud), login(cloud, OTHER_PROJECT)


def create(api, name: str, user_data: bytes) -> tuple[pb.Instance, float]:
    """Create a guest (no network named: its project's default network); the
    instance as created, and the time of the create RPC."""
    started = time.monotonic()
    made = api.instances.CreateInstance(pb.CreateInstanceRequest(name=name, flavor="tiny",
                                                                 user_data=user_data))
    return made, started


@pytest.fixture(scope="module")
def guests(tenant_cloud, projects):
    """Three guests, one booting at a time (2 shared cores): a1 and a2 of the demo
    project on its default network, b1 of another project on its own default
    network, the same 10.0.0.0/24. a2 listens; a1 talks to a2 and, every second,
    to this machine's external gateway; b1 listens and tries a2's address."""
    cloud, store, net = tenant_cloud
    demo, other = projects
    boot_s: dict[str, float] = {}
    made: dict[str, pb.Instance] = {}
    listener = None

    def boot(api, name: str, user_data: bytes) -> pb.Instance:
        instance, started = create(api, name, user_data)
        made[name] = instance
        assert instance.nics and instance.nics[0].fixed_ip, "IPAM chose the address in the create"
        wait_line(api, instance.id, rf"CLOUD-NET-OK ip={re.escape(instance.nics[0].fixed_ip)}$")
        boot_s[name] = time.monotonic() - started
        return instance

    try:
        a2 = boot(demo, "tn-a2", script(WAIT_NET, LISTEN, port=PORT))
        wait_line(demo, a2.id, r"^LISTENING$")
        # The router made the external bridge, with the gateway address, before a2 booted.
        listener = Listener(net["gateway"])
        a1 = boot(demo, "tn-a1", script(WAIT_NET, LISTEN, TICK.replace("{port}", str(listener.port)), TALK,
                                        name="a1", gateway=net["gateway"], port=PORT,
                                        peer=a2.nics[0].fixed_ip, message="from-a1"))
        # b1 gets 10.0.0.2 as a2 did (the lowest free): it tries a1's address, which
        # is not its own; a1 sends to a2's, which is b1's too.
        b1 = boot(other, "tn-b1", script(WAIT_NET, LISTEN, PROBE, port=PORT, target=a1.nics[0].fixed_ip,
                                         name="b1"))
        print(f"\ncreate RPC -> CLOUD-NET-OK (tenant network), s: "
              f"{ {k: round(v, 1) for k, v in boot_s.items()} }, "
              f"median {statistics.median(boot_s.values()):.1f}", file=sys.stderr)
        yield {"a1": a1, "a2": a2, "b1": b1, "demo": demo, "other": other, "listener": listener,
               "boot_s": boot_s}
    finally:
        if listener is not None:
            listener.close()
        for name, instance in made.items():
            api = other if name.startswith("tn-b") else demo
            try:
                api.instances.DeleteInstance(pb.DeleteInstanceRequest(id_or_name=instance.id))
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    raise


# ---------------------------------------------------------------- the tests

def test_guests_get_their_fixed_ips_by_dhcp_and_reach_their_gateway(guests):
    for name in ("a1", "a2", "b1"):
        instance = guests[name]
        api = guests["other" if name == "b1" else "demo"]
        shown = api.instances.GetInstance(pb.GetInstanceRequest(id_or_name=instance.id))
        nic = shown.nics[0]
        assert shown.status == "ACTIVE" and nic.network_name == "default"
        wait_line(api, instance.id, r"^GW-(OK|FAIL) ")  # the user data script's first lines
        lines = console(api, instance.id)
        network = api.networks.GetNetwork(npb.GetNetworkRequest(id_or_name="default"))
        # The MTU DHCP gave (the underlay's less VXLAN's 50 bytes), applied by the guest.
        assert network.mtu == 1450
        assert f"CLOUD-NET-OK ip={nic.fixed_ip}" in lines and f"NET ip={nic.fixed_ip} mtu=1450" in lines
        assert f"GW-OK {network.gateway_ip}" in lines, lines[-20:]
        # `instance list` shows the address (Instance.addresses), not only `show`'s NICs.
        listed = {i.id: i for i in api.instances.ListInstances(pb.ListInstancesRequest()).instances}
        assert list(listed[instance.id].addresses) == [nic.fixed_ip]
    # Two projects, the same CIDR, on the same host.
    assert guests["demo"].networks.GetNetwork(npb.GetNetworkRequest(id_or_name="default")).cidr == \
        guests["other"].networks.GetNetwork(npb.GetNetworkRequest(id_or_name="default")).cidr


def test_guests_of_one_network_ping_each_other_and_talk_tcp(guests):
    demo, a1, a2 = guests["demo"], guests["a1"], guests["a2"]
    wait_line(demo, a1.id, r"^PEER-TCP sent$")
    assert "PEER-PING ok=1" in console(demo, a1.id)
    wait_line(demo, a2.id, r"^GOT from-a1$", timeout_s=10)  # sent already: on the console within a second


def test_the_other_projects_guest_cannot_reach_them(guests):
    """Project tn-other's b1, on its own 10.0.0.0/24, tries a1's address (another
    than its own): no ping reply, no connection, and a1's listener, up all
    along, reports nothing. a1 keeps sending to a2's address, which is b1's
    too: a2 gets every line, b1's listener not one."""
    other, demo, a1, a2, b1 = guests["other"], guests["demo"], guests["a1"], guests["a2"], guests["b1"]
    assert b1.nics[0].fixed_ip == a2.nics[0].fixed_ip != a1.nics[0].fixed_ip
    wait_line(other, b1.id, r"^PROBE-TCP ")
    lines = console(other, b1.id)
    probes = [line for line in lines if line.startswith(("PROBE-", "nc:"))]
    assert "PROBE-PING replies=0" in probes and "PROBE-TCP failed" in probes, probes
    assert not [line for line in console(demo, a1.id) if line.startswith("GOT ")]
    # a1's lines sent since b1 listens (every 2 s) reach a2, none b1.
    sent = len([line for line in console(demo, a2.id) if line.startswith("GOT from-a1")])
    until(lambda: len([line for line in console(demo, a2.id) if line.startswith("GOT from-a1")]) >= sent + 2,
          10, "two more lines from a1 on a2's console")  # one every 2 s
    assert not [line for line in console(other, b1.id) if line.startswith("GOT ")]
    assert not [line for line in console(demo, a2.id) if "from-b1" in line]


def test_floating_ip_answers_from_this_machine_until_detached(guests, tenant_cloud):
    cloud, store, net = tenant_cloud
    demo, a1, listener = guests["demo"], guests["a1"], guests["listener"]
    network = demo.networks.GetNetwork(npb.GetNetworkRequest(id_or_name="default"))
    snat_ip = store.get(keys.network(network.project, network.id)).value["snat_ip"]
    # Before: a1's connections out arrive from its network's SNAT address.
    before = time.monotonic()
    until(lambda: listener.peers_since(before, "a1"), 10, "a tick from a1")  # one a second
    assert listener.peers_since(before, "a1") == {snat_ip}

    # The default group lets in only its own members: pings from the external
    # network need a rule (made before the attach: the attach is what is timed).
    icmp = allow(demo, "icmp", remote_cidr=net["external"])
    floating = demo.networks.CreateFloatingIp(
        npb.CreateFloatingIpRequest(request_id=str(uuid.uuid4()))).address
    assert ipaddress.ip_address(floating) in ipaddress.ip_network(net["external"])
    assert ping_replies(floating, count=2) == 0, "not attached yet"
    # attach RPC -> the first reply from this machine: ping every 10 ms, timestamped.
    pinger = subprocess.Popen(["ping", "-n", "-D", "-i", "0.01", "-W", "1", "-w", "15", floating],
                              stdout=subprocess.PIPE, text=True)
    time.sleep(0.05)
    attach_at = time.time()
    attached = demo.networks.AttachFloatingIp(npb.AttachFloatingIpRequest(address=floating, instance=a1.id))
    assert attached.instance_id == a1.id and attached.fixed_ip == a1.nics[0].fixed_ip
    first_reply = None
    assert pinger.stdout is not None
    for line in pinger.stdout:  # ends by -w 15; the first reply came 0.08-0.32 s after the attach
        if (m := re.match(r"\[(\d+\.\d+)\] \d+ bytes from", line)):
            first_reply = float(m.group(1))
            break
    pinger.kill()
    pinger.wait()
    assert first_reply is not None, "no reply from the floating IP within 15 s of its attach"
    print(f"\nfloating IP attach RPC -> first ping reply: {first_reply - attach_at:.3f} s", file=sys.stderr)
    rtt = subprocess.run(["ping", "-n", "-q", "-c", "20", "-i", "0.05", floating],
                         capture_output=True, text=True).stdout
    assert " 0% packet loss" in rtt, rtt
    print(f"ping RTT host -> floating IP: {rtt.strip().splitlines()[-1]}", file=sys.stderr)
    shown = demo.instances.GetInstance(pb.GetInstanceRequest(id_or_name=a1.id))
    assert shown.nics[0].floating_ip == floating and floating in shown.addresses

    # Attached: a1's connections out arrive from its floating IP.
    since = time.monotonic()
    until(lambda: listener.peers_since(since, "a1"), 10, "a tick from a1 after the attach")
    assert listener.peers_since(since, "a1") == {floating}

    demo.networks.DetachFloatingIp(npb.FloatingIpRequest(address=floating))
    # The detach nudges the agent at once; allow a sync interval (5 s) for a missed nudge.
    until(lambda: ping_replies(floating, count=1) == 0, 10, f"{floating} stops answering")
    assert ping_replies(floating, count=3) == 0
    since = time.monotonic()
    until(lambda: listener.peers_since(since, "a1"), 10, "a tick from a1 after the detach")
    assert listener.peers_since(since, "a1") == {snat_ip}
    demo.networks.DeleteFloatingIp(npb.FloatingIpRequest(address=floating))
    demo.security_groups.DeleteSecurityGroupRule(spb.DeleteSecurityGroupRuleRequest(id=icmp.id))


def allow(api, protocol: str, port: int = 0, remote_cidr: str = "") -> spb.SecurityGroupRule:
    """An ingress rule in the project's default group."""
    return api.security_groups.CreateSecurityGroupRule(spb.CreateSecurityGroupRuleRequest(
        security_group="default", direction="ingress", protocol=protocol, port_min=port,
        remote_cidr=remote_cidr, request_id=str(uuid.uuid4())))


def reaches(address: str, port: int, message: str) -> bool:
    """Whether a TCP connection from this machine to address:port opens and takes `message`."""
    try:
        with socket.create_connection((address, port), timeout=1) as conn:
            conn.sendall(f"{message}\n".encode())
        return True
    except OSError:
        return False


def test_a_rule_opens_a_port_to_the_outside_and_its_delete_closes_it(guests, tenant_cloud):
    """a2 listens on PORT behind a floating IP. From this machine (the external
    network): closed under the default group; open once a rule allows it, in
    effect within 1 s of the RPC (the rule's hosts are nudged); closed again
    once the rule is deleted. Each accepted connection's line reaches a2's console."""
    _, _, net = tenant_cloud
    demo, a2 = guests["demo"], guests["a2"]
    floating = demo.networks.CreateFloatingIp(
        npb.CreateFloatingIpRequest(request_id=str(uuid.uuid4()))).address
    demo.networks.AttachFloatingIp(npb.AttachFloatingIpRequest(address=floating, instance=a2.id))
    try:
        # The floating IP's NAT is in place within a second of the attach (measured
        # 0.08-0.32 s): wait for it with a rule that lets pings in, then drop it.
        icmp = allow(demo, "icmp", remote_cidr=net["external"])
        until(lambda: ping_replies(floating, count=1) == 1, 10, f"{floating} answers")
        demo.security_groups.DeleteSecurityGroupRule(spb.DeleteSecurityGroupRuleRequest(id=icmp.id))
        until(lambda: ping_replies(floating, count=1) == 0, 10, f"{floating} stops answering pings")
        assert not reaches(floating, PORT, "closed-1"), "the default group let the outside in"

        started = time.monotonic()
        tcp = allow(demo, "tcp", PORT, remote_cidr=net["external"])
        until(lambda: reaches(floating, PORT, "open-1"), 5, f"{floating}:{PORT} opens")
        print(f"\nrule create RPC -> port open from outside: {time.monotonic() - started:.3f} s",
              file=sys.stderr)
        wait_line(demo, a2.id, r"^GOT open-1$", timeout_s=10)  # a2's listener got it
        assert ping_replies(floating, count=2) == 0, "a tcp rule let pings in"

        demo.security_groups.DeleteSecurityGroupRule(spb.DeleteSecurityGroupRuleRequest(id=tcp.id))
        until(lambda: not reaches(floating, PORT, "closed-2"), 5, f"{floating}:{PORT} closes")
        assert "GOT closed-1" not in console(demo, a2.id) and "GOT closed-2" not in console(demo, a2.id)
    finally:
        demo.networks.DeleteFloatingIp(npb.FloatingIpRequest(address=floating))


def test_a_freed_address_is_leased_at_once_to_the_next_guest(guests):
    """a2 deleted, a3 gets its address (the lowest free) with another MAC: the
    router's dnsmasq, which held a2's lease, leases it to a3 at once."""
    demo, a2 = guests["demo"], guests["a2"]
    demo.instances.DeleteInstance(pb.DeleteInstanceRequest(id_or_name=a2.id))
    assert demo.wait_gone(a2.id)
    a3, started = create(demo, "tn-a3", b"")
    guests["a3"] = a3
    # Another MAC but for one chance in 256 (IPAM's random byte).
    assert a3.nics[0].fixed_ip == a2.nics[0].fixed_ip
    wait_line(demo, a3.id, rf"CLOUD-NET-OK ip={re.escape(a3.nics[0].fixed_ip)}$")
    took = time.monotonic() - started
    print(f"\ncreate RPC -> CLOUD-NET-OK on a freed address: {took:.1f} s", file=sys.stderr)


def test_deleting_instances_and_networks_leaves_nothing_of_theirs(guests, tenant_cloud):
    cloud, store, net = tenant_cloud
    ids = tuple(api.networks.GetNetwork(npb.GetNetworkRequest(id_or_name="default")).id
                for api in (guests["demo"], guests["other"]))
    during = leftovers(net["tag"], net["router_dir"], ids)
    # Two networks here: a bridge, a VXLAN device, two veths, a router namespace
    # (with its NAT table) and a dnsmasq each; the agent's firewall, two tables.
    assert {k: len(v) for k, v in during.items()} == {"bridges": 2, "vxlans": 2, "veths": 4, "namespaces": 2,
                                                       "dnsmasq": 2, "firewall": 2}, during
    for namespace in during["namespaces"]:
        tables = subprocess.run(["ip", "netns", "exec", namespace, "nft", "list", "tables"],
                                capture_output=True, text=True).stdout
        assert "table ip qrouter" in tables, (namespace, tables)
    instances = [(guests[name], guests["other" if name.startswith("b") else "demo"])
                 for name in ("a1", "a2", "a3", "b1") if name in guests]
    for instance, api in instances:
        try:
            api.instances.DeleteInstance(pb.DeleteInstanceRequest(id_or_name=instance.id))
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND  # a2, deleted already
    for instance, api in instances:
        assert api.wait_gone(instance.id)
    for api in (guests["demo"], guests["other"]):
        api.networks.DeleteNetwork(npb.DeleteNetworkRequest(id_or_name="default"))
    # Each network's delete nudges its hosts; a missed nudge costs a sync interval (5 s).
    # The firewall's tables stay while the agent runs (`down` removes them): no
    # port of the deleted guests is left in them.
    def left() -> dict[str, list[str]]:
        found = leftovers(net["tag"], net["router_dir"], ids)
        del found["firewall"]
        rules = subprocess.run(["nft", "list", "table", "bridge", f"cloudfw{net['tag']}"],
                               capture_output=True, text=True).stdout
        found["ports"] = re.findall(rf"tq{net['tag']}-\w+", rules)
        return found
    until(lambda: not any(left().values()), 15, lambda: f"nothing left of the networks: {left()}")
    for namespace in during["namespaces"]:
        assert subprocess.run(["ip", "netns", "exec", namespace, "true"], capture_output=True).returncode != 0
