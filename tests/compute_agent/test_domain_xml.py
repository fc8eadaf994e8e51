import subprocess
from pathlib import Path

import pytest
from compute_agent.domain_xml import DomainSpec, build_domain_xml, owner_of
from compute_agent.network import InterfaceDevice
from compute_agent.storage import DiskDevice
from lxml import etree

UUID = "0f8fad5b-d9cb-469f-a165-70867728950e"


def spec(**changes):
    base = dict(uuid=UUID, display_name="web1", owner_host="host-a", virt_type="qemu", vcpus=1,
                max_vcpus=4, memory_mb=512, max_memory_mb=2048, kernel="/b/vmlinuz",
                initrd="/b/initrd.img", cmdline="console=ttyS0 cloud.instance_id=" + UUID,
                disk_path="/i/disk.qcow2", console_log="/i/console.log",
                interfaces=(InterfaceDevice("network", "cloud-net"),))
    return DomainSpec(**{**base, **changes})


def parse(xml: str) -> etree._Element:
    return etree.fromstring(xml.encode())


def test_domain_is_named_by_uuid_and_typed():
    root = parse(build_domain_xml(spec()))
    assert root.get("type") == "qemu"
    assert root.findtext("name") == UUID
    assert root.findtext("uuid") == UUID
    assert root.find("vcpu").get("current") == "1" and root.findtext("vcpu") == "4"
    assert root.findtext("currentMemory") == "512" and root.findtext("memory") == "2048"
    assert root.find("features/acpi") is not None
    assert root.find("devices/disk/source").get("file") == "/i/disk.qcow2"
    assert root.find("devices/interface/source").get("network") == "cloud-net"
    assert root.find("devices/serial/log").get("file") == "/i/console.log"
    assert root.find("devices/memballoon").get("model") == "virtio"
    assert root.find("devices/memballoon/stats").get("period") == "2"  # for memory reclaim


def test_kvm_uses_host_cpu():
    assert parse(build_domain_xml(spec(virt_type="kvm"))).find("cpu").get("mode") == "host-passthrough"
    assert parse(build_domain_xml(spec())).find("cpu").get("mode") is None  # TCG: QEMU's default
    assert parse(build_domain_xml(spec(max_memory_mb=512))).find("cpu") is None


def test_the_guest_boots_with_its_memory_and_can_grow_by_virtio_mem_only():
    """Issue 20: the domain once booted with its maximum (2 GiB for a 512 MiB
    flavor) hidden by a balloon the guest controls. Now its one NUMA cell is
    its memory, and the room to grow is a virtio-mem device with nothing plugged."""
    root = parse(build_domain_xml(spec()))
    assert root.find("maxMemory").get("slots") == "1" and root.findtext("maxMemory") == "2048"
    cell = root.find("cpu/numa/cell")
    assert (cell.get("memory"), cell.get("unit"), cell.get("cpus")) == ("512", "MiB", "0-3")
    device = root.find("devices/memory[@model='virtio-mem']/target")
    assert (device.findtext("size"), device.findtext("requested"), device.findtext("block")) == \
        ("1536", "0", "2048")
    assert device.find("block").get("unit") == "KiB" and device.findtext("node") == "0"
    # No room to grow: no device, no maximum, no NUMA.
    fixed = parse(build_domain_xml(spec(max_memory_mb=512)))
    assert fixed.find("maxMemory") is None and fixed.find("devices/memory") is None
    assert fixed.findtext("memory") == "512" == fixed.findtext("currentMemory")
    # An odd MiB of room is not a whole block: left out.
    assert parse(build_domain_xml(spec(max_memory_mb=515))).find(
        "devices/memory/target").findtext("size") == "2"


def test_hostile_display_name_cannot_change_the_document():
    hostile = "a</name><devices><disk type='file'><source file='/etc/shadow'/></disk></devices>"
    xml = build_domain_xml(spec(display_name=hostile))
    root = parse(xml)
    assert root.findtext("name") == UUID
    assert len(root.findall("name")) == 1
    assert len(root.findall("devices")) == 1
    assert len(root.findall("devices/disk")) == 1
    assert "/etc/shadow'/>" not in xml  # only ever present escaped, as text
    assert owner_of(xml) == "host-a"


def test_unknown_virt_type_is_refused():
    with pytest.raises(ValueError):
        build_domain_xml(spec(virt_type="xen"))


def test_owner_of_foreign_domain_is_none():
    assert owner_of("<domain type='qemu'><name>x</name></domain>") is None


