"""Tenant networks on this host (DESIGN.md, Neutron's linuxbridge agent with
l2population as the model): model.py, the desired state; l2.py, a bridge and a
VXLAN device per network with static forwarding entries; router.py, the
network's router namespace (gateway, DHCP, SNAT, floating IPs); networking.py,
the HostNetworking implementation that plugs guests' NICs and converges the
rest; sync.py, the loop that fetches the desired state from the control plane."""
