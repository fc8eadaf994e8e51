"""The driver contract (compute_agent/driver.py), checked against every driver:
the fake one, and libvirt with real QEMU guests."""

import shutil
import tempfile
import uuid
from dataclasses import replace
from pathlib import Path

import pytest
from compute_agent.driver import DriverError, ImageFiles, InstanceSpec
from compute_agent.fake_driver import FakeDriver
from compute_agent.network import NicSpec
from compute_agent.storage import BlockDeviceSpec

from tests.conftest import IMAGE_DIR, cached_image

CACHE = Path(tempfile.mkdtemp(prefix="smallcloud-contract-images-"))
CACHE.chmod(0o755)


def image_files() -> ImageFiles:
    return cached_image(CACHE)


@pytest.fixture(scope="module", params=["fake", "libvirt"])
def driver(request):
    if request.param == "fake":
        yield FakeDriver()
        return
    from compute_agent.libvirt_driver import LibvirtDriver

    state = Path(tempfile.mkdtemp(prefix="smallcloud-contract-"))
    state.chmod(0o755)
    driver = LibvirtDriver("qemu:///system", str(state / "agent"),
                           f"contract-{uuid.uuid4().hex[:6]}")
    driver.init_host()
    yield driver
    for observation in driver.list_instances():
        driver.destroy(observation.instance_id)
    shutil.rmtree(state, ignore_errors=True)


def spec(image=None) -> InstanceSpec:
    return InstanceSpec(instance_id=str(uuid.uuid4()), name="contract", vcpus=1, memory_mb=128,
                        disk_gb=1, image=image or image_files())


def test_spawn_runs_and_is_listed_and_destroy_removes(driver):
    s = spec()
    assert driver.spawn(s) == "running"
    assert driver.power_state(s.instance_id) == "running"
    assert s.instance_id in [o.instance_id for o in driver.list_instances()]
    assert driver.destroy(s.instance_id) is True
    assert driver.power_state(s.instance_id) == "nostate"
    assert s.instance_id not in [o.instance_id for o in driver.list_instances()]


def nics_of(driver, instance_id: str) -> dict:
    return {p.index: p.device for p in driver.network.plugged() if p.instance_id == instance_id}


def test_spawn_plugs_its_nics_and_attaches_its_volumes_and_destroy_undoes_them(driver):
    default = spec()
    driver.spawn(default)
    volume = f"vol-{uuid.uuid4().hex[:12]}"
    s = replace(spec(), nics=(NicSpec(mac="52:54:00:0a:0b:0c"), NicSpec()),
                block_devices=(BlockDeviceSpec(volume, 1),))
    try:
        assert list(nics_of(driver, default.instance_id)) == [0]  # empty: one, the default
        assert driver.spawn(s) == "running"
        nics = nics_of(driver, s.instance_id)
        assert sorted(nics) == [0, 1] and nics[0].mac == "52:54:00:0a:0b:0c"
        assert driver.storage.attached(s.instance_id) == [volume]
        if not isinstance(driver, FakeDriver):  # what the guest was given
            from lxml import etree
            root = etree.fromstring(driver.conn.lookupByUUIDString(s.instance_id).XMLDesc())
            assert [m.get("address") for m in root.findall("devices/interface/mac")][0] == \
                "52:54:00:0a:0b:0c"
            assert len(root.findall("devices/interface")) == 2
            assert root.find("devices/disk[serial]/target").get("dev") == "vdb"
    finally:
        driver.destroy(s.instance_id)
        driver.destroy(default.instance_id)
    for instance_id in (s.instance_id, default.instance_id):
        assert nics_of(driver, instance_id) == {}
        assert driver.storage.attached(instance_id) == []


def test_a_refused_nic_fails_the_spawn_and_leaves_nothing(driver):
    s = replace(spec(), nics=(NicSpec(), NicSpec(network_id="no-such-network")),
                block_devices=(BlockDeviceSpec(f"vol-{uuid.uuid4().hex[:12]}", 1),))
    with pytest.raises(DriverError):
        driver.spawn(s)
    assert driver.power_state(s.instance_id) == "nostate"
    assert nics_of(driver, s.instance_id) == {}
    assert driver.storage.attached(s.instance_id) == []
    assert s.instance_id not in [o.instance_id for o in driver.list_instances()]


