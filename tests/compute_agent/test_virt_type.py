from compute_agent.libvirt_driver import detect_virt_type


def test_explicit_settings_are_kept():
    assert detect_virt_type("kvm") == "kvm"
    assert detect_virt_type("qemu") == "qemu"


def test_auto_picks_kvm_only_with_hardware_virtualization():
    with open("/proc/cpuinfo") as f:
        has_vmx_svm = any(flag in line.split() for line in f if line.startswith("flags")
                          for flag in ("vmx", "svm"))
    import os
    kvm_opens = os.access("/dev/kvm", os.R_OK | os.W_OK)
    assert detect_virt_type("auto") == ("kvm" if has_vmx_svm and kvm_opens else "qemu")


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
