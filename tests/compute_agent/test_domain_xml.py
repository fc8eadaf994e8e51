from compute_agent.domain_xml import DomainSpec, build_domain_xml, owner_of
from lxml import etree

UUID = "0f8fad5b-d9cb-469f-a165-70867728950e"


def spec(**changes):
    base = dict(uuid=UUID, display_name="web1", owner_host="host-a", virt_type="qemu", vcpus=1,
                max_vcpus=4, memory_mb=512, max_memory_mb=2048, kernel="/b/vmlinuz",
                initrd="/b/initrd.img", cmdline="console=ttyS0 cloud.instance_id=" + UUID,
                disk_path="/i/disk.qcow2", console_log="/i/console.log", network="cloud-net")
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
    assert parse(build_domain_xml(spec())).find("cpu") is None


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
    import pytest
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
