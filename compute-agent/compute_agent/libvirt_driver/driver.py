"""The libvirt driver: QEMU/KVM guests on this host (with nat_network.py, its
networking): the libvirt_driver package is the only one that imports libvirt."""

from __future__ import annotations

import grp
import logging
import os
import shutil
import threading
import time
from pathlib import Path

import libvirt
from lxml import etree

from compute_agent.domain_xml import (
    MEMORY_BLOCK_MIB,
    DomainSpec,
    build_domain_xml,
    owner_of,
    set_memory,
)
from compute_agent.driver import (
    BalloonStatus,
    ComputeDriver,
    DriverError,
    HostInventory,
    InstanceSpec,
    Observation,
)
from compute_agent.libvirt_driver.nat_network import LibvirtNatNetwork
from compute_agent.local_storage import LocalFileStorage, make_private
from compute_agent.network import HostNetworking
from compute_agent.storage import GiB, InstanceStorage
from compute_agent.tenant.firewall import Firewall
from compute_agent.tenant.l2 import bridge_name
from compute_agent.tenant.networking import TenantNetworking
from compute_agent.tenant.router import Router, run_dir

log = logging.getLogger(__name__)

# libvirt prints every error to stderr by default; we handle them as exceptions.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

_POWER_STATES = {
    libvirt.VIR_DOMAIN_NOSTATE: "nostate",
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "running",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "running",   # shutting down, still running
    libvirt.VIR_DOMAIN_SHUTOFF: "shutoff",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "paused",
}


_event_loop_lock = threading.Lock()
_event_loop: threading.Thread | None = None


def ensure_event_loop() -> None:
    """Run libvirt's default event loop in a daemon thread, once per process.

    The embedded QEMU driver (`qemu:///embed?root=DIR`) runs in the calling
    process and does its monitor and process I/O through the caller's event
    loop: without one, opening it fails or a domain's start hangs on QEMU's
    monitor. The implementation must be registered before the first open, so
    this is called before it. qemu:///system needs no loop (libvirtd has its own)."""
    global _event_loop
    with _event_loop_lock:
        if _event_loop is not None:
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        _event_loop = threading.Thread(target=run, name="libvirt-event-loop", daemon=True)
        _event_loop.start()


def dac_group(capabilities_xml: str, virt_type: str) -> int:
    """The group QEMU runs as, from libvirt's DAC security model in the host's
    capabilities (its label is "+uid:+gid"); 0 when libvirt has no DAC label
    (QEMU runs as root, or as the connection's user with qemu:///session)."""
    root = etree.fromstring(capabilities_xml.encode())
    for model in root.iterfind("host/secmodel"):
        if model.findtext("model") != "dac":
            continue
        for label in model.iterfind("baselabel"):
            if label.get("type") == virt_type and ":" in (label.text or ""):
                group = label.text.strip().split(":", 1)[1]
                if group.startswith("+"):
                    return int(group[1:])
                return grp.getgrnam(group).gr_gid
    return 0


def detect_virt_type(setting: str, kvm_device: str = "/dev/kvm",
                     cpuinfo: str = "/proc/cpuinfo") -> str:
    """kvm or qemu. `auto` picks kvm only when /dev/kvm opens *and* the CPU
    advertises vmx/svm: without them (nested virtualization off) /dev/kvm may
    exist and a KVM guest still hangs. (The paths are parameters for tests.)"""
    if setting in ("kvm", "qemu"):
        return setting
    try:
        fd = os.open(kvm_device, os.O_RDWR)
        os.close(fd)
    except OSError:
        return "qemu"
    flags = set()
    with open(cpuinfo) as f:
        for line in f:
            if line.startswith("flags"):
                flags.update(line.split(":", 1)[1].split())
    return "kvm" if flags & {"vmx", "svm"} else "qemu"