def test_direct_kernel_boot_or_the_disks_own_bootloader():
    direct = parse(build_domain_xml(spec()))
    assert direct.findtext("os/kernel") == "/b/vmlinuz" and direct.find("os/boot") is None
    own = parse(build_domain_xml(spec(kernel="", initrd="", cmdline="")))
    assert own.find("os/kernel") is None and own.find("os/cmdline") is None
    assert own.find("os/boot").get("dev") == "hd"


def test_config_drive_is_a_read_only_ide_cdrom():
    root = parse(build_domain_xml(spec(config_drive="/i/config.iso")))
    disks = root.findall("devices/disk")
    assert [d.get("device") for d in disks] == ["disk", "cdrom"]
    cdrom = disks[1]
    assert cdrom.get("type") == "file"
    assert cdrom.find("source").get("file") == "/i/config.iso"
    assert cdrom.find("target").get("dev") == "hdc" and cdrom.find("target").get("bus") == "ide"
    assert cdrom.find("driver").get("type") == "raw"
    assert cdrom.find("readonly") is not None
    # The root disk stays the virtio one the guest mounts.
    assert disks[0].find("target").get("dev") == "vda"


def test_no_config_drive_no_cdrom():
    root = parse(build_domain_xml(spec()))
    assert [d.get("device") for d in root.findall("devices/disk")] == ["disk"]


def test_data_disks_follow_the_root_disk_with_their_serials():
    volumes = (DiskDevice("/v/a.qcow2", "qcow2", "vol-a"), DiskDevice("/v/b.raw", "raw"))
    root = parse(build_domain_xml(spec(config_drive="/i/config.iso", data_disks=volumes)))
    disks = root.findall("devices/disk")
    assert [d.find("target").get("dev") for d in disks] == ["vda", "hdc", "vdb", "vdc"]
    assert [d.find("source").get("file") for d in disks[2:]] == ["/v/a.qcow2", "/v/b.raw"]
    assert [d.find("driver").get("type") for d in disks[2:]] == ["qcow2", "raw"]
    assert disks[2].findtext("serial") == "vol-a" and disks[3].find("serial") is None
    with pytest.raises(ValueError):
        build_domain_xml(spec(data_disks=volumes * 13))  # 26: past vdy


def test_interfaces_in_order_with_their_macs():
    nics = (InterfaceDevice("network", "cloud-net"),
            InterfaceDevice("bridge", "brq-1", mac="52:54:00:12:34:56"))
    found = parse(build_domain_xml(spec(interfaces=nics))).findall("devices/interface")
    assert [n.get("type") for n in found] == ["network", "bridge"]
    assert found[0].find("source").get("network") == "cloud-net" and found[0].find("mac") is None
    assert found[1].find("source").get("bridge") == "brq-1"
    assert found[1].find("mac").get("address") == "52:54:00:12:34:56"
    assert [n.find("model").get("type") for n in found] == ["virtio", "virtio"]
    with pytest.raises(ValueError):
        build_domain_xml(spec(interfaces=(InterfaceDevice("direct", "eth0"),)))


DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize("kernel", [True, False], ids=["direct-kernel", "own-bootloader"])
def test_todays_spawn_defines_the_same_domain(tmp_path, kernel):
    """The domain the libvirt driver defines for a spawn without NICs or block devices
    is, byte for byte, the one it defined before networking and storage were split
    out of it (data/*.xml: written by that version's code, paths under /state),
    but for its memory: since issue 20 the boot memory is a NUMA cell and the room
    to grow a virtio-mem device, and TCG's translation cache is capped (data/*.xml
    rewritten then, those changes alone)."""
    from compute_agent.driver import ImageFiles, InstanceSpec
    from compute_agent.libvirt_driver import LibvirtDriver

    state = tmp_path / "state"
    (state / "_base").mkdir(parents=True)
    base = state / "_base" / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "1G"], check=True)
    driver = LibvirtDriver("qemu:///system", str(state), "host-a", virt_type="qemu")
    driver.qemu_gid = 0  # no libvirt asked: only the XML is compared
    image = ImageFiles("img", str(base), kernel_path=str(state / "_base/k") if kernel else "",
                       initrd_path=str(state / "_base/i") if kernel else "",
                       cmdline="console=ttyS0" if kernel else "")
    xml = driver.domain_xml(InstanceSpec(instance_id=UUID, name="web1", vcpus=1, memory_mb=128,
                                         disk_gb=1, image=image, max_vcpus=2, max_memory_mb=256))
    golden = DATA / ("spawn-direct-kernel.xml" if kernel else "spawn-own-bootloader.xml")
    assert xml.replace(str(state), "/state") == golden.read_text()
