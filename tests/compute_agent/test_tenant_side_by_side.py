"""Two clouds' agents on one machine (`make up`'s and a test's, in one network
namespace): each converges its own tenant networks and never touches the
other's bridges, VXLAN devices or router namespaces, because each names them
with its own device tag (tenant/l2.py, tenant/router.py). On the real kernel, in
a namespace of tenant_lab.py standing for the machine; seconds."""

from __future__ import annotations

import re
import shutil
import uuid
from pathlib import Path

from compute_agent.tenant.l2 import bridge_name, owned, vxlan_name
from compute_agent.tenant.model import External, HostNetworks, Network, Port
from compute_agent.tenant.networking import TenantNetworking
from compute_agent.tenant.router import Router, run_dir

from tests.compute_agent.tenant_lab import Host, Topology, sh

VTEP = "127.0.0.1"  # the machine's tunnel address, as `make up` has it


def test_tagged_names_fit_the_kernel_and_no_agent_owns_anothers():
    assert len(bridge_name(2**24 - 1, "abc")) == 15 and len(vxlan_name(2**24 - 1, "abc")) == 15
    assert (bridge_name(7), vxlan_name(7)) == ("brq-7", "vxlan-7")  # untagged: as before tags
    assert (bridge_name(7, "up"), vxlan_name(7, "up")) == ("brqup-7", "vxqup-7")
    tags = ["", "a", "ab", "abc", "b", "up", "lan"]
    for tag in tags:
        mine = {bridge_name(7, tag), vxlan_name(7, tag)}
        for other in tags:
            theirs = {n for n in (bridge_name(7, other), vxlan_name(7, other)) if owned(tag).fullmatch(n)}
            assert theirs == (mine if other == tag else set()), (tag, other)


def network(vni: int, project: str) -> Network:
    """A network on 10.0.0.0/24 (every project's default), its router here."""
    return Network(id=str(uuid.uuid4()), project=project, vni=vni, cidr="10.0.0.0/24", gateway_ip="10.0.0.1",
                   mtu=1450, vteps=(VTEP,), router_host="m", snat_ip="198.51.100.2",
                   ports=(Port(f"i-{vni}", f"52:54:00:00:{vni % 256:02x}:02", "10.0.0.2", VTEP),))


def agent(topo: Topology, machine: str, tag: str, routers: bool) -> Host:
    """An agent's TenantNetworking in the machine's namespace, with its tag (and
    routers named by it, if `routers`)."""
    def build() -> TenantNetworking:
        router = Router(run_dir(f"side-{topo.tag}", tag), prefix=f"qrouter{tag}-",
                        network_bridge=lambda n: bridge_name(n.vni, tag)) if routers else None
        return TenantNetworking(VTEP, "m", Path(topo.tmp_path) / (tag or "untagged"), router=router, tag=tag)
    return Host(machine, VTEP, tag or "untagged", build)


def devices(ns: str) -> set[str]:
    return {line.split(":")[1].strip().split("@")[0]
            for line in sh("ip", "-n", ns, "-o", "link", "show").splitlines()
            if re.match(r"\d+: (brq|vx)", line)}


def routers(prefix: str) -> set[str]:
    return {ns for ns in sh("ip", "netns", "list").split() if ns.startswith(prefix)}


def test_two_tagged_agents_and_an_untagged_one_leave_each_other_alone(tmp_path):
    topo = Topology(tmp_path)
    suffix = topo.tag[:2]
    a_tag, b_tag = f"a{suffix}", f"b{suffix}"
    agents: dict[str, Host] = {}
    try:
        machine = topo.netns("m")
        # Two tagged agents with routers; an untagged one (as before tags) without:
        # its routers' prefix "qrouter-" would be every other test's too.
        agents = {a_tag: agent(topo, machine, a_tag, True), b_tag: agent(topo, machine, b_tag, True),
                  "": agent(topo, machine, "", False)}
        nets = {a_tag: network(1101, "p1"), b_tag: network(1102, "p2"), "": network(1103, "p3")}
        ext = {tag: External("198.51.100.0/24", "198.51.100.1", f"x{tag or 'u'}{suffix}") for tag in agents}

        def desired(tag: str, on: bool = True) -> HostNetworks:
            return HostNetworks(networks=(nets[tag],) if on else (), external=ext[tag])

        made = {tag: agents[tag].converge(desired(tag)) for tag in agents}
        assert all(made.values())
        # No agent's changes name another's devices.
        for tag, changes in made.items():
            for other in agents:
                if other != tag:
                    theirs = (f"-{nets[other].vni}", nets[other].id)
                    assert not [c for c in changes if any(name in c for name in theirs)], changes
        everything = {name for t, n in nets.items() for name in (bridge_name(n.vni, t), vxlan_name(n.vni, t))}
        assert devices(machine) == everything
        # Each one's next converge finds nothing to change: the others' devices are not its business.
        assert {tag: agents[tag].converge(desired(tag)) for tag in agents} == {tag: [] for tag in agents}
        a_routers, b_routers = routers(f"qrouter{a_tag}-"), routers(f"qrouter{b_tag}-")
        assert a_routers == {f"qrouter{a_tag}-{nets[a_tag].id}"}
        assert b_routers == {f"qrouter{b_tag}-{nets[b_tag].id}"}

        # a's networks all go: only a's devices and router go with them.
        gone = agents[a_tag].converge(desired(a_tag, on=False))
        assert sorted(gone) == sorted([f"remove router qrouter{a_tag}-{nets[a_tag].id}",
                                       f"delete {vxlan_name(1101, a_tag)}",
                                       f"delete {bridge_name(1101, a_tag)}"])
        assert devices(machine) == everything - {bridge_name(1101, a_tag), vxlan_name(1101, a_tag)}
        assert routers(f"qrouter{a_tag}-") == set() and routers(f"qrouter{b_tag}-") == b_routers
        # The untagged agent's empty converge takes only its own.
        assert sorted(agents[""].converge(desired("", on=False))) == ["delete brq-1103", "delete vxlan-1103"]
        assert devices(machine) == {bridge_name(1102, b_tag), vxlan_name(1102, b_tag)}
        assert agents[b_tag].converge(desired(b_tag)) == []
        agents[b_tag].converge(desired(b_tag, on=False))
        assert devices(machine) == set() and routers(f"qrouter{b_tag}-") == set()
    finally:
        for host in agents.values():
            try:
                host.converge(HostNetworks(external=External("198.51.100.0/24", "198.51.100.1", "xz")))
            except Exception:
                pass
            host.close()
        topo.close()
        for tag in (a_tag, b_tag):
            shutil.rmtree(run_dir(f"side-{topo.tag}", tag), ignore_errors=True)