class LibvirtDriver(ComputeDriver):
    """network and storage: by default the host's libvirt NAT network and qcow2
    files in state_dir (the network_* settings are the NAT network's). With
    networking "tenant", the tenant networks (tenant/networking.py: guests on a
    bridge per network, VXLAN from tunnel_address), the NAT network kept for
    NICs that name no network."""

    def __init__(self, uri: str, state_dir: str, host_name: str, virt_type: str = "auto",
                 network_name: str = "cloud-net", network_bridge: str = "cloudbr0",
                 network_cidr: str = "10.213.0.0/24", network: HostNetworking | None = None,
                 storage: InstanceStorage | None = None, networking: str = "nat",
                 tunnel_address: str = "", router_prefix: str = "qrouter-",
                 external_host_gateway: bool = False, device_tag: str = "",
                 security_groups: bool = False):
        self.uri = uri
        self.state_dir = Path(state_dir)
        self.host_name = host_name
        self.virt_type = detect_virt_type(virt_type)
        # qemu:///embed?root=DIR: libvirt's QEMU driver in this process (one agent
        # per network namespace, its guests' taps in it); needs an event loop thread.
        self.embedded = uri.startswith("qemu:///embed")
        nat = LibvirtNatNetwork(lambda: self.conn, self.state_dir / "network",
                                network_name, network_bridge, network_cidr)
        if network is None and networking == "tenant":
            # Not under state_dir (0710): dnsmasq reads its hosts file as nobody.
            router = Router(run_dir(host_name, device_tag), prefix=router_prefix,
                            host_gateway=external_host_gateway,
                            network_bridge=lambda n: bridge_name(n.vni, device_tag))
            # The embedded QEMU driver has no libvirt network driver, so no NAT
            # network for NICs that name none: there, every NIC is on a tenant network.
            firewall = Firewall(tunnel_address, device_tag) if security_groups else None
            network = TenantNetworking(tunnel_address, host_name, self.state_dir / "tenant-network",
                                       default=None if self.embedded else nat, router=router, tag=device_tag,
                                       firewall=firewall)
        self.network = network or nat
        self.storage = storage or LocalFileStorage(self.state_dir, self.qemu_group)
        self._conn: libvirt.virConnect | None = None
        self._lock = threading.Lock()
        # Serialises the entitlement (scale) with live balloon moves (reclaim), so a
        # reclaim decided on the old entitlement never undoes a scale.
        self._memory_lock = threading.Lock()
        self._hard_reboots: dict[str, int] = {}  # per instance: part of BalloonStatus.run_id
        self.qemu_gid: int | None = None  # QEMU's group (init_host asks libvirt)

    # ---------------------------------------------------------------- host

    @property
    def conn(self) -> libvirt.virConnect:
        with self._lock:
            if self._conn is None or not self._conn.isAlive():
                if self.embedded:
                    ensure_event_loop()
                try:
                    self._conn = libvirt.open(self.uri)
                except libvirt.libvirtError as exc:
                    raise DriverError(f"cannot connect to libvirt at {self.uri}: {exc}") from exc
            return self._conn

    def qemu_group(self) -> int:
        if self.qemu_gid is None:
            self.qemu_gid = dac_group(self.conn.getCapabilities(), self.virt_type)
        return self.qemu_gid

    def init_host(self) -> None:
        self.storage.ensure_host()
        self.network.ensure_host()

    def host_inventory(self) -> HostInventory:
        info = self.conn.getInfo()  # [model, memory MiB, cpus, ...]
        # getInfo's memory comes from NUMA topology, which some hosts (VMs with
        # hot-plugged memory) under-report; the node's memory stats are exact.
        memory_kib = self.conn.getMemoryStats(libvirt.VIR_NODE_MEMORY_STATS_ALL_CELLS)["total"]
        disk = shutil.disk_usage(self.state_dir)
        return HostInventory(vcpus=info[2], memory_mb=memory_kib // 1024,
                             disk_gb=disk.total // 2**30)

    def describe(self) -> tuple[str, str]:
        def version(v: int) -> str:
            return f"{v // 1_000_000}.{v // 1000 % 1000}.{v % 1000}"
        return self.virt_type, (f"QEMU {version(self.conn.getVersion())} / "
                                f"libvirt {version(self.conn.getLibVersion())}")

    # ---------------------------------------------------------------- instances

    def _domain(self, instance_id: str) -> libvirt.virDomain | None:
        try:
            return self.conn.lookupByUUIDString(instance_id)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise DriverError(str(exc)) from exc

    def _instance_dir(self, instance_id: str) -> Path:
        return self.state_dir / "instances" / instance_id

    def spawn(self, spec: InstanceSpec) -> str:
        existing = self._domain(spec.instance_id)
        if existing is not None and existing.isActive():
            return self.power_state(spec.instance_id)
        try:
            return self._spawn(spec, existing)
        except Exception as exc:
            log.warning("spawn of %s failed, cleaning up: %s", spec.instance_id, exc)
            self.destroy(spec.instance_id)
            raise DriverError(f"spawn failed: {exc}") from exc

    def _spawn(self, spec: InstanceSpec, domain: libvirt.virDomain | None) -> str:
        if domain is None:
            domain = self.conn.defineXML(self.domain_xml(spec))
        domain = self._boot(domain)
        log.info("spawned %s (%s)", spec.instance_id, spec.name)
        return self.power_state(spec.instance_id)

    def domain_xml(self, spec: InstanceSpec) -> str:
        """Prepare the instance's disks and plug its NICs; the domain they make."""
        base = spec.image
        make_private(self._instance_dir(spec.instance_id), self.qemu_group())  # its console log
        root = self.storage.prepare_root(spec.instance_id, base, spec.disk_gb)
        # Rebuilt on every define: a retried spawn may carry other keys or user data.
        drive = self.storage.prepare_config_drive(spec.instance_id, spec.hostname, spec.public_keys,
                                                  spec.user_data)
        data = tuple(self.storage.attach(spec.instance_id, device) for device in spec.block_devices)
        nics = tuple(self.network.plug(spec.instance_id, index, nic)
                     for index, nic in enumerate(spec.nics_or_default()))
        return build_domain_xml(DomainSpec(
            uuid=spec.instance_id, display_name=spec.name, owner_host=self.host_name,
            virt_type=self.virt_type, vcpus=spec.vcpus, max_vcpus=max(spec.vcpus, spec.max_vcpus),
            memory_mb=spec.memory_mb, max_memory_mb=max(spec.memory_mb, spec.max_memory_mb),
            kernel=base.kernel_path, initrd=base.initrd_path,
            cmdline=f"{base.cmdline} cloud.instance_id={spec.instance_id}" if base.kernel_path
            else "",
            disk_path=root.path, console_log=str(self._instance_dir(spec.instance_id) / "console.log"),
            interfaces=nics, config_drive=drive.path, data_disks=data))

    def destroy(self, instance_id: str) -> bool:
        domain = self._domain(instance_id)
        existed = domain is not None
        if domain is not None:
            try:
                if domain.isActive():
                    domain.destroy()
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                    raise DriverError(str(exc)) from exc
            try:
                domain.undefine()
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                    raise DriverError(str(exc)) from exc
        existed = self.network.unplug_all(instance_id) or existed
        existed = self.storage.delete_instance(instance_id) or existed
        directory = self._instance_dir(instance_id)  # the console log, if storage left it
        if directory.exists():
            existed = True
            shutil.rmtree(directory, ignore_errors=True)
        return existed

    def power_state(self, instance_id: str) -> str:
        domain = self._domain(instance_id)
        if domain is None:
            return "nostate"
        return _POWER_STATES.get(domain.state()[0], "nostate")

    def console_output(self, instance_id: str, max_bytes: int) -> bytes:
        path = self._instance_dir(instance_id) / "console.log"
        try:
            with open(path, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(0, size - max_bytes))
                return f.read()
        except FileNotFoundError:
            return b""

    def _addresses(self, domain: libvirt.virDomain) -> list[str]:
        try:
            interfaces = domain.interfaceAddresses(
                libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE)
        except libvirt.libvirtError:
            return []
        return sorted(addr["addr"] for iface in interfaces.values()
                      for addr in (iface.get("addrs") or []))

    def list_instances(self) -> list[Observation]:
        found = []
        for domain in self.conn.listAllDomains():
            try:
                if owner_of(domain.XMLDesc()) != self.host_name:
                    continue
                state = _POWER_STATES.get(domain.state()[0], "nostate")
                addresses = self._addresses(domain) if domain.isActive() else []
            except libvirt.libvirtError:
                continue  # vanished while we looked
            found.append(Observation(domain.UUIDString(), state, addresses))
        return found

    # ---------------------------------------------------------------- lifecycle

    def _require(self, instance_id: str) -> libvirt.virDomain:
        domain = self._domain(instance_id)
        if domain is None:
            raise DriverError(f"instance {instance_id} is not on this host")
        return domain

    def _wait_off(self, domain: libvirt.virDomain, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while domain.isActive() and time.monotonic() < deadline:
            time.sleep(0.2)
        return not domain.isActive()

    def stop(self, instance_id: str, timeout_s: int) -> str:
        domain = self._require(instance_id)
        try:
            if domain.isActive():
                # The ACPI power button: the guest shuts down cleanly. Pressed again
                # every SHUTDOWN_RETRY_S (as Nova's shutdown_retry_interval): a press
                # while the guest boots, before anything in it listens, is lost.
                deadline = time.monotonic() + timeout_s
                while True:
                    domain.shutdown()
                    if self._wait_off(domain, min(SHUTDOWN_RETRY_S, deadline - time.monotonic())):
                        break
                    if time.monotonic() >= deadline:
                        log.info("%s did not shut down in %ss: powering off", instance_id,
                                 timeout_s)
                        domain.destroy()
                        break
        except libvirt.libvirtError as exc:
            if self._domain(instance_id) is None:  # destroyed meanwhile (a delete)
                raise DriverError(f"instance {instance_id} is not on this host") from exc
            if domain.isActive():
                raise DriverError(f"stop failed: {exc}") from exc
        return self.power_state(instance_id)

    def start(self, instance_id: str) -> str:
        domain = self._require(instance_id)
        try:
            if not domain.isActive():
                self._boot(domain)
        except libvirt.libvirtError as exc:
            raise DriverError(f"start failed: {exc}") from exc
        return self.power_state(instance_id)

    def _boot(self, domain: libvirt.virDomain) -> libvirt.virDomain:
        """Start a defined domain, its memory laid out as set_memory does (a
        domain defined before issue 20 is redefined so first), and cap QEMU's
        memory."""
        root = etree.fromstring(domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE).encode())
        if root.find(VIRTIO_MEM) is None and _kib(root.find("memory")) > _kib(root.find("currentMemory")):
            # Its maximum was the boot memory, hidden by the balloon.
            set_memory(root, _kib(root.find("currentMemory")) // 1024, _kib(root.find("memory")) // 1024,
                       int(root.findtext("vcpu")))
            domain = self.conn.defineXML(etree.tostring(root, encoding="unicode"))
            log.info("redefined %s: its memory is now plugged, not ballooned", domain.UUIDString())
        domain.create()
        self._limit_memory(domain, _entitled_kib(domain))
        return domain

    @staticmethod
    def _limit_memory(domain: libvirt.virDomain, entitled_kib: int) -> None:
        """QEMU's memory (its cgroup's hard limit): the guest's entitlement plus
        QEMU_OVERHEAD_MIB, so whatever the guest does, the host never gives it
        more. A backstop: the guest sees only its entitlement (set_memory), and
        QEMU exceeding the limit is killed by the host. Live only: with a hard
        limit in the definition libvirt also sets QEMU's RLIMIT_MEMLOCK to it,
        which a host without CAP_SYS_RESOURCE refuses (the domain would not start)."""
        limit = entitled_kib + QEMU_OVERHEAD_MIB * 1024
        try:
            domain.setMemoryParameters({libvirt.VIR_DOMAIN_MEMORY_HARD_LIMIT: limit},
                                       libvirt.VIR_DOMAIN_AFFECT_LIVE)
        except libvirt.libvirtError as exc:
            log.warning("cannot limit the memory of %s to %d MiB (no memory cgroup?): %s",
                        domain.UUIDString(), limit // 1024, exc)

    def reboot(self, instance_id: str, hard: bool) -> str:
        domain = self._require(instance_id)
        if not domain.isActive():
            raise DriverError("the instance is not running")
        try:
            if hard:
                self._deflate_before_reset(instance_id, domain)
                domain.reset(0)
            else:
                # A clean shutdown and a fresh start: guests differ in what an
                # ACPI "reboot" means, but all shut down on the power button.
                self.stop(instance_id, REBOOT_SHUTDOWN_TIMEOUT_S)
                domain.create()
        except libvirt.libvirtError as exc:
            raise DriverError(f"reboot failed: {exc}") from exc
        return self.power_state(instance_id)

    def scale(self, instance_id: str, vcpus: int, memory_mb: int, disk_gb: int) -> str:
        domain = self._require(instance_id)
        root = etree.fromstring(domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE).encode())
        max_vcpus = int(root.findtext("vcpu"))
        max_memory_mb = int(root.findtext("memory")) // 1024  # KiB
        if vcpus > max_vcpus or memory_mb > max_memory_mb:
            raise DriverError(f"beyond this instance's maximum of {max_vcpus} vCPUs and "
                              f"{max_memory_mb} MiB")
        live = bool(domain.isActive())
        flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG | (libvirt.VIR_DOMAIN_AFFECT_LIVE if live else 0)
        if disk_gb:
            current = domain.blockInfo("vda")[0] if live else self.storage.root_size(instance_id)
            if disk_gb * GiB < current:
                raise DriverError("a disk can only grow")
        try:
            if vcpus:
                domain.setVcpusFlags(vcpus, flags)
            if memory_mb:
                with self._memory_lock:
                    if not live:  # the next boot's memory, laid out anew
                        stopped = etree.fromstring(domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE).encode())
                        set_memory(stopped, memory_mb, max_memory_mb, max_vcpus)
                        self.conn.defineXML(etree.tostring(stopped, encoding="unicode"))
                    elif root.find(VIRTIO_MEM) is not None:
                        self._plug_memory(domain, root, memory_mb, live)
                    else:  # defined before issue 20: the balloon's target, until a restart
                        domain.setMemoryFlags(memory_mb * 1024, flags)
            if disk_gb and disk_gb * GiB > current:
                if live:
                    domain.blockResize("vda", disk_gb * GiB, libvirt.VIR_DOMAIN_BLOCK_RESIZE_BYTES)
                else:
                    self.storage.grow_root(instance_id, disk_gb)
        except libvirt.libvirtError as exc:
            raise DriverError(f"scale failed: {exc}") from exc
        log.info("scaled %s: vcpus=%s memory_mb=%s disk_gb=%s (live=%s)", instance_id, vcpus,
                 memory_mb, disk_gb, live)
        return self.power_state(instance_id)

    def _plug_memory(self, domain: libvirt.virDomain, root: etree._Element, memory_mb: int,
                     live: bool) -> None:
        """Scale memory by the virtio-mem device: plug (or unplug) what lies
        above the boot memory, in whole blocks, in the persistent definition
        and, if running, live (the guest onlines it as it comes). Below the
        boot memory: DriverError (a stop and resize does that)."""
        base_mib = _kib(root.find("cpu/numa/cell"), "memory") // 1024
        if memory_mb < base_mib:
            raise DriverError(f"{memory_mb} MiB is below the {base_mib} MiB this instance booted "
                              "with: stop it and resize it to go lower")
        requested = (memory_mb - base_mib) // MEMORY_BLOCK_MIB * MEMORY_BLOCK_MIB
        entitled_kib = (base_mib + requested) * 1024
        if live:  # the limit moves up before the memory comes, down after it went
            self._limit_memory(domain, max(entitled_kib, _entitled_kib(domain)))
        targets = [(root, libvirt.VIR_DOMAIN_AFFECT_CONFIG)]
        if live:  # the live device, with its alias: libvirt finds it by that
            targets.append((etree.fromstring(domain.XMLDesc().encode()), libvirt.VIR_DOMAIN_AFFECT_LIVE))
        for definition, flag in targets:
            device = definition.find(VIRTIO_MEM)
            wanted = device.find("target/requested")
            wanted.text, wanted.attrib["unit"] = str(requested), "MiB"
            for runtime in device.findall("target/current"):
                device.find("target").remove(runtime)
            domain.updateDeviceFlags(etree.tostring(device, encoding="unicode"), flag)
        if live:
            self._limit_memory(domain, entitled_kib)

    def resize(self, instance_id: str, vcpus: int, memory_mb: int, disk_gb: int, max_vcpus: int,
               max_memory_mb: int) -> str:
        domain = self._require(instance_id)
        if domain.isActive():
            raise DriverError("stop the instance before a resize")
        if disk_gb * GiB < self.storage.root_size(instance_id):
            raise DriverError("a disk can only grow")
        root = etree.fromstring(domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE).encode())
        vcpu = root.find("vcpu")
        vcpu.text, vcpu.attrib["current"] = str(max(vcpus, max_vcpus)), str(vcpus)
        set_memory(root, memory_mb, max(memory_mb, max_memory_mb), max(vcpus, max_vcpus))
        try:
            self.conn.defineXML(etree.tostring(root, encoding="unicode"))
            self.storage.grow_root(instance_id, disk_gb)
        except libvirt.libvirtError as exc:
            raise DriverError(f"resize failed: {exc}") from exc
        return self.power_state(instance_id)

    def stats(self, instance_id: str) -> dict[str, float]:
        domain = self._require(instance_id)
        result: dict[str, float] = {"sampled_at": time.time()}
        if not domain.isActive():
            return result
        try:
            _, _, _, vcpus, cpu_time = domain.info()
            memory = domain.memoryStats()
            rd_req, rd_bytes, wr_req, wr_bytes, _ = domain.blockStats("vda")
        except libvirt.libvirtError as exc:
            raise DriverError(f"stats failed: {exc}") from exc
        entitled = _entitled_kib(domain)
        actual = memory.get("actual", 0) + _plugged_kib(domain) if "actual" in memory else entitled
        result.update(cpu_time_ns=cpu_time, vcpus=vcpus,
                      memory_entitled_kb=entitled,
                      memory_reclaimed_kb=max(0, entitled - actual),
                      memory_actual_kb=actual if "actual" in memory else 0,
                      memory_available_kb=memory.get("available", 0),
                      memory_unused_kb=memory.get("unused", 0),
                      memory_usable_kb=memory.get("usable", 0), memory_rss_kb=memory.get("rss", 0),
                      disk_read_bytes=rd_bytes, disk_write_bytes=wr_bytes,
                      disk_read_requests=rd_req, disk_write_requests=wr_req)
        return result

    # ---------------------------------------------------------------- memory reclaim

    def _deflate_before_reset(self, instance_id: str, domain: libvirt.virDomain) -> None:
        """A reset keeps the QEMU process with its balloon (maybe reclaimed), and QEMU
        keeps reporting the balloon's old size until it next moves. So give the guest
        its whole entitlement first, as a restart would, and wait (briefly: a hung
        guest does not answer) for it to take it; it counts as a new run."""
        with self._memory_lock:
            self._hard_reboots[instance_id] = self._hard_reboots.get(instance_id, 0) + 1
            full = _balloon_ceiling_kib(domain)
            domain.setMemoryFlags(full, libvirt.VIR_DOMAIN_AFFECT_LIVE)
        deadline = time.monotonic() + DEFLATE_BEFORE_RESET_WAIT_S
        while (domain.memoryStats().get("actual", full) < full
               and time.monotonic() < deadline):
            time.sleep(0.1)

    def running_instances(self) -> list[str]:
        found = []
        for domain in self.conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
            try:
                if owner_of(domain.XMLDesc()) == self.host_name:
                    found.append(domain.UUIDString())
            except libvirt.libvirtError:
                continue  # vanished while we looked
        return found

    def balloon_status(self, instance_id: str) -> BalloonStatus | None:
        domain = self._domain(instance_id)
        if domain is None:
            return None
        try:
            if not domain.isActive():
                return None
            memory = domain.memoryStats()
            entitled = _entitled_kib(domain)
            run_id = f"{domain.ID()}.{self._hard_reboots.get(instance_id, 0)}"
        except libvirt.libvirtError as exc:
            if _gone_or_stopped(domain):
                return None  # stopped or deleted while we looked
            raise DriverError(f"balloon stats failed: {exc}") from exc
        # Without "usable" (a guest kernel that does not report MemAvailable) its
        # needs are unknown: report no figures, and reclaim leaves it alone.
        reporting = "usable" in memory and "available" in memory
        actual = memory.get("actual", 0) + _plugged_kib(domain) if "actual" in memory else 0
        return BalloonStatus(entitled_kib=entitled, actual_kib=actual,
                             available_kib=memory["available"] if reporting else 0,
                             usable_kib=memory["usable"] if reporting else 0,
                             report_id=memory.get("last_update", 0), run_id=run_id)

    def set_balloon(self, instance_id: str, target_kib: int, entitled_kib: int) -> bool:
        domain = self._domain(instance_id)
        if domain is None:
            return False
        with self._memory_lock:
            try:
                if not domain.isActive() or _entitled_kib(domain) != entitled_kib:
                    return False
                # The balloon acts within the boot memory only; what virtio-mem
                # plugged stays (target_kib counts both). AFFECT_LIVE only: the
                # persistent definition stays the entitlement.
                balloon = min(min(target_kib, entitled_kib) - _plugged_kib(domain),
                              _balloon_ceiling_kib(domain))
                domain.setMemoryFlags(max(balloon, MIN_BALLOON_KIB), libvirt.VIR_DOMAIN_AFFECT_LIVE)
            except libvirt.libvirtError as exc:
                if _gone_or_stopped(domain):
                    return False
                raise DriverError(f"balloon move failed: {exc}") from exc
        return True


