"""The libvirt driver (DESIGN.md convention 10: only this package imports
libvirt): driver.py runs QEMU/KVM guests through libvirt; nat_network.py is
the host networking it uses by default, one libvirt NAT network."""

from compute_agent.libvirt_driver.driver import LibvirtDriver, dac_group, detect_virt_type

__all__ = ["LibvirtDriver", "dac_group", "detect_virt_type"]
