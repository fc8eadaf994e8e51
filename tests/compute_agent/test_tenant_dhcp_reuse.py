"""A freed fixed IP given to the next guest with another MAC (IPAM picks the
lowest free address, and a MAC with a random byte): the router's dnsmasq must
lease it at once. It keeps the old lease in memory, and would refuse the
address to the new MAC until the old lease expired (a day): the router restarts
it when a lease goes. In test_tenant_router.py's lab (namespaces, real dnsmasq)."""

from dataclasses import replace

from tests.compute_agent.test_tenant_router import dnsmasq_pids, lab  # noqa: F401  (lab: the fixture)


def test_an_address_freed_and_given_to_another_mac_is_leased_at_once(lab):  # noqa: F811
    router = lab.router()
    network = lab.network()
    old = network.ports[0]
    router.converge(network, lab.external)
    assert lab.dhcp(lab.guest(network, old))[0]["ip"] == old.fixed_ip  # dnsmasq now holds this lease

    # The instance deleted: its port goes, then a new one gets the same address, another MAC.
    gone = replace(network, ports=())
    [pid] = dnsmasq_pids(lab)
    changes = router.converge(gone, lab.external)
    assert f"stop dnsmasq {pid} of {router.names(network.id).namespace}" in changes
    new = replace(old, instance_id="guest-new", mac=old.mac[:-2] + "ee")
    again = replace(network, ports=(new,))
    # Only a lease added: a reload, not a restart.
    namespace = router.names(network.id).namespace
    assert router.converge(again, lab.external)[-1] == f"reload dnsmasq in {namespace}"
    lease, took = lab.dhcp(lab.guest(again, new))
    assert lease["ip"] == new.fixed_ip and took < 3, (lease, took)  # udhcpc's first try: 1 s apart
