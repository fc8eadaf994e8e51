"""libvirt domain XML, built with lxml from a typed spec (never by string formatting).

The domain is named by the instance's UUID. The tenant's display name only goes
into <metadata> as element text, which lxml escapes, so no name can change the
structure of the document.
"""

from __future__ import annotations

from dataclasses import dataclass

from lxml import etree

from compute_agent.network import InterfaceDevice
from compute_agent.storage import DiskDevice

METADATA_NS = "https://smallcloud.dev/xmlns/instance/1"
MAX_DATA_DISKS = 24  # virtio disks vdb to vdy (vda is the root disk)
# Memory plugged live comes in blocks of this size (virtio-mem's block: the
# least libvirt takes, x86's huge page).
MEMORY_BLOCK_MIB = 2
TCG_TB_CACHE_MIB = 128  # QEMU's translation cache under software emulation (default: 1 GiB)


@dataclass(frozen=True)
class DomainSpec:
    uuid: str
    display_name: str
    owner_host: str        # the agent's host name: marks domains this agent manages
    virt_type: str         # "kvm" or "qemu"
    vcpus: int
    max_vcpus: int
    memory_mb: int
    max_memory_mb: int
    kernel: str            # empty: boot from the disk (its own bootloader)
    initrd: str
    cmdline: str
    disk_path: str
    console_log: str
    interfaces: tuple[InterfaceDevice, ...]  # what the networking implementation plugged
    config_drive: str | None = None   # ISO 9660 image for a read-only IDE cdrom (hdc)
    data_disks: tuple[DiskDevice, ...] = ()  # volumes: vdb, vdc, ... in this order


def _sub(parent: etree._Element, tag: str, text: str | None = None, **attrs: str) -> etree._Element:
    element = etree.SubElement(parent, tag, {k.rstrip("_"): v for k, v in attrs.items()})
    if text is not None:
        element.text = text
    return element


def build_domain_xml(spec: DomainSpec) -> str:
    if spec.virt_type not in ("kvm", "qemu"):
        raise ValueError(f"virt_type must be kvm or qemu, not {spec.virt_type!r}")
    domain = etree.Element("domain", type=spec.virt_type)
    _sub(domain, "name", spec.uuid)
    _sub(domain, "uuid", spec.uuid)

    metadata = _sub(domain, "metadata")
    ours = etree.SubElement(metadata, f"{{{METADATA_NS}}}instance", nsmap={"cloud": METADATA_NS})
    etree.SubElement(ours, f"{{{METADATA_NS}}}name").text = spec.display_name
    etree.SubElement(ours, f"{{{METADATA_NS}}}host").text = spec.owner_host

    # A vCPU maximum above the current count leaves room for live scale-up.
    _sub(domain, "vcpu", str(spec.max_vcpus), placement="static", current=str(spec.vcpus))

    os_ = _sub(domain, "os")
    _sub(os_, "type", "hvm", arch="x86_64", machine="pc")
    if spec.kernel:
        _sub(os_, "kernel", spec.kernel)
        _sub(os_, "initrd", spec.initrd)
        _sub(os_, "cmdline", spec.cmdline)
    else:
        _sub(os_, "boot", dev="hd")

    # ACPI is needed for CPU hotplug and clean shutdown; direct kernel boot does not add it.
    features = _sub(domain, "features")
    _sub(features, "acpi")
    _sub(features, "apic")
    if spec.virt_type == "qemu":
        # TCG's translated code counts in QEMU's memory, capped here so that
        # QEMU's overhead above the guest's memory is bounded (the agent sets a
        # hard limit of the guest's memory plus QEMU_OVERHEAD_MIB).
        _sub(_sub(features, "tcg"), "tb-cache", str(TCG_TB_CACHE_MIB), unit="MiB")
    cpu = _sub(domain, "cpu", mode="host-passthrough") if spec.virt_type == "kvm" else None
    _sub(domain, "clock", offset="utc")
    _sub(domain, "on_poweroff", "destroy")
    _sub(domain, "on_reboot", "restart")
    _sub(domain, "on_crash", "destroy")

    devices = _sub(domain, "devices")
    disk = _sub(devices, "disk", type="file", device="disk")
    _sub(disk, "driver", name="qemu", type="qcow2", cache="none", discard="unmap")
    _sub(disk, "source", file=spec.disk_path)
    _sub(disk, "target", dev="vda", bus="virtio")

    if spec.config_drive:
        # IDE, not SATA: the machine is "pc" (i440fx, with PIIX IDE) and the
        # guest kernels we boot need not have AHCI. hdc = secondary master.
        cdrom = _sub(devices, "disk", type="file", device="cdrom")
        _sub(cdrom, "driver", name="qemu", type="raw")
        _sub(cdrom, "source", file=spec.config_drive)
        _sub(cdrom, "target", dev="hdc", bus="ide")
        _sub(cdrom, "readonly")

    if len(spec.data_disks) > MAX_DATA_DISKS:
        raise ValueError(f"at most {MAX_DATA_DISKS} data disks")
    for n, data in enumerate(spec.data_disks):
        disk = _sub(devices, "disk", type="file", device="disk")
        _sub(disk, "driver", name="qemu", type=data.format, cache="none", discard="unmap")
        _sub(disk, "source", file=data.path)
        _sub(disk, "target", dev="vd" + chr(ord("b") + n), bus="virtio")
        if data.serial:
            _sub(disk, "serial", data.serial)

    for interface in spec.interfaces:
        if interface.type not in ("network", "bridge"):
            raise ValueError(f"interface type must be network or bridge, not {interface.type!r}")
        nic = _sub(devices, "interface", type=interface.type)
        if interface.mac:
            _sub(nic, "mac", address=interface.mac)
        _sub(nic, "source", **{interface.type: interface.source})
        _sub(nic, "model", type=interface.model)
        if interface.target:  # a name the host's firewall knows the tap by (tenant/firewall.py)
            _sub(nic, "target", dev=interface.target)

    # A pty for interactive use; virtlogd copies everything to the log file.
    serial = _sub(devices, "serial", type="pty")
    _sub(serial, "log", file=spec.console_log, append="off")
    _sub(serial, "target", port="0")
    console = _sub(devices, "console", type="pty")
    _sub(console, "target", type="serial", port="0")

    balloon = _sub(devices, "memballoon", model="virtio")
    # The guest reports its memory every 2 s: the agent's reclaim sees a guest
    # getting busy within a few seconds (compute_agent/reclaim.py).
    _sub(balloon, "stats", period="2")
    set_memory(domain, spec.memory_mb, spec.max_memory_mb, spec.max_vcpus, cpu)
    return etree.tostring(domain, pretty_print=True, encoding="unicode")


