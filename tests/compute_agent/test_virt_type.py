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
