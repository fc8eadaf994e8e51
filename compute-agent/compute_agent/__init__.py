"""The compute agent: one per host; drives the hypervisor through a driver and
reports the host's capacity and its instances to the control plane."""