def test_spawn_twice_is_idempotent(driver):
    s = spec()
    driver.spawn(s)
    run = driver.balloon_status(s.instance_id).run_id
    assert driver.spawn(s) == "running"
    assert [o.instance_id for o in driver.list_instances()].count(s.instance_id) == 1
    # The guest runs on as it was (a second copy of a build must do no harm).
    assert driver.balloon_status(s.instance_id).run_id == run
    driver.destroy(s.instance_id)


def test_destroying_a_missing_instance_succeeds(driver):
    missing = str(uuid.uuid4())
    assert driver.destroy(missing) is False
    assert driver.destroy(missing) is False


def test_unknown_instance_has_no_state_and_no_console(driver):
    missing = str(uuid.uuid4())
    assert driver.power_state(missing) == "nostate"
    assert driver.console_output(missing, 1024) == b""


def test_inventory_is_positive(driver):
    inventory = driver.host_inventory()
    assert inventory.vcpus > 0 and inventory.memory_mb > 0 and inventory.disk_gb > 0


def test_failed_spawn_leaves_nothing(driver, tmp_path):
    if isinstance(driver, FakeDriver):
        failing = FakeDriver(fail_spawn=True)
        with pytest.raises(DriverError):
            failing.spawn(spec())
        assert failing.list_instances() == []
        return
    tmp_path.chmod(0o755)
    (tmp_path / "bad-vmlinuz").write_bytes(b"\x00not a kernel" * 100)
    for name in ("disk.qcow2", "initrd.img", "image.json"):
        shutil.copy(IMAGE_DIR / name, tmp_path / name)
    s = spec(cached_image(CACHE, tmp_path, kernel="bad-vmlinuz"))
    with pytest.raises(DriverError):
        driver.spawn(s)
    assert driver.power_state(s.instance_id) == "nostate"
    assert not (driver.state_dir / "instances" / s.instance_id).exists()
    assert s.instance_id not in [o.instance_id for o in driver.list_instances()]


def _eventually(check, timeout_s: float = 90.0) -> bool:
    """A real guest moves its balloon once its driver is loaded (after boot)."""
    import time

    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


def test_balloon_moves_live_only_within_the_entitlement(driver):
    assert driver.balloon_status(str(uuid.uuid4())) is None
    s = spec()
    entitled = s.memory_mb * 1024
    reclaimed = entitled - 32 * 1024
    driver.spawn(s)

    def actual_is(kib):
        return lambda: driver.balloon_status(s.instance_id).actual_kib == kib
    try:
        assert s.instance_id in driver.running_instances()
        status = driver.balloon_status(s.instance_id)
        assert status.entitled_kib == entitled
        assert driver.set_balloon(s.instance_id, reclaimed, entitled) is True
        assert _eventually(actual_is(reclaimed))
        stats = driver.stats(s.instance_id)
        assert (stats["memory_entitled_kb"], stats["memory_reclaimed_kb"]) == (entitled, 32 * 1024)
        # A move decided on another entitlement (a scale came between) is refused.
        assert driver.set_balloon(s.instance_id, 64 * 1024, entitled + 1024) is False
        assert driver.set_balloon(s.instance_id, 4 * entitled, entitled) is True  # capped
        assert _eventually(actual_is(entitled))
        # A hard reboot gives the whole entitlement back, as a new run.
        driver.set_balloon(s.instance_id, reclaimed, entitled)
        assert _eventually(actual_is(reclaimed))
        driver.reboot(s.instance_id, hard=True)
        assert _eventually(actual_is(entitled))
        assert driver.balloon_status(s.instance_id).run_id != status.run_id
        # Live only: a stopped guest has no balloon and starts with its entitlement.
        driver.set_balloon(s.instance_id, reclaimed, entitled)
        assert _eventually(actual_is(reclaimed))
        driver.stop(s.instance_id, 30)
        assert driver.balloon_status(s.instance_id) is None
        assert s.instance_id not in driver.running_instances()
        driver.start(s.instance_id)
        assert driver.balloon_status(s.instance_id).actual_kib == entitled
    finally:
        driver.destroy(s.instance_id)


def test_an_instance_deleted_while_its_balloon_is_read_is_gone_not_an_error(driver, monkeypatch):
    """The reclaim loop looks a guest up, then reads its balloon: a delete in
    between left it a handle to a domain that no longer exists, and the loop
    logged an ERROR traceback every time (libvirt's "no domain" escaped)."""
    s = spec()
    driver.spawn(s)
    if isinstance(driver, FakeDriver):  # no handles to go stale
        driver.destroy(s.instance_id)
    else:
        stale = driver._domain(s.instance_id)
        driver.destroy(s.instance_id)
        monkeypatch.setattr(driver, "_domain", lambda instance_id: stale)
    assert driver.balloon_status(s.instance_id) is None
    assert driver.set_balloon(s.instance_id, 64 * 1024, s.memory_mb * 1024) is False


