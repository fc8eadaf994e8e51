"""Floating IPs: addresses of the external network a project holds, each attached
to one NIC of one of its instances (1:1 NAT on that network's router) or to none.

A floating IP is two keys, written and deleted together: the external address
(keys.external_ip, cloud-wide, absent-only: shared with the routers' SNAT
addresses, so no address is held twice) and the project's record of it
(keys.floating_ip), with the project's `floating_ips` quota charged or given
back in the same transaction. The record says which NIC it is attached to; an
instance's NICs show it from there (nothing is written to the instance).

Attach and detach change only the record, then nudge the agent of the router's
host (ComputeAgent.SyncNetworks), best effort: agents also converge on a timer.
An instance's delete detaches its floating IPs in the transaction that removes
its record and gives back its addresses (detach_instance_into); the floating
IPs stay the project's.
"""

from __future__ import annotations

import builtins
import ipaddress
import logging
import random
import time
from collections.abc import Callable

from control import deadlines
from control.compute.instances import Instances, recorded_request
from control.compute.states import TaskState
from control.config import ControlConfig
from control.errors import CloudError, Conflict, InvalidArgument, InvalidTransition, NotFound
from control.identity.accounts import Caller
from control.identity.quotas import Quotas, QuotaValues
from control.models import FloatingIp, Instance, Nic
from control.network import ipam
from control.network.networks import Networks
from control.store import keys
from control.store.etcd import CAS_ATTEMPTS, Record, Store, Txn

log = logging.getLogger(__name__)

CREATE_FLOATING_IP = "CreateFloatingIp"  # its request ids' kind (control/compute/instances.py)
FLOATING_IPS_QUOTA = "floating_ips"
ATTEMPTS = 50


def detach_instance_into(store: Store, txn: Txn, instance: Instance) -> None:
    """Detach every floating IP attached to the instance, in `txn` (its delete)."""
    if not instance.nics:
        return  # none can be: floating IPs attach to NICs
    for record in store.list(keys.floating_ips(instance.project)):
        if record.value.get("instance_id") == instance.id:
            txn.expect(record).put(record.key, _detached(FloatingIp(**record.value)))


def _detached(floating: FloatingIp) -> dict:
    return floating.model_copy(update={"instance_id": "", "network_id": "", "fixed_ip": ""}
                               ).model_dump(mode="json")


