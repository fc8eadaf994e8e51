"""A driver that keeps instances in memory, with the same contract as the real
one: for scale tests with hundreds of hosts, never in place of libvirt in an
integration test. Like the real one it composes a network and a storage
implementation: by default the fakes of their contracts (network.py, storage.py)."""

from __future__ import annotations

import fnmatch
import json
import threading
import time
from dataclasses import replace
from pathlib import Path

from compute_agent.driver import (
    BalloonStatus,
    ComputeDriver,
    DriverError,
    HostInventory,
    InstanceSpec,
    Observation,
)
from compute_agent.network import FakeNetwork, HostNetworking
from compute_agent.storage import FakeStorage, InstanceStorage


class FakeDriver(ComputeDriver):
    def __init__(self, inventory: HostInventory | None = None, fail_spawn: bool = False,
                 cpu_file: str = "", spawn_delay_s: float = 0.0,
                 network: HostNetworking | None = None, storage: InstanceStorage | None = None):
        self.network = network or FakeNetwork()
        self.storage = storage or FakeStorage()
        self.inventory = inventory or HostInventory(vcpus=8, memory_mb=16384, disk_gb=200)
        self.fail_spawn = fail_spawn
        self.spawn_delay_s = spawn_delay_s  # how long a spawn takes (fault tests)
        # How busy guests are: {"name pattern": percent} in a JSON file (see
        # AgentConfig.fake_cpu_file); their CPU time grows at that rate.
        self.cpu_file = Path(cpu_file) if cpu_file else None
        self._cpu_rules: list[tuple[str, float]] = []
        self._cpu_file_stamp: tuple[int, int] | None = None
        self._cpu_time: dict[str, tuple[float, float]] = {}  # id -> (when, cpu ns then)
        self.instances: dict[str, InstanceSpec] = {}
        self.stopped: set[str] = set()
        # The live balloon of guests whose memory was reclaimed (KiB); absent: the
        # entitlement. Every (re)start, hard reboot or scale gives it back.
        self.balloon: dict[str, int] = {}
        self.guest_used_kib = 64 * 1024  # what every fake guest cannot give up
        self._runs: dict[str, int] = {}
        self._reports = 0
        self._lock = threading.Lock()

    def init_host(self) -> None:
        self.storage.ensure_host()
        self.network.ensure_host()

    def host_inventory(self) -> HostInventory:
        return self.inventory

    def describe(self) -> tuple[str, str]:
        return "fake", "fake driver"

    def spawn(self, spec: InstanceSpec) -> str:
        if self.power_state(spec.instance_id) == "running":
            return "running"  # spawned already (a second copy of its build): not restarted
        if self.fail_spawn:
            raise DriverError("spawn failed: the fake driver was told to fail")
        if self.spawn_delay_s:
            time.sleep(self.spawn_delay_s)
        try:
            self._prepare(spec)
        except Exception as exc:
            self.destroy(spec.instance_id)
            raise DriverError(f"spawn failed: {exc}") from exc
        with self._lock:
            self.instances[spec.instance_id] = spec
        self._restart(spec.instance_id)
        return "running"

    def _prepare(self, spec: InstanceSpec) -> None:
        """What the libvirt driver prepares before it defines a domain."""
        self.storage.prepare_root(spec.instance_id, spec.image, spec.disk_gb)
        self.storage.prepare_config_drive(spec.instance_id, spec.hostname, spec.public_keys,
                                          spec.user_data)
        for device in spec.block_devices:
            self.storage.attach(spec.instance_id, device)
        for index, nic in enumerate(spec.nics_or_default()):
            self.network.plug(spec.instance_id, index, nic)

    def destroy(self, instance_id: str) -> bool:
        with self._lock:
            self.stopped.discard(instance_id)
            self.balloon.pop(instance_id, None)
            self._cpu_time.pop(instance_id, None)
            existed = self.instances.pop(instance_id, None) is not None
        existed = self.network.unplug_all(instance_id) or existed
        return self.storage.delete_instance(instance_id) or existed

    def power_state(self, instance_id: str) -> str:
        if instance_id not in self.instances:
            return "nostate"
        return "shutoff" if instance_id in self.stopped else "running"

    def console_output(self, instance_id: str, max_bytes: int) -> bytes:
        if instance_id not in self.instances:
            return b""
        return f"CLOUD-BOOT-OK instance_id={instance_id} boot_id=fake\n".encode()[-max_bytes:]

    def list_instances(self) -> list[Observation]:
        with self._lock:
            return [Observation(i, self.power_state(i)) for i in self.instances]

    def _require(self, instance_id: str) -> InstanceSpec:
        if instance_id not in self.instances:
            raise DriverError(f"instance {instance_id} is not on this host")
        return self.instances[instance_id]

    def resize(self, instance_id: str, vcpus: int, memory_mb: int, disk_gb: int, max_vcpus: int,
               max_memory_mb: int) -> str:
        spec = self._require(instance_id)
        if instance_id not in self.stopped:
            raise DriverError("stop the instance before a resize")
        if disk_gb < spec.disk_gb:
            raise DriverError("a disk can only grow")
        self.storage.grow_root(instance_id, disk_gb)
        self.instances[instance_id] = replace(spec, vcpus=vcpus, memory_mb=memory_mb, disk_gb=disk_gb,
                                              max_vcpus=max_vcpus, max_memory_mb=max_memory_mb)
        return "shutoff"

    def stats(self, instance_id: str) -> dict[str, float]:
        spec = self._require(instance_id)
        actual = self.balloon.get(instance_id, spec.memory_mb * 1024)
        now = time.time()
        return {"sampled_at": now, "cpu_time_ns": self._cpu_time_ns(spec, now),
                "vcpus": spec.vcpus, "memory_actual_kb": actual, "memory_available_kb": actual,
                "memory_unused_kb": max(0, actual - self.guest_used_kib),
                "memory_usable_kb": max(0, actual - self.guest_used_kib),
                "memory_entitled_kb": spec.memory_mb * 1024,
                "memory_reclaimed_kb": spec.memory_mb * 1024 - actual}

    def cpu_percent(self, name: str) -> float:
        """How busy a guest of this display name is told to be (0 to 100)."""
        if self.cpu_file is not None:
            try:
                stat = self.cpu_file.stat()
                stamp = (stat.st_mtime_ns, stat.st_size)
                if stamp != self._cpu_file_stamp:
                    rules = json.loads(self.cpu_file.read_text() or "{}")
                    self._cpu_rules = [(str(k), float(v)) for k, v in rules.items()]
                    self._cpu_file_stamp = stamp
            except FileNotFoundError:
                self._cpu_rules, self._cpu_file_stamp = [], None
            except (OSError, ValueError, AttributeError):
                pass  # half-written: keep the rules read before
        for pattern, percent in self._cpu_rules:
            if fnmatch.fnmatchcase(name, pattern):
                return min(100.0, max(0.0, percent))
        return 0.0

    def _cpu_time_ns(self, spec: InstanceSpec, now: float) -> int:
        """Cumulative CPU time, grown since the last look at the rate set now."""
        with self._lock:
            if spec.instance_id in self.stopped:
                return int(self._cpu_time.get(spec.instance_id, (now, 0.0))[1])
            since, used = self._cpu_time.get(spec.instance_id, (now, 0.0))
            used += max(0.0, now - since) * spec.vcpus * 1e9 * self.cpu_percent(spec.name) / 100
            self._cpu_time[spec.instance_id] = (now, used)
            return int(used)

    def _restart(self, instance_id: str) -> None:
        """A new run of the guest: it gets its whole entitlement."""
        self._runs[instance_id] = self._runs.get(instance_id, 0) + 1
        self.balloon.pop(instance_id, None)
        self._cpu_time.pop(instance_id, None)  # a new QEMU process counts from 0

    def running_instances(self) -> list[str]:
        with self._lock:
            return [i for i in self.instances if i not in self.stopped]

    def balloon_status(self, instance_id: str) -> BalloonStatus | None:
        spec = self.instances.get(instance_id)
        if spec is None or instance_id in self.stopped:
            return None
        actual = self.balloon.get(instance_id, spec.memory_mb * 1024)
        self._reports += 1  # every look is a fresh report
        return BalloonStatus(entitled_kib=spec.memory_mb * 1024, actual_kib=actual,
                             available_kib=actual, usable_kib=max(0, actual - self.guest_used_kib),
                             report_id=self._reports, run_id=str(self._runs.get(instance_id, 0)))

    def set_balloon(self, instance_id: str, target_kib: int, entitled_kib: int) -> bool:
        spec = self.instances.get(instance_id)
        if spec is None or instance_id in self.stopped or spec.memory_mb * 1024 != entitled_kib:
            return False
        self.balloon[instance_id] = min(target_kib, entitled_kib)
        return True

    def stop(self, instance_id: str, timeout_s: int) -> str:
        self._require(instance_id)
        self.stopped.add(instance_id)
        return "shutoff"

    def start(self, instance_id: str) -> str:
        self._require(instance_id)
        if instance_id in self.stopped:
            self.stopped.discard(instance_id)
            self._restart(instance_id)
        return "running"

    def reboot(self, instance_id: str, hard: bool) -> str:
        self._require(instance_id)
        if instance_id in self.stopped:
            raise DriverError("the instance is not running")
        self._restart(instance_id)
        return "running"

    def scale(self, instance_id: str, vcpus: int, memory_mb: int, disk_gb: int) -> str:
        spec = self._require(instance_id)
        if vcpus > max(spec.vcpus, spec.max_vcpus) or memory_mb > max(spec.memory_mb,
                                                                         spec.max_memory_mb):
            raise DriverError("beyond this instance's maximum")
        if disk_gb and disk_gb < spec.disk_gb:
            raise DriverError("a disk can only grow")
        if disk_gb:
            self.storage.grow_root(instance_id, disk_gb)
        self.instances[instance_id] = replace(spec, vcpus=vcpus or spec.vcpus,
                                              memory_mb=memory_mb or spec.memory_mb,
                                              disk_gb=disk_gb or spec.disk_gb)
        if memory_mb:
            self.balloon.pop(instance_id, None)  # the balloon goes to the new size
        return self.power_state(instance_id)