def test_a_domain_defined_before_virtio_mem_is_redefined_at_its_next_start(driver):
    """Issue 20: such a domain booted with its maximum memory hidden by the
    balloon. It keeps running as it is; its next start redefines it with its
    memory as the boot memory and the rest as a virtio-mem device."""
    if isinstance(driver, FakeDriver):
        return  # no domain definitions
    import libvirt
    from lxml import etree

    s = replace(spec(), max_memory_mb=512)
    driver.spawn(s)
    try:
        driver.stop(s.instance_id, 30)
        domain = driver._domain(s.instance_id)
        root = etree.fromstring(domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE).encode())
        for tag in ("maxMemory", "cpu"):
            root.remove(root.find(tag))
        root.find("devices").remove(root.find("devices/memory"))
        root.find("memory").text, root.find("memory").attrib["unit"] = "512", "MiB"
        driver.conn.defineXML(etree.tostring(root, encoding="unicode"))  # as it was defined then
        assert driver.start(s.instance_id) == "running"
        defined = driver._domain(s.instance_id).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        now = etree.fromstring(defined.encode())
        assert now.find("cpu/numa/cell").get("memory") == str(128 * 1024)  # KiB
        assert now.find("devices/memory[@model='virtio-mem']/target/size").text == str(384 * 1024)
        assert driver.balloon_status(s.instance_id).entitled_kib == 128 * 1024
    finally:
        driver.destroy(s.instance_id)


def _mode(path) -> int:
    return Path(path).stat().st_mode & 0o7777


def test_tenant_files_are_private_and_the_guest_still_boots(driver):
    """A tenant's disk, config drive (user data may hold secrets) and cached image are
    0600 and owned by root; libvirt lends them to QEMU's user while the guest runs.
    Their directories let QEMU through but no other local user list or open them."""
    if isinstance(driver, FakeDriver):
        pytest.skip("the fake driver keeps no files")
    import os
    import time

    s = spec()
    driver.spawn(s)
    try:
        directory = driver.state_dir / "instances" / s.instance_id
        qemu_gid = driver.qemu_group()
        for d in (driver.state_dir, driver.state_dir / "instances", driver.state_dir / "_base",
                  directory):
            assert (_mode(d), d.stat().st_uid, d.stat().st_gid) == (0o710, 0, qemu_gid), d
        files = [directory / "disk.qcow2", directory / "config.iso", directory / "console.log",
                 *(Path(p) for p in (s.image.disk_path, s.image.kernel_path, s.image.initrd_path))]
        for f in files:
            assert _mode(f) == 0o600, f
        deadline = time.monotonic() + 90
        while b"CLOUD-BOOT-OK" not in driver.console_output(s.instance_id, 1 << 20):
            assert time.monotonic() < deadline, "the guest did not boot with 0600 files"
            time.sleep(0.5)
        driver.stop(s.instance_id, 10)
        # Stopped, the disk is root's again (libvirt remembers and restores its owner).
        assert os.stat(directory / "disk.qcow2").st_uid == 0
        assert all(_mode(f) == 0o600 for f in files)
    finally:
        driver.destroy(s.instance_id)


def test_init_host_makes_existing_files_private(driver, tmp_path):
    """Files an older agent left world-readable are made private when the agent starts."""
    if isinstance(driver, FakeDriver):
        pytest.skip("the fake driver keeps no files")
    from compute_agent.libvirt_driver import LibvirtDriver

    state = tmp_path / "agent"
    old = state / "instances" / str(uuid.uuid4())
    old.mkdir(parents=True)
    (state / "_base").mkdir()
    for f in (old / "disk.qcow2", old / "config.iso", state / "_base" / ("0" * 64)):
        f.write_bytes(b"tenant data")
        f.chmod(0o644)
    for d in (state, state / "instances", old, state / "_base"):
        d.chmod(0o755)
    LibvirtDriver("qemu:///system", str(state), driver.host_name).init_host()
    for d in (state, state / "instances", old, state / "_base"):
        assert _mode(d) == 0o710, d
    for f in (old / "disk.qcow2", old / "config.iso", state / "_base" / ("0" * 64)):
        assert _mode(f) == 0o600, f
