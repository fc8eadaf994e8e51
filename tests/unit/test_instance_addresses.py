"""Instance.addresses (what `instance list` and the dashboard's list show) with
tenant networks: each NIC's fixed IP and floating IP, from the record itself."""

from control.api import convert
from control.models import Instance, Nic, Resources


def instance(**fields) -> Instance:
    return Instance(id="i-1", project="p", name="web1", flavor="small", image="img",
                    resources=Resources(vcpus=1, memory_mb=512, disk_gb=1), **fields)


def test_addresses_list_fixed_then_floating_ips_per_nic():
    nics = [Nic(network_id="n1", network_name="default", mac="fa:16:3e:00:00:01", fixed_ip="10.0.0.2"),
            Nic(network_id="n2", network_name="backend", mac="fa:16:3e:00:00:02", fixed_ip="10.1.0.5")]
    shown = convert.instance(instance(nics=nics), {("i-1", "n1"): "100.64.0.9"})
    assert list(shown.addresses) == ["10.0.0.2", "100.64.0.9", "10.1.0.5"]
    assert [n.floating_ip for n in shown.nics] == ["100.64.0.9", ""]


def test_without_nics_the_hosts_leases_are_kept():
    shown = convert.instance(instance(addresses=["10.213.0.17"]))
    assert list(shown.addresses) == ["10.213.0.17"]
    # One address seen both ways is listed once.
    nic = Nic(network_id="n1", network_name="default", mac="fa:16:3e:00:00:01", fixed_ip="10.0.0.2")
    assert list(convert.instance(instance(nics=[nic], addresses=["10.0.0.2"])).addresses) == ["10.0.0.2"]
