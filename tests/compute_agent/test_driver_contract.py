"""The driver contract (compute_agent/driver.py), checked against every driver:
the fake one, and libvirt with real QEMU guests."""

import shutil
import tempfile
import uuid
from pathlib import Path

import pytest
from compute_agent.driver import DriverError, ImageFiles, InstanceSpec
from compute_agent.fake_driver import FakeDriver

from tests.conftest import IMAGE_DIR


def image_files() -> ImageFiles:
    return ImageFiles(id="contract-image", kernel_path=str(IMAGE_DIR / "vmlinuz"),
                      initrd_path=str(IMAGE_DIR / "initrd.img"),
                      disk_path=str(IMAGE_DIR / "disk.qcow2"),
                      cmdline="console=ttyS0 root=/dev/vda rw quiet")


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


def test_spawn_twice_is_idempotent(driver):
    s = spec()
    driver.spawn(s)
    assert driver.spawn(s) == "running"
    assert [o.instance_id for o in driver.list_instances()].count(s.instance_id) == 1
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
    bad_kernel = tmp_path / "vmlinuz"
    bad_kernel.write_bytes(b"\x00not a kernel" * 100)
    broken = ImageFiles(id=f"broken-{uuid.uuid4().hex[:6]}", kernel_path=str(bad_kernel),
                        initrd_path=str(IMAGE_DIR / "initrd.img"),
                        disk_path=str(IMAGE_DIR / "disk.qcow2"), cmdline="console=ttyS0")
    s = spec(broken)
    with pytest.raises(DriverError):
        driver.spawn(s)
    assert driver.power_state(s.instance_id) == "nostate"
    assert not (driver.state_dir / "instances" / s.instance_id).exists()
    assert s.instance_id not in [o.instance_id for o in driver.list_instances()]
