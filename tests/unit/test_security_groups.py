"""Security groups' pure parts: rule validation, the default rules, and which
groups (with which members' addresses) a host gets."""

from __future__ import annotations

import pytest

from control.errors import InvalidArgument
from control.models import Instance, Nic, Resources, SecurityGroup, SecurityGroupRef
from control.network.security_groups import (
    default_rules,
    host_groups,
    new_group_rules,
    parse_rule,
    same_rule,
)


@pytest.mark.parametrize("args, message", [
    (("in", "tcp"), "invalid direction"),
    (("ingress", "TCP"), "invalid protocol"),
    (("ingress", "tcp", 0, 80), "ports are 1 to 65535"),
    (("ingress", "tcp", -1), "ports are 1 to 65535"),
    (("ingress", "udp", 1, 65536), "ports are 1 to 65535"),
    (("ingress", "tcp", 81, 80), "the first port is above the last"),
    (("ingress", "any", 22), "ports are for tcp and udp only"),
    (("egress", "icmp", 0, 8), "ports are for tcp and udp only"),
    (("ingress", "tcp", 0, 0, "10.0.0.1/24"), "has host bits set"),
    (("ingress", "tcp", 0, 0, "10.0.0.1"), "an IPv4 network like"),
    (("ingress", "tcp", 0, 0, "10.0.0.0/33"), "invalid remote_cidr"),
    (("ingress", "tcp", 0, 0, "::/0"), "IPv4 only"),
    (("ingress", "tcp", 0, 0, "10.0.0.0/8", "some-group-id"), "not both"),
])
def test_bad_rules_say_what_is_wrong(args, message):
    with pytest.raises(InvalidArgument, match=message):
        parse_rule(*args)


def test_good_rules_are_normalised():
    one = parse_rule("ingress", "tcp", 80)
    assert (one.port_min, one.port_max) == (80, 80)  # port_max 0: that one port
    assert (parse_rule("ingress", "udp", 1, 65535).port_max, parse_rule("egress", "any").port_min) == \
        (65535, 0)
    assert parse_rule("ingress", "icmp", remote_cidr="0.0.0.0/0").remote_cidr == "0.0.0.0/0"
    assert parse_rule("ingress", "tcp", 22, 0, "100.64.0.0/24").remote_cidr == "100.64.0.0/24"
    assert same_rule(parse_rule("ingress", "tcp", 80), parse_rule("ingress", "tcp", 80, 80))
    assert not same_rule(parse_rule("ingress", "tcp", 80), parse_rule("ingress", "udp", 80))


def test_default_and_new_group_rules():
    assert [(r.direction, r.protocol, r.remote_group_id) for r in default_rules("g1")] == [
        ("egress", "any", ""), ("ingress", "any", "g1")]
    assert [(r.direction, r.protocol, r.remote_cidr) for r in new_group_rules()] == [("egress", "any", "")]


def vm(name: str, groups: list[SecurityGroup], *ips: str, host: str = "h1") -> Instance:
    return Instance(id=name, project="p", name=name, flavor="tiny", resources=Resources(), image="i",
                    host=host, nics=[Nic(network_id="n", network_name="n", mac="m", fixed_ip=ip)
                                     for ip in ips],
                    security_groups=[SecurityGroupRef(id=g.id, name=g.name) for g in groups])


def test_a_host_gets_its_ports_groups_and_their_remote_groups_with_members_everywhere():
    web = SecurityGroup(id="web", project="p", name="web", rules=new_group_rules())
    db = SecurityGroup(id="db", project="p", name="db",
                       rules=[parse_rule("ingress", "tcp", 5432, remote_group_id="web")])
    lonely = SecurityGroup(id="lonely", project="p", name="lonely")
    back = vm("back", [db], "10.0.0.3", host="h1")
    fronts = [vm("f1", [web], "10.0.0.10", host="h2"), vm("f2", [web], "10.0.0.9", "10.1.0.9", host="")]
    everyone = [back, *fronts, vm("x", [lonely], "10.0.0.20", host="h3")]
    got = {g.id: g for g in host_groups([web, db, lonely], everyone, [back])}
    assert sorted(got) == ["db", "web"]  # its group, and the one its rule names
    assert got["db"].member_ips == ["10.0.0.3"]
    assert got["web"].member_ips == ["10.0.0.9", "10.0.0.10", "10.1.0.9"]  # any host, every NIC
    assert got["db"].rules == db.rules
    assert host_groups([web, db], everyone, []) == []
