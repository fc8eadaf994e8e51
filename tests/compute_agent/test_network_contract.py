"""The networking contract (compute_agent/network.py), checked against every
implementation: the fake, the libvirt NAT network on the real libvirtd, and the
tenant networks (their bridges on this host's kernel, the NAT network as their
default)."""

import json
import random
import subprocess
import uuid

import pytest
from compute_agent.errors import NetworkError
from compute_agent.network import FakeNetwork, HostNetworking, InterfaceDevice, NicSpec


@pytest.fixture
def nat(tmp_path):
    import libvirt
    from compute_agent.libvirt_driver.nat_network import LibvirtNatNetwork

    conn = libvirt.open("qemu:///system")
    # The default network, shared with the driver contract and the tests' clouds:
    # ensure_host must leave it as it finds it (defined, active); it is not removed.
    yield LibvirtNatNetwork(lambda: conn, tmp_path / "network")
    conn.close()


@pytest.fixture
def vni():
    """A VNI no other test uses: its devices (brq-<vni>, vxlan-<vni>) are made in
    this host's namespace, and deleted here, by name, whatever the test did (a
    converge would remove every tenant bridge of this namespace: other tests' too)."""
    vni = random.randrange(16_000_000, 16_777_216)
    yield vni
    for name in (f"vxlan-{vni}", f"brq-{vni}"):
        subprocess.run(["ip", "link", "del", "dev", name], capture_output=True)


@pytest.fixture
def tenant(nat, tmp_path):
    from compute_agent.tenant.networking import TenantNetworking

    # 127.0.0.1 as the tunnel address: nothing it makes sends off the machine.
    return TenantNetworking("127.0.0.1", "contract-host", tmp_path / "tenant", default=nat)


@pytest.fixture(params=["fake", "libvirt-nat", "tenant"])
def network(request) -> HostNetworking:
    return FakeNetwork() if request.param == "fake" else request.getfixturevalue(
        {"libvirt-nat": "nat", "tenant": "tenant"}[request.param])


def instance() -> str:
    return str(uuid.uuid4())


def mine(network: HostNetworking, instance_id: str) -> dict[int, InterfaceDevice]:
    return {p.index: p.device for p in network.plugged() if p.instance_id == instance_id}


def test_ensure_host_twice_and_the_default_network_plugs(network):
    network.ensure_host()
    network.ensure_host()
    i = instance()
    device = network.plug(i, 0, NicSpec())
    assert device.type in ("network", "bridge") and device.source and device.mac == ""
    assert mine(network, i) == {0: device}


def test_plug_is_idempotent_and_keeps_the_mac(network):
    i = instance()
    nic = NicSpec(mac="52:54:00:ab:cd:ef")
    first = network.plug(i, 0, nic)
    assert first.mac == "52:54:00:ab:cd:ef"
    assert network.plug(i, 0, nic) == first
    assert network.plug(i, 1, NicSpec()).mac == ""
    assert sorted(mine(network, i)) == [0, 1]


def test_unplug_removes_only_that_nic_and_twice_is_false(network):
    i, other = instance(), instance()
    network.plug(i, 0, NicSpec())
    network.plug(i, 1, NicSpec())
    network.plug(other, 0, NicSpec())
    assert network.unplug(i, 0) is True
    assert network.unplug(i, 0) is False
    assert sorted(mine(network, i)) == [1]
    assert network.unplug_all(i) is True
    assert network.unplug_all(i) is False
    assert mine(network, i) == {} and sorted(mine(network, other)) == [0]
    assert network.unplug(instance(), 3) is False


@pytest.mark.parametrize("nic", [NicSpec(network_id="no-such-network"),
                                 NicSpec(mac="52:54:00:AB:CD:EF"),   # upper case
                                 NicSpec(mac="01:00:5e:00:00:01"),   # multicast
                                 NicSpec(mac="52:54:00:ab:cd")])
def test_a_refused_plug_records_nothing(network, nic):
    i = instance()
    with pytest.raises(NetworkError):
        network.plug(i, 0, nic)
    assert mine(network, i) == {}


def test_bad_instance_ids_and_indexes_are_refused(network):
    for instance_id, index in (("../../etc/passwd", 0), ("", 0), (instance(), -1)):
        with pytest.raises(NetworkError):
            network.plug(instance_id, index, NicSpec())
    assert network.plugged() == []


def test_libvirt_nat_network_is_active_and_its_plugs_survive_a_restart(nat, tmp_path):
    """Plugs are recorded on disk: a new agent (a restart) sees the same ones."""
    from compute_agent.libvirt_driver.nat_network import LibvirtNatNetwork

    network = nat
    network.ensure_host()
    assert network.connect().networkLookupByName(network.name).isActive()
    i = instance()
    device = network.plug(i, 0, NicSpec(mac="52:54:00:00:00:01"))
    assert device == InterfaceDevice("network", network.name, "52:54:00:00:00:01")
    again = LibvirtNatNetwork(network.connect, tmp_path / "network")
    assert {p.index: p.device for p in again.plugged() if p.instance_id == i} == {0: device}


def tenant_nic(vni: int, mac: str = "52:54:00:00:00:02") -> NicSpec:
    from compute_agent.tenant.model import Network, Port

    net = Network(id=str(uuid.uuid4()), project="p", vni=vni, cidr="10.0.0.0/24",
                  gateway_ip="10.0.0.1", mtu=1450, vteps=("127.0.0.1",),
                  ports=(Port("i", mac, "10.0.0.5", "127.0.0.1"),))
    return NicSpec(network_id=net.id, mac=mac, fixed_ip="10.0.0.5", network=net)


@pytest.mark.parametrize("network", ["fake", "tenant"], indirect=True)
def test_a_nic_that_brings_its_tenant_network_plugs(network, vni):
    """Every implementation that serves tenant networks plugs a NIC whose network
    comes with it, before any sync has told the host about that network."""
    i, nic = instance(), tenant_nic(vni)
    device = network.plug(i, 0, nic)
    assert device.type == "bridge" and device.source and device.mac == nic.mac
    assert network.plug(i, 0, nic) == device
    assert mine(network, i) == {0: device}


def test_tenant_nic_is_on_its_networks_bridge_and_survives_a_restart(tenant, vni, tmp_path):
    from compute_agent.tenant.networking import TenantNetworking

    i, nic = instance(), tenant_nic(vni)
    device = tenant.plug(i, 0, nic)
    assert device == InterfaceDevice("bridge", f"brq-{vni}", nic.mac)
    link = json.loads(subprocess.run(["ip", "-j", "link", "show", "dev", f"vxlan-{vni}"],
                                     capture_output=True, text=True, check=True).stdout)[0]
    assert link["master"] == f"brq-{vni}" and link["mtu"] == 1450 and "UP" in link["flags"]
    again = TenantNetworking("127.0.0.1", "contract-host", tmp_path / "tenant", default=tenant.default)
    assert {p.index: p.device for p in again.plugged() if p.instance_id == i} == {0: device}
    # A network it was never told of, without the network in the NIC: refused.
    with pytest.raises(NetworkError, match="does not bring it"):
        again.plug(instance(), 0, NicSpec(network_id=nic.network_id))