def _gone_or_stopped(domain: libvirt.virDomain) -> bool:
    """Whether a domain we hold a handle to has stopped or been deleted since
    (the reclaim loop races with deletes: that is not an error)."""
    try:
        return not domain.isActive()
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return True
        raise DriverError(str(exc)) from exc


def _entitled_kib(domain: libvirt.virDomain) -> int:
    """The tenant's memory, from the persistent definition (what the next boot
    gets; scale and resize change it, reclaim never does): the boot memory plus
    what the virtio-mem device is asked to plug; for a domain defined before
    issue 20, its currentMemory."""
    root = etree.fromstring(domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE).encode())
    device = root.find(VIRTIO_MEM)
    if device is None:
        return int(root.findtext("currentMemory"))  # libvirt reports it in KiB
    return _kib(root.find("cpu/numa/cell"), "memory") + _kib(device.find("target/requested"))


def _plugged_kib(domain: libvirt.virDomain) -> int:
    """What the virtio-mem device has plugged into the running guest now (the
    balloon's figures leave it out); 0 without one."""
    device = etree.fromstring(domain.XMLDesc().encode()).find(VIRTIO_MEM)
    current = device.find("target/current") if device is not None else None
    return _kib(current) if current is not None else 0


def _balloon_ceiling_kib(domain: libvirt.virDomain) -> int:
    """The most the balloon can give the guest: its boot memory (virtio-mem
    gives the rest); for a domain defined before issue 20, its entitlement."""
    root = etree.fromstring(domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE).encode())
    if root.find(VIRTIO_MEM) is None:
        return int(root.findtext("currentMemory"))
    return _kib(root.find("cpu/numa/cell"), "memory")


def _kib(element: etree._Element, attribute: str = "") -> int:
    """A size from libvirt's XML (the text, or an attribute, with its unit), in KiB."""
    value = int(element.get(attribute) if attribute else element.text)
    return value * UNIT_BYTES[element.get("unit", "KiB")] // 1024


UNIT_BYTES = {"b": 1, "bytes": 1, "k": 1024, "KiB": 1024, "M": 1024**2, "MiB": 1024**2,
              "G": 1024**3, "GiB": 1024**3}
# The device a live memory scale plugs into (domain_xml.set_memory).
VIRTIO_MEM = "devices/memory[@model='virtio-mem']"


REBOOT_SHUTDOWN_TIMEOUT_S = 30
MIN_BALLOON_KIB = 64 * 1024  # the least reclaim leaves within the boot memory
# QEMU's own memory above the guest's: measured 50-60 MiB idle under TCG, plus
# its translation cache (domain_xml.TCG_TB_CACHE_MIB). Its hard limit is the
# guest's entitlement plus this.
QEMU_OVERHEAD_MIB = 256
SHUTDOWN_RETRY_S = 3
DEFLATE_BEFORE_RESET_WAIT_S = 3

