"""Many hosts on one machine: four compute agents, each in its own network
namespace with its own address (tests/multihost/netns.py), registered with the
control plane over that network and mutual TLS. One runs the real libvirt
driver (libvirtd stays in the root namespace: its unix socket is reached
through the shared filesystem), three the fake driver. The control plane's
agent listener binds the bridge's address only; the API's public port stays on
loopback. Instances spread over the hosts (a real guest boots on the libvirt
one); cutting one host's link gets it marked down and avoided, restoring the
link brings it back."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from cloudapi.v1 import compute_pb2 as pb

from control.models import Host
from control.store import keys
from tests.conftest import login, start_cloud, stop_cloud, until
from tests.faults.checks import unlimited
from tests.integration.test_boot_e2e import wait_console
from tests.multihost.netns import NetnsLab

SETTINGS = {"reconcile_interval_s": 1, "host_down_after_s": 4, "heartbeat_interval_s": 1}
FAKE_HOSTS = 3


def host(store, name: str) -> Host | None:
    record = store.get(keys.host(name))
    return Host(**record.value) if record else None


@pytest.fixture(scope="module")
def lab():
    """The cloud, its namespaces and their agents; all removed afterwards, even
    when setting up failed halfway."""
    # iproute2's `ip` comes from scripts/programs.txt: without it the lab fails to start.
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    net = NetnsLab(1 + FAKE_HOSTS)
    cloud = None
    names: list[str] = []
    try:
        net.create()
        cloud, store = start_cloud("multihost", agent_api_host=net.gateway,
                                   control_settings=SETTINGS, agent_settings={"driver": "fake"})
        unlimited(cloud)
        admin = login(cloud, "admin")
        # The root namespace's own agent takes no instances here: only the namespaced hosts.
        admin.hosts.UpdateHost(pb.UpdateHostRequest(name=cloud.host_name, enabled=False,
                                                    disabled_reason="not in a namespace"))
        names = [f"mh-{net.tag}-{i}" for i in range(len(net.hosts))]
        with ThreadPoolExecutor(len(names)) as pool:
            list(pool.map(lambda i: cloud.add_agent(
                names[i], netns=net.hosts[i].namespace, address=net.hosts[i].address,
                driver="libvirt" if i == 0 else "fake"), range(len(names))))
        for name in names:
            until(lambda n=name: host(store, n) and store.get(keys.provider(n)), 60,
                  f"registration of {name}")
        yield net, cloud, store, admin, login(cloud), names
    finally:
        if cloud is not None:
            _delete_instances(cloud)
            stop_cloud(cloud, "multihost")
            if names:
                _destroy_leftover_guests(cloud, names[0])
        net.remove()


def _delete_instances(cloud) -> None:
    try:
        api = login(cloud)
        for instance in api.instances.ListInstances(pb.ListInstancesRequest(page_size=100)).instances:
            api.instances.DeleteInstance(pb.DeleteInstanceRequest(id_or_name=instance.id))
        for instance in api.instances.ListInstances(pb.ListInstancesRequest(page_size=100)).instances:
            api.wait_gone(instance.id)
    except Exception as exc:  # the cloud may be the thing that failed
        print(f"deleting instances: {exc}")


def _destroy_leftover_guests(cloud, host_name: str) -> None:
    """Guests of the namespaced libvirt host that the API did not delete."""
    from compute_agent.libvirt_driver import LibvirtDriver

    driver = LibvirtDriver("qemu:///system", str(cloud.root / f"agent-{host_name}"), host_name)
    for observation in driver.list_instances():
        driver.destroy(observation.instance_id)


def test_hosts_register_from_their_namespaces_and_instances_spread(lab):
    net, cloud, store, admin, api, names = lab
    for name, hostnet in zip(names, net.hosts, strict=True):
        registered = host(store, name)
        assert registered.up
        assert registered.address.rsplit(":", 1)[0] == hostnet.address
    shown = admin.hosts.GetHost(pb.GetHostRequest(name=names[0]))
    assert shown.up and shown.hypervisor  # the libvirt host reports its hypervisor
    api.groups.CreateServerGroup(pb.CreateServerGroupRequest(name="spread", policy="anti-affinity"))
    with ThreadPoolExecutor(len(names)) as pool:
        created = list(pool.map(lambda i: api.instances.CreateInstance(pb.CreateInstanceRequest(
            name=f"spread-{i}", flavor="tiny", group="spread")), range(len(names))))
    landed = [api.wait_status(i.id, {"ACTIVE", "ERROR"}, 30) for i in created]  # measured 4.9 s
    assert all(i.status == "ACTIVE" for i in landed), [i.fault.message for i in landed]
    hosts = {i.host for i in landed}
    print(f"\n{len(landed)} instances on {len(hosts)} hosts: "
          f"{sorted((i.name, i.host) for i in landed)}")
    assert hosts == set(names)  # anti-affinity: one on each (and none on the disabled root host)
    real = next(i for i in landed if i.host == names[0])
    started = time.monotonic()
    wait_console(api, real.id, rf"CLOUD-BOOT-OK instance_id={real.id} ", 60)  # measured 18.8 s
    print(f"the real guest on {names[0]} booted to its console marker in "
          f"{time.monotonic() - started:.1f}s after ACTIVE")


def test_cutting_a_hosts_link_marks_it_down_and_restoring_brings_it_back(lab):
    net, cloud, store, admin, api, names = lab
    victim, hostnet = names[1], net.hosts[1]
    fakes = names[1:]
    zone = f"z{net.tag}"
    for name in fakes:  # a zone of the fake hosts: instances made below need no real guest
        admin.hosts.UpdateHost(pb.UpdateHostRequest(name=name, zone=zone))
    admin.flavors.CreateFlavor(pb.CreateFlavorRequest(flavor=pb.Flavor(
        name=zone, vcpus=1, memory_mb=256, disk_gb=1, public=True, zone=zone)))
    net.cut(hostnet)
    cut = time.monotonic()
    until(lambda: not host(store, victim).up, 20, f"{victim} marked down")
    took_down = time.monotonic() - cut
    print(f"\nlink of {victim} cut: marked down after {took_down:.1f}s "
          f"(host_down_after_s {SETTINGS['host_down_after_s']}, "
          f"reconcile_interval_s {SETTINGS['reconcile_interval_s']})")
    assert took_down < SETTINGS["host_down_after_s"] + SETTINGS["reconcile_interval_s"] + 3
    assert not admin.hosts.GetHost(pb.GetHostRequest(name=victim)).up
    # The others stay up.
    assert all(host(store, n).up for n in names if n != victim)
    preview = api.instances.PreviewPlacement(pb.CreateInstanceRequest(
        name="p", flavor=zone))
    assert victim not in preview.candidates and "down" in preview.summary, preview
    avoided = [api.instances.CreateInstance(pb.CreateInstanceRequest(
        name=f"avoid-{i}", flavor=zone)) for i in range(4)]
    landed = [api.wait_status(i.id, {"ACTIVE", "ERROR"}, 10) for i in avoided]  # fake: 0.14 s
    assert all(i.status == "ACTIVE" for i in landed), [i.fault.message for i in landed]
    assert victim not in {i.host for i in landed}

    net.restore(hostnet)
    restored = time.monotonic()
    until(lambda: host(store, victim).up, 30, f"{victim} up again")
    took_up = time.monotonic() - restored
    print(f"link of {victim} restored: up again after {took_up:.1f}s")
    assert admin.hosts.GetHost(pb.GetHostRequest(name=victim)).up
    preview = api.instances.PreviewPlacement(pb.CreateInstanceRequest(
        name="p", flavor=zone))
    assert victim in preview.candidates, preview
    # And the control plane reaches its agent again (the call goes into its namespace).
    back = api.instances.CreateInstance(pb.CreateInstanceRequest(
        name="back", flavor=zone))
    assert api.wait_status(back.id, {"ACTIVE", "ERROR"}, 10).status == "ACTIVE"  # fake: 0.12 s