def plug_size_mib(memory_mb: int, max_memory_mb: int) -> int:
    """The virtio-mem device's size: what a live scale-up can add, whole blocks."""
    return max(0, max_memory_mb - memory_mb) // MEMORY_BLOCK_MIB * MEMORY_BLOCK_MIB


def set_memory(domain: etree._Element, memory_mb: int, max_memory_mb: int, max_vcpus: int,
               cpu: etree._Element | None = None) -> None:
    """A domain's memory, (re)written in place: the guest boots with exactly
    memory_mb (its one NUMA cell), and room to grow to max_memory_mb live is a
    virtio-mem device with nothing plugged. Never a boot-time maximum hidden
    by the balloon: a guest controls its balloon driver, and one that unloaded
    it took the whole maximum (issue 20). The balloon stays, for reclaim
    within the boot memory."""
    for tag in ("maxMemory", "memory", "currentMemory"):
        for old in domain.findall(tag):
            domain.remove(old)
    for old in domain.findall("devices/memory[@model='virtio-mem']"):
        old.getparent().remove(old)
    plug = plug_size_mib(memory_mb, max_memory_mb)
    # Right after <uuid>/<metadata>, where libvirt keeps them.
    at = list(domain).index(domain.find("metadata")) + 1
    elements = []
    if plug:
        elements.append(etree.Element("maxMemory", slots="1", unit="MiB"))
        elements[-1].text = str(memory_mb + plug)
    for tag, mib in (("memory", memory_mb + plug), ("currentMemory", memory_mb)):
        elements.append(etree.Element(tag, unit="MiB"))
        elements[-1].text = str(mib)
    for offset, element in enumerate(elements):
        domain.insert(at + offset, element)
    cpu = cpu if cpu is not None else domain.find("cpu")
    if cpu is not None:
        for old in cpu.findall("numa"):
            cpu.remove(old)
    if not plug:
        if cpu is not None and not len(cpu) and not cpu.attrib:
            domain.remove(cpu)
        return
    if cpu is None:  # memory hotplug needs a NUMA node; with TCG, QEMU's default CPU model
        cpu = etree.Element("cpu")
        domain.insert(list(domain).index(domain.find("features")) + 1, cpu)
    cpus = "0" if max_vcpus == 1 else f"0-{max_vcpus - 1}"
    _sub(_sub(cpu, "numa"), "cell", id="0", cpus=cpus, memory=str(memory_mb), unit="MiB")
    device = _sub(domain.find("devices"), "memory", model="virtio-mem")
    target = _sub(device, "target")
    _sub(target, "size", str(plug), unit="MiB")
    _sub(target, "node", "0")
    _sub(target, "block", str(MEMORY_BLOCK_MIB * 1024), unit="KiB")
    _sub(target, "requested", "0", unit="MiB")


def network_xml(name: str, bridge: str, gateway: str, netmask: str, dhcp_start: str,
                dhcp_end: str) -> str:
    """A libvirt NAT network with DHCP, for the guests of one host."""
    network = etree.Element("network")
    _sub(network, "name", name)
    forward = _sub(network, "forward", mode="nat")
    _sub(forward, "nat")
    _sub(network, "bridge", name=bridge, stp="on", delay="0")
    ip = _sub(network, "ip", address=gateway, netmask=netmask)
    dhcp = _sub(ip, "dhcp")
    _sub(dhcp, "range", start=dhcp_start, end=dhcp_end)
    return etree.tostring(network, pretty_print=True, encoding="unicode")


def owner_of(domain_xml: str) -> str | None:
    """The host name recorded in a domain's metadata, or None if it is not ours."""
    root = etree.fromstring(domain_xml.encode())
    found = root.find(f"metadata/{{{METADATA_NS}}}instance/{{{METADATA_NS}}}host")
    return found.text if found is not None else None
