"""`compute-agent --config FILE`: the agent's gRPC server and its heartbeat loop."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
from cloudapi.v1 import agent_pb2, agent_pb2_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from compute_agent.config import AgentConfig, load_config
from compute_agent.driver import ComputeDriver, DriverError, InstanceSpec
from compute_agent.errors import NetworkError
from compute_agent.guest_lister import GuestLister
from compute_agent.image_cache import ImageCache
from compute_agent.keyed_locks import KeyedLocks
from compute_agent.network import NicSpec
from compute_agent.reclaim import ReclaimLoop, ReclaimSettings
from compute_agent.storage import BlockDeviceSpec
from compute_agent.tenant.model import segment_from_proto
from compute_agent.tenant.networking import TenantNetworking
from compute_agent.tenant.sync import NetworkSync, host_networks_fetcher
from compute_agent.tls import ControlOnly, control_channel, server_credentials
from compute_agent.tls import load as load_tls

log = logging.getLogger(__name__)

FULL_REPORT_EVERY = 5
LIST_WAIT_S = 0.5  # well within any heartbeat interval (1 s in the tests, 2 s by default)
IMAGE_FETCH_TIMEOUT_S = 600


class ComputeAgentServicer(agent_pb2_grpc.ComputeAgentServicer):
    def __init__(self, driver: ComputeDriver, images: ImageCache, networks: NetworkSync):
        self.driver = driver
        self.images = images
        self.networks = networks
        # Two copies of one build task may call Spawn at once (a stalled build
        # re-sent by the reconciler while the original is slow, not dead): the
        # second waits, then finds the guest running and returns its power state,
        # instead of racing the first's disk and domain and, failing, cleaning up
        # the guest the first started. A Destroy waits for a spawn in progress.
        self.instance_locks = KeyedLocks()

    def Spawn(self, request, context):
        with self.instance_locks.hold(request.instance_id):
            return self._spawn(request, context)

    def _spawn(self, request, context):
        image = request.image
        try:
            files = self.images.ensure(image.id, image.disk_format or "qcow2", image.cmdline,
                                       image.disk_sha256, image.kernel_sha256, image.initrd_sha256)
            spec = InstanceSpec(
                instance_id=request.instance_id, name=request.name, vcpus=request.vcpus,
                memory_mb=request.memory_mb, disk_gb=request.disk_gb,
                max_vcpus=request.max_vcpus, max_memory_mb=request.max_memory_mb, image=files,
                hostname=request.hostname, public_keys=tuple(request.public_keys),
                user_data=request.user_data,
                nics=tuple(nic_spec(n) for n in request.nics),
                block_devices=tuple(BlockDeviceSpec(volume_id=b.volume_id, size_gb=b.size_gb)
                                    for b in request.block_devices))
            return agent_pb2.SpawnResponse(power_state=self.driver.spawn(spec))
        except DriverError as exc:
            context.abort(grpc.StatusCode.INTERNAL, str(exc))

    def Destroy(self, request, context):
        with self.instance_locks.hold(request.instance_id):
            try:
                return agent_pb2.DestroyResponse(existed=self.driver.destroy(request.instance_id))
            except DriverError as exc:
                context.abort(grpc.StatusCode.INTERNAL, str(exc))

    def GetPowerState(self, request, context):
        return agent_pb2.PowerStateResponse(
            power_state=self.driver.power_state(request.instance_id))

    def GetConsoleOutput(self, request, context):
        return agent_pb2.AgentConsoleResponse(
            output=self.driver.console_output(request.instance_id, request.max_bytes or 65536))

    def _power(self, context, action, *args) -> agent_pb2.PowerStateResponse:
        try:
            return agent_pb2.PowerStateResponse(power_state=action(*args))
        except DriverError as exc:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
            raise  # not reached: abort raises

    def Stop(self, request, context):
        return self._power(context, self.driver.stop, request.instance_id, request.timeout_s or 60)

    def Start(self, request, context):
        return self._power(context, self.driver.start, request.instance_id)

    def Reboot(self, request, context):
        return self._power(context, self.driver.reboot, request.instance_id, request.hard)

    def Scale(self, request, context):
        return self._power(context, self.driver.scale, request.instance_id, request.vcpus,
                           request.memory_mb, request.disk_gb)

    def Resize(self, request, context):
        return self._power(context, self.driver.resize, request.instance_id, request.vcpus,
                           request.memory_mb, request.disk_gb, request.max_vcpus,
                           request.max_memory_mb)

    def GetStats(self, request, context):
        try:
            counters = self.driver.stats(request.instance_id)
        except DriverError as exc:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
            raise  # not reached: abort raises
        return agent_pb2.InstanceStats(power_state=self.driver.power_state(request.instance_id),
                                       **{k: int(v) if k != "sampled_at" else v
                                          for k, v in counters.items()})

    def SyncNetworks(self, request, context):
        """The control plane's nudge: converge the tenant networks (or only the
        firewall) now; on a NAT host: nothing to do, no changes."""
        try:
            return agent_pb2.SyncNetworksResponse(
                changes=self.networks.sync(firewall_only=request.firewall_only))
        except grpc.RpcError as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE,
                          f"cannot read this host's networks: {exc.details() or exc.code()}")
        except NetworkError as exc:
            context.abort(grpc.StatusCode.INTERNAL, str(exc))

    def GetInventory(self, request, context):
        inv = self.driver.host_inventory()
        return agent_pb2.HostInventory(vcpus=inv.vcpus, memory_mb=inv.memory_mb,
                                       disk_gb=inv.disk_gb)


def nic_spec(nic: agent_pb2.GuestNic) -> NicSpec:
    """A Spawn request's NIC; a tenant network's brings the network itself."""
    return NicSpec(network_id=nic.network_id, mac=nic.mac, fixed_ip=nic.fixed_ip,
                   network=segment_from_proto(nic.network) if nic.HasField("network") else None)


class Reporter:
    """Registers the host with the control plane, then heartbeats with what the
    driver sees of its instances. Keeps trying while the control plane is away.
    Metrics go from a thread of their own: each sample asks the hypervisor, which
    may be slow to answer (see guest_lister.py), and must not hold a heartbeat back."""

    def __init__(self, config: AgentConfig, driver: ComputeDriver, address: str,
                 channel: grpc.Channel):
        self.config = config
        self.driver = driver
        self.address = address
        # Mutual TLS: the host's certificate is its credential (compute_agent/tls.py).
        self.stub = agent_pb2_grpc.HostServiceStub(channel)
        self.interval = config.heartbeat_interval_s
        self.registered = threading.Event()
        self._reported: dict[str, tuple[str, tuple[str, ...]]] = {}
        self._beats = 0
        # Set by the control plane at registration; 0: no metrics reports.
        self.metrics_interval = 0.0
        self._metrics_sent = 0.0  # monotonic time of the last report
        # A heartbeat waits this long for a fresh list of guests, then sends the last one.
        self.guests = GuestLister(driver.list_instances, wait_s=LIST_WAIT_S)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reporter", daemon=True)
        self._metrics_thread = threading.Thread(target=self._run_metrics, name="metrics",
                                                daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._metrics_thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._metrics_thread.join(timeout=5)
        self.guests.close()

    def register(self) -> None:
        inv = self.driver.host_inventory()
        virt_type, hypervisor = self.driver.describe()
        response = self.stub.RegisterHost(agent_pb2.RegisterHostRequest(
            name=self.config.host_name, address=self.address,
            inventory=agent_pb2.HostInventory(vcpus=inv.vcpus, memory_mb=inv.memory_mb,
                                              disk_gb=inv.disk_gb),
            virt_type=virt_type, hypervisor=hypervisor), timeout=10)
        # The control plane decides how often hosts report (it judges them down).
        self.interval = response.heartbeat_interval_s or self.interval
        self.metrics_interval = float(response.metrics_interval_s)
        self.registered.set()
        self._beats = 0  # the next heartbeat reports everything
        log.info("registered host %s at %s", self.config.host_name, self.address)

    def heartbeat(self) -> None:
        """Report liveness, and of the instances only what changed since the last
        report (each one costs the control plane etcd reads); everything every
        FULL_REPORT_EVERY beats, so an observation it set aside is sent again.
        The guests are as last seen (GuestLister): liveness never waits on libvirt."""
        taken = self.guests.get()
        if taken is None:  # the first look is not done: liveness alone, guests next time
            self.stub.Heartbeat(agent_pb2.HeartbeatRequest(name=self.config.host_name),
                                timeout=10)
            return
        observed_at, observations = taken
        seen = {o.instance_id: (o.power_state, tuple(o.addresses)) for o in observations}
        full = self._beats % FULL_REPORT_EVERY == 0
        changed = seen if full else {i: s for i, s in seen.items() if self._reported.get(i) != s}
        self.stub.Heartbeat(agent_pb2.HeartbeatRequest(
            name=self.config.host_name, observed_at=observed_at, instances=[
                agent_pb2.InstanceObservation(instance_id=i, power_state=power, addresses=addresses)
                for i, (power, addresses) in changed.items()]),
            timeout=10)
        self._reported = seen
        self._beats += 1

    def report_metrics(self) -> int:
        """Send the counters of every running instance (one driver look each);
        the control plane derives rates from consecutive reports. Returns how
        many were sent."""
        samples = []
        for instance_id in self.driver.running_instances():
            try:
                c = self.driver.stats(instance_id)
            except DriverError:
                continue  # stopped or gone since it was listed
            if "cpu_time_ns" not in c:
                continue  # not running after all
            samples.append(agent_pb2.InstanceSample(
                instance_id=instance_id, sampled_at=c["sampled_at"],
                cpu_time_ns=int(c["cpu_time_ns"]), vcpus=int(c.get("vcpus", 0)),
                memory_available_kb=int(c.get("memory_available_kb", 0)),
                memory_unused_kb=int(c.get("memory_unused_kb", 0)),
                memory_usable_kb=int(c.get("memory_usable_kb", 0)),
                disk_read_bytes=int(c.get("disk_read_bytes", 0)),
                disk_write_bytes=int(c.get("disk_write_bytes", 0))))
        self.stub.ReportMetrics(agent_pb2.ReportMetricsRequest(
            name=self.config.host_name, samples=samples), timeout=10)
        return len(samples)

    def _run_metrics(self) -> None:
        while not self._stop.is_set():
            if self.registered.is_set():
                self._metrics_due()
            self._stop.wait(self.metrics_interval or self.interval)

    def _metrics_due(self) -> None:
        if not self.metrics_interval or \
                time.monotonic() - self._metrics_sent < self.metrics_interval - 0.05:
            return
        self._metrics_sent = time.monotonic()
        try:
            self.report_metrics()
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                self.metrics_interval = 0.0  # a control plane without metrics
            log.warning("metrics report to %s: %s", self.config.control_endpoint,
                        exc.details() or exc.code())
        except Exception:
            log.exception("metrics report failed")

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if not self.registered.is_set():
                    self.register()
                self.heartbeat()
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    self.registered.clear()  # the control plane forgot us: register again
                log.warning("control plane at %s: %s", self.config.control_endpoint,
                            exc.details() or exc.code())
            except Exception:
                log.exception("heartbeat failed")
            self._stop.wait(self.interval)


def image_fetcher(channel: grpc.Channel):
    """fetch(image_id, part): an image file's chunks, streamed by the control plane."""
    stub = agent_pb2_grpc.HostServiceStub(channel)

    def fetch(image_id: str, part: str):
        try:
            for message in stub.FetchImageFile(
                    agent_pb2.FetchImageFileRequest(image_id=image_id, part=part),
                    timeout=IMAGE_FETCH_TIMEOUT_S):
                yield message.data
        except grpc.RpcError as exc:
            raise DriverError(f"cannot fetch image {image_id} ({part}) from the control plane: "
                              f"{exc.details() or exc.code()}") from exc
    return fetch