class FloatingIps:
    def __init__(self, store: Store, quotas: Quotas, networks: Networks, instances: Instances,
                 config: ControlConfig, nudge: Callable[[str], object] | None = None):
        self.store = store
        self.quotas = quotas
        self.networks = networks
        self.instances = instances
        self.config = config
        # nudge(host name): ask that host's agent to converge its networks now.
        self.nudge = nudge or (lambda host: None)

    # ---------------------------------------------------------------- reads

    def record(self, project: str, address: str) -> Record:
        """The project's floating IP; another project's is NOT_FOUND."""
        try:
            ipaddress.IPv4Address(address)
        except ValueError:
            raise InvalidArgument(f"invalid floating IP {address!r}: not an IPv4 address") from None
        record = self.store.get(keys.floating_ip(project, address))
        if record is None:
            raise NotFound(f"floating IP {address} not found")
        return record

    def list(self, project: str) -> builtins.list[FloatingIp]:
        found = [FloatingIp(**r.value) for r in self.store.list(keys.floating_ips(project))]
        return sorted(found, key=lambda f: ipaddress.IPv4Address(f.address))

    def of_instances(self, project: str) -> dict[tuple[str, str], str]:
        """(instance id, network id) -> the floating IP attached there."""
        return {(f.instance_id, f.network_id): f.address for f in self.list(project) if f.instance_id}

    # ---------------------------------------------------------------- create, delete

    def _replay(self, project: str, request_id: str) -> FloatingIp | None:
        recorded = recorded_request(self.store, project, request_id, CREATE_FLOATING_IP)
        if recorded is None:
            return None
        current = self.store.get(keys.floating_ip(project, recorded["address"]))
        return FloatingIp(**(current.value if current else recorded["floating_ip"]))

    def create(self, caller: Caller, request_id: str = "") -> FloatingIp:
        """Allocate the lowest free external address to the project, charging its
        floating_ips quota in the same transaction (over quota: nothing taken)."""
        project = caller.project
        self.instances._check_request_id(request_id)
        if (earlier := self._replay(project, request_id)) is not None:
            return earlier
        for attempt in range(ATTEMPTS):
            if attempt:
                deadlines.check("the floating IP's create")
                time.sleep(random.uniform(0, 0.002 * min(attempt, 10)))
            txn = Txn()
            address = ipam.external_address_into(txn, self.store, self.config.external_cidr,
                                                 {"kind": "floating", "project": project})
            floating = FloatingIp(address=address, project=project)
            txn.put(keys.floating_ip(project, address), floating.model_dump(mode="json"))
            self.quotas.claim_into(txn, project, QuotaValues(resources={FLOATING_IPS_QUOTA: 1}))
            if request_id:
                txn.expect_absent(keys.request(project, request_id)).put(
                    keys.request(project, request_id),
                    {"kind": CREATE_FLOATING_IP, "address": address,
                     "floating_ip": floating.model_dump(mode="json")})
            if self.store.commit(txn):
                log.info("floating IP %s allocated to %s", address, project)
                return floating
            if (earlier := self._replay(project, request_id)) is not None:
                return earlier  # the same request raced with itself
        raise Conflict(f"too many concurrent changes in project {project}; try again")

    def delete(self, project: str, address: str) -> None:
        """Give the address back to the external network (detached first, in the
        same transaction) and the project's quota."""
        for _ in range(ATTEMPTS):
            record = self.record(project, address)
            before = FloatingIp(**record.value)
            txn = (Txn().expect(record).delete(record.key).delete(keys.external_ip(address)))
            self.quotas.release_into(txn, project, QuotaValues(resources={FLOATING_IPS_QUOTA: 1}))
            if self.store.commit(txn):
                log.info("floating IP %s released by %s", address, project)
                self._nudge(before.network_id)
                return
        raise Conflict(f"floating IP {address} is changing too often; try again")

    # ---------------------------------------------------------------- attach, detach

    def attach(self, project: str, address: str, instance_ref: str, network_ref: str = "") -> FloatingIp:
        """Attach to the instance's first NIC, or its NIC on `network_ref`; from
        another instance, it moves. One floating IP per NIC."""
        for _ in range(CAS_ATTEMPTS):
            record = self.record(project, address)
            before = FloatingIp(**record.value)
            target = self.instances.record(project, instance_ref)
            instance = Instance(**target.value)
            if instance.task_state is TaskState.DELETING:
                raise InvalidTransition(f"instance {instance.name} is being deleted")
            nic = self._nic(instance, project, network_ref)
            others = [r for r in self.store.list(keys.floating_ips(project)) if r.key != record.key]
            for other in others:
                value = other.value
                if value.get("instance_id") == instance.id and value.get("network_id") == nic.network_id:
                    raise InvalidTransition(
                        f"instance {instance.name}'s NIC on {nic.network_name} has floating IP "
                        f"{value['address']} already: detach it first")
            after = before.model_copy(update={"instance_id": instance.id, "network_id": nic.network_id,
                                              "fixed_ip": nic.fixed_ip})
            # The instance unchanged (so not being deleted: its delete detaches what
            # it finds), and no other floating IP of the project attached meanwhile
            # to this NIC (their count is bounded by the floating_ips quota).
            txn = Txn().expect(record).expect(target).put(record.key, after.model_dump(mode="json"))
            for other in others:
                txn.expect(other)
            if self.store.commit(txn):
                log.info("floating IP %s attached to %s (%s)", address, instance.id, nic.fixed_ip)
                self._nudge(after.network_id)
                if before.network_id and before.network_id != after.network_id:
                    self._nudge(before.network_id)
                return after
        raise Conflict(f"floating IP {address} is changing too often; try again")

    def _nic(self, instance: Instance, project: str, network_ref: str) -> Nic:
        if not instance.nics:
            raise InvalidTransition(f"instance {instance.name} has no NIC on a tenant network")
        if not network_ref:
            return instance.nics[0]
        network = self.networks.get(project, network_ref)
        for nic in instance.nics:
            if nic.network_id == network.id:
                return nic
        raise InvalidTransition(f"instance {instance.name} has no NIC on network {network.name}")

    def detach(self, project: str, address: str) -> FloatingIp:
        def change(record: Record) -> tuple[Txn | None, FloatingIp]:
            floating = FloatingIp(**record.value)
            if not floating.instance_id:
                return None, floating  # detached already
            return Txn().expect(record).put(record.key, _detached(floating)), floating

        self.record(project, address)  # NOT_FOUND, INVALID_ARGUMENT
        applied = self.store.apply(keys.floating_ip(project, address), change)
        if applied is None:
            raise NotFound(f"floating IP {address} not found")
        if applied.committed:
            log.info("floating IP %s detached from %s", address, applied.result.instance_id)
            self._nudge(applied.result.network_id)
        return FloatingIp(**applied.record.value) if applied.record else applied.result

    # ---------------------------------------------------------------- agents

    def _nudge(self, network_id: str) -> None:
        """Tell the router's host to converge now (best effort: it polls anyway)."""
        if not network_id:
            return
        host = self.networks.router_of(network_id)
        if not host:
            return
        try:
            self.nudge(host)
        except CloudError as exc:
            log.info("nudging %s about network %s failed (it converges on its timer): %s",
                     host, network_id, exc)

