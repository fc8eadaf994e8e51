"""The agent's virt_type: `auto` picks kvm only when /dev/kvm opens *and* the CPU
advertises vmx or svm (DESIGN.md: here /dev/kvm opens but a KVM guest hangs, the
CPU has neither flag). detect_virt_type itself is run on made-up device and
cpuinfo files."""

from pathlib import Path

import pytest
from compute_agent.libvirt_driver import detect_virt_type

INTEL = "flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep vmx smx est tm2 ssse3\n"
AMD = "flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep svm extapic cr8_legacy\n"
# What this machine's CPU says: no vmx or svm among the flags (nested virtualization
# off), while other lines may still name them.
NO_HW = ("processor\t: 0\nmodel name\t: Virtual CPU (vmx svm emulated)\n"
         "flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep hypervisor\n"
         "vmx flags\t: vnmi preemption_timer\n")


def machine(tmp_path: Path, cpuinfo: str, kvm: str = "opens") -> tuple[str, str]:
    """Paths of a /dev/kvm that opens (a writable file), is missing, or won't open
    read-write (a directory), and of a /proc/cpuinfo with `cpuinfo` in it."""
    device = tmp_path / "kvm"
    if kvm == "opens":
        device.write_bytes(b"")
    elif kvm == "refuses":
        device.mkdir()
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\n" + cpuinfo + "\nprocessor\t: 1\n" + cpuinfo)
    return str(device), str(info)


def test_explicit_settings_are_kept_whatever_the_machine(tmp_path):
    assert detect_virt_type("kvm", *machine(tmp_path, NO_HW, kvm="missing")) == "kvm"
    assert detect_virt_type("qemu", *machine(tmp_path, INTEL)) == "qemu"


@pytest.mark.parametrize("cpuinfo", [INTEL, AMD], ids=["vmx", "svm"])
def test_auto_picks_kvm_when_kvm_opens_and_the_cpu_has_vmx_or_svm(tmp_path, cpuinfo):
    assert detect_virt_type("auto", *machine(tmp_path, cpuinfo)) == "kvm"


def test_auto_picks_qemu_when_the_cpu_lacks_vmx_and_svm(tmp_path):
    """This machine's case: /dev/kvm opens, no hardware virtualization."""
    assert detect_virt_type("auto", *machine(tmp_path, NO_HW)) == "qemu"


@pytest.mark.parametrize("kvm", ["missing", "refuses"])
def test_auto_picks_qemu_when_kvm_does_not_open(tmp_path, kvm):
    assert detect_virt_type("auto", *machine(tmp_path, INTEL, kvm)) == "qemu"


def test_qemus_group_comes_from_libvirts_dac_label():
    from compute_agent.libvirt_driver import dac_group

    caps = """<capabilities><host>
      <secmodel><model>none</model><doi>0</doi></secmodel>
      <secmodel><model>dac</model><doi>0</doi>
        <baselabel type='kvm'>+64055:+109</baselabel>
        <baselabel type='qemu'>+64055:+64055</baselabel>
      </secmodel></host></capabilities>"""
    assert dac_group(caps, "qemu") == 64055
    assert dac_group(caps, "kvm") == 109
    assert dac_group(caps.replace("+109", "root"), "kvm") == 0  # a group's name
    # No DAC label (QEMU runs as root, or as the caller with qemu:///session): root's group.
    assert dac_group("<capabilities><host/></capabilities>", "qemu") == 0