def make_driver(config: AgentConfig) -> ComputeDriver:
    if config.driver == "fake":
        from compute_agent.fake_driver import FakeDriver
        return FakeDriver(fail_spawn=config.fake_fail_spawn, cpu_file=config.fake_cpu_file,
                          spawn_delay_s=config.fake_spawn_delay_s)
    from compute_agent.libvirt_driver import LibvirtDriver
    return LibvirtDriver(config.libvirt_uri, config.state_dir, config.host_name,
                         config.virt_type, config.network_name, config.network_bridge,
                         config.network_cidr, networking=config.networking,
                         tunnel_address=config.tunnel_address,
                         router_prefix=config.router_prefix(),
                         external_host_gateway=config.external_host_gateway,
                         device_tag=config.device_tag, security_groups=config.security_groups)


def create_agent(config: AgentConfig, driver: ComputeDriver | None = None,
                 ) -> tuple[grpc.Server, int, Reporter, ReclaimLoop, NetworkSync]:
    """Build the agent's server on config.listen (port 0 picks a free one), its
    reporter, its memory reclaim loop and its network sync (which does nothing
    unless the driver's networking is TenantNetworking). None is started. Both ways over
    mutual TLS (compute_agent/tls.py): without its certificate the agent does
    not start (TlsNotConfigured)."""
    tls = load_tls(config)
    driver = driver or make_driver(config)
    driver.init_host()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16),
                         interceptors=[ControlOnly(config.control_name)])
    channel = control_channel(config, tls)
    images = ImageCache(Path(config.state_dir) / "_base", image_fetcher(channel))
    tenant = driver.network if isinstance(driver.network, TenantNetworking) else None
    networks = NetworkSync(tenant, host_networks_fetcher(channel), config.network_sync_interval_s)
    agent_pb2_grpc.add_ComputeAgentServicer_to_server(ComputeAgentServicer(driver, images, networks),
                                                      server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    service = agent_pb2.DESCRIPTOR.services_by_name["ComputeAgent"].full_name
    for name in (service, ""):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection([service, health.SERVICE_NAME, reflection.SERVICE_NAME],
                                        server)
    port = server.add_secure_port(config.listen, server_credentials(tls))
    address = config.advertise_address or f"{config.listen.rsplit(':', 1)[0]}:{port}"
    reclaim = ReclaimLoop(driver, ReclaimSettings(
        enabled=config.reclaim_enabled, floor_mb=config.reclaim_floor_mb,
        floor_ratio=config.reclaim_floor_ratio, idle_s=config.reclaim_idle_s,
        interval_s=config.reclaim_interval_s, headroom_mb=config.reclaim_headroom_mb,
        step_mb=config.reclaim_step_mb))
    return server, port, Reporter(config, driver, address, channel), reclaim, networks


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="compute-agent")
    parser.add_argument("--config", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    config = load_config(args.config)
    server, port, reporter, reclaim, networks = create_agent(config)
    server.start()
    reporter.start()
    reclaim.start()
    networks.start()
    log.info("compute agent %s listening on port %d", config.host_name, port)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    networks.stop()
    reclaim.stop()
    reporter.stop()
    server.stop(grace=10).wait()


if __name__ == "__main__":
    main()
