"""The host firewall (compute-agent/compute_agent/tenant/firewall.py) at size,
printing one JSON object: a host with PORTS guest NICs (on NETWORKS networks,
each NIC in 2 of GROUPS groups) and RULES rules in all (a third with a remote
group, a third with a CIDR, the rest from anyone; tcp, udp, icmp and any).

- from_empty_ms: converge() with no tables yet (render, read, one `nft -f`);
- unchanged_ms: converge() again, nothing to do (render, read both tables, compare);
- one_more_rule_ms: converge() after one rule is added to one group;
- member_join_ms: converge() after one address joins a remote group's set;
- render_ms, list_ms: the two halves of unchanged_ms.
Each is the median of ROUNDS runs (min and max beside it). The firewall runs
in a network namespace of its own ("bfw-<random tag>"), deleted at the end,
on failure too: nft needs no bridges or taps for its tables to load.

Usage (as root): python bench/firewall.py [PORTS] [RULES]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "compute-agent"))

from compute_agent.tenant.firewall import Firewall, blocks, render  # noqa: E402
from compute_agent.tenant.model import HostNetworks, Network, Port, Rule, SecurityGroup  # noqa: E402

NETWORKS, GROUPS, ROUNDS = 10, 20, 7
VTEP = "192.0.2.1"


def host(ports: int, rules: int) -> HostNetworks:
    groups = []
    per_group = rules // GROUPS
    for g in range(GROUPS):
        members = tuple(f"10.{g}.{i // 250}.{i % 250 + 1}" for i in range(50))
        group_rules = []
        for r in range(per_group):
            protocol = ("tcp", "udp", "icmp", "any")[r % 4]
            low = 1000 + r if protocol in ("tcp", "udp") else 0
            remote = {0: {"remote_group_id": f"g{(g + r) % GROUPS}"},
                      1: {"remote_cidr": f"172.{16 + r % 16}.{r % 250}.0/24"}, 2: {}}[r % 3]
            group_rules.append(Rule(f"g{g}r{r}", ("ingress", "egress")[r % 2], protocol, low,
                                    low + (r % 3) if low else 0, **remote))
        groups.append(SecurityGroup(f"g{g}", tuple(group_rules), members))
    per_network = ports // NETWORKS
    networks = []
    for n in range(NETWORKS):
        nics = tuple(Port(f"i{n}-{p}", f"52:54:{n:02x}:00:{p // 256:02x}:{p % 256:02x}",
                          f"10.100.{n}.{p + 2}", VTEP,
                          security_group_ids=(f"g{(n + p) % GROUPS}", f"g{(n + p + 1) % GROUPS}"))
                     for p in range(per_network))
        networks.append(Network(f"net{n}", "p", 1000 + n, f"10.100.{n}.0/24", f"10.100.{n}.1", 1450, nics,
                                (VTEP,)))
    return HostNetworks(networks=tuple(networks), security_groups=tuple(groups))


def timed(action) -> tuple[float, object]:
    start = time.perf_counter()
    result = action()
    return (time.perf_counter() - start) * 1000, result


def summary(samples: list[float]) -> dict:
    return {"median": round(statistics.median(samples), 1), "min": round(min(samples), 1),
            "max": round(max(samples), 1)}


def inside(ports: int, rules: int) -> dict:
    firewall = Firewall(VTEP)
    state = host(ports, rules)
    text = render(state, VTEP)
    figures: dict[str, list[float]] = {k: [] for k in ("from_empty_ms", "unchanged_ms", "one_more_rule_ms",
                                                       "member_join_ms", "render_ms", "list_ms")}
    for round_ in range(ROUNDS):
        firewall.remove()
        ms, changes = timed(lambda: firewall.converge(state))
        assert changes, "from empty: something to do"
        figures["from_empty_ms"].append(ms)
        ms, changes = timed(lambda: firewall.converge(state))
        assert changes == [], changes
        figures["unchanged_ms"].append(ms)
        figures["render_ms"].append(timed(lambda: render(state, VTEP))[0])
        figures["list_ms"].append(timed(firewall.listing)[0])
        g0 = state.security_groups[0]
        more = replace(g0, rules=(*g0.rules, Rule(f"extra{round_}", "ingress", "tcp", 9000 + round_,
                                                  9000 + round_)))
        bigger = replace(state, security_groups=(more, *state.security_groups[1:]))
        ms, changes = timed(lambda: firewall.converge(bigger))  # noqa: B023 (called at once)
        assert changes == ["firewall: change bridge cloudfw / chain sg-g0-ingress"], changes
        figures["one_more_rule_ms"].append(ms)
        g1 = state.security_groups[1]
        joined = replace(g1, member_ips=(*g1.member_ips, f"10.200.0.{round_ + 1}"))
        moved = replace(state, security_groups=(more, joined, *state.security_groups[2:]))
        ms, changes = timed(lambda: firewall.converge(moved))  # noqa: B023 (called at once)
        assert changes == ["firewall: change bridge cloudfw / set rg-g1"], changes
        figures["member_join_ms"].append(ms)
    listed = blocks(firewall.listing())
    firewall.remove()
    return {"ports": ports, "rules": sum(len(g.rules) for g in state.security_groups),
            "groups": GROUPS, "networks": NETWORKS, "ruleset_lines": text.count("\n"),
            "chains": sum(1 for k in listed if " / chain " in k), "rounds": ROUNDS,
            **{k: summary(v) for k, v in figures.items()}}


def main() -> None:
    ports = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    rules = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    if os.environ.get("BENCH_FIREWALL_INSIDE"):
        print(json.dumps(inside(ports, rules)))
        return
    ns = f"bfw-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        done = subprocess.run(["ip", "netns", "exec", ns, sys.executable, __file__, str(ports), str(rules)],
                              env={**os.environ, "BENCH_FIREWALL_INSIDE": "1"}, capture_output=True,
                              text=True)
        if done.returncode:
            sys.exit(done.stderr)
        print(json.dumps({"bench": "firewall", **json.loads(done.stdout)}, indent=2))
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


if __name__ == "__main__":
    main()
