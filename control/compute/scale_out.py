"""Scale out: several instances of one flavor in one request (web-1 .. web-N).

Quota and host capacity are claimed for all of them in one etcd transaction,
together with their records: either `count` instances (or, with min_count, at
least that many) exist and hold their claims, or none does. Their builds then
find their allocation already made and go straight to spawning.
"""

from __future__ import annotations

import logging

from control import deadlines
from control.compute import actions, guest_data, records
from control.compute.instances import CREATE_INSTANCES, Instances, recorded_request
from control.errors import AlreadyExists, Conflict, InvalidArgument, ResourceExhausted, Unavailable
from control.identity.accounts import Caller
from control.identity.quotas import FIELDS, UNLIMITED, Quotas, QuotaValues
from control.models import Allocation, Instance, validate_name
from control.placement.scheduler import Scheduler, flavor_request
from control.queue import BUILD_INSTANCE, TaskQueue
from control.store import keys
from control.store.etcd import Store, Txn

log = logging.getLogger(__name__)

MAX_COUNT = 20  # bounded so that one etcd transaction holds them all
# With tenant networks each instance also takes an address key and a member key
# per security group: 7 writes (record, name, index, action, user data,
# allocation, address) and one per group each, plus one per host (at most one
# per instance) and a few, must stay within etcd's 128 operations per
# transaction: 13 instances in the default group alone, 9 in five groups.
ETCD_MAX_TXN_OPS = 128
TXN_OPS_BESIDES_INSTANCES = 8  # quota, request id, image check, ...


def max_count_with_nics(groups: int) -> int:
    """The most instances one scale-out with tenant networks can create when
    each joins `groups` security groups."""
    per_instance = 7 + max(groups, 1) + 1  # its writes, its groups', its host's
    return min(MAX_COUNT, (ETCD_MAX_TXN_OPS - TXN_OPS_BESIDES_INSTANCES) // per_instance)
ATTEMPTS = 20


def fitting(limits: QuotaValues, usage: QuotaValues, one: QuotaValues, wanted: int) -> int:
    """How many of `one` fit in the quota, up to `wanted`."""
    fits = wanted
    for f in FIELDS:
        limit, each = getattr(limits, f), getattr(one, f)
        if limit != UNLIMITED and each > 0:
            fits = min(fits, max(0, (limit - getattr(usage, f)) // each))
    return fits


class ScaleOut:
    def __init__(self, store: Store, queue: TaskQueue, instances: Instances, quotas: Quotas,
                 scheduler: Scheduler):
        self.store = store
        self.queue = queue
        self.instances = instances
        self.quotas = quotas
        self.scheduler = scheduler

    def create(self, caller: Caller, name: str, flavor_name: str, image_ref: str, count: int,
               min_count: int = 0, request_id: str = "", key_name: str = "",
               user_data: bytes = b"", group: str = "",
               security_groups: list[str] | None = None) -> list[Instance]:
        project = caller.project
        min_count = min_count or count
        if not 1 <= count <= MAX_COUNT:
            raise InvalidArgument(f"count must be 1 to {MAX_COUNT}")
        if not 1 <= min_count <= count:
            raise InvalidArgument("min_count must be 1 to count")
        if group:
            # The plan picks all hosts at once without the group's policy (an
            # anti-affinity group would get several members on one host).
            raise InvalidArgument("a scale-out cannot join a server group; create the "
                                  "instances one by one with --group")
        guest_data.validate_user_data(user_data)
        stored_user_data = guest_data.encode_user_data(user_data)
        # One copy per instance, all in one etcd transaction (etcd caps its size).
        if count * len(stored_user_data.get("zlib_base64", "")) > guest_data.SCALE_OUT_BUDGET:
            raise InvalidArgument(f"user data too large for a scale-out of {count}: "
                                  f"compressed, {count} copies exceed "
                                  f"{guest_data.SCALE_OUT_BUDGET // 1024} KiB; use a smaller count")
        names = [validate_name(f"{name}-{i}", "instance name") for i in range(1, count + 1)]
        self.instances._check_request_id(request_id)
        if (earlier := self._replay(project, request_id)) is not None:
            return earlier
        refs = list(dict.fromkeys(security_groups or []))
        # With tenant networks: a NIC each on the project's default network.
        if self.instances.config.tenant_networks and count > (most := max_count_with_nics(len(refs))):
            raise InvalidArgument(f"count must be 1 to {most} with tenant networks and "
                                  f"{max(len(refs), 1)} security group(s) (one transaction holds "
                                  "them all, addresses and memberships included)")
        flavor, image = self.instances.flavor_and_image(caller, flavor_name, image_ref)
        if key_name:
            self.instances.keypairs.get(project, key_name)  # NOT_FOUND before anything is written
        on_networks = self.instances.networks_of(project, [])  # the default one made, if need be
        # The groups asked for (NOT_FOUND, or refused without tenant networks,
        # before anything is written), or the default group, made if need be.
        in_groups = self.instances.security_groups_of(project, refs)
        one = QuotaValues.of(flavor.resources)
        request = flavor_request(flavor)

        for attempt in range(ATTEMPTS):
            if attempt:
                deadlines.check(f"the scale-out {name!r}")
            limits, usage = self.quotas.limits(project), self.quotas.usage(project)
            wanted = fitting(limits, usage, one, count)
            if wanted < min_count:
                raise ResourceExhausted(
                    f"quota allows {wanted} more of flavor {flavor.name} in project {project}, "
                    f"asked at least {min_count}")
            made = [self.instances.new_instance(project, n, flavor, image, request_id)
                    for n in names[:wanted]]
            for instance in made:
                instance.key_name = key_name
            txn = Txn()
            hosts, summary = self.scheduler.claim_many_into(txn, request, [
                Allocation(instance_id=i.id, project=project, host="", resources=i.resources)
                for i in made])
            if len(hosts) < min_count:
                raise ResourceExhausted(f"no room for {min_count} of flavor {flavor.name}: "
                                        f"{len(hosts)} fit; {summary}")
            made = made[:len(hosts)]
            action_keys = []
            if on_networks:
                networks = self.instances.networks
                assert networks is not None
                on_networks = networks.reread(on_networks) if attempt else on_networks
                for instance in made:  # each its own address: nics_into sees the txn's
                    instance.nics = networks.nics_into(txn, on_networks, instance.id)
            if in_groups:
                group_service = self.instances.security_groups
                assert group_service is not None
                in_groups = group_service.reread(in_groups) if attempt else in_groups
                for instance in made:
                    instance.security_groups = group_service.join_into(txn, project, in_groups,
                                                                        instance.id)
            for instance in made:
                action_keys.append(records.create_into(txn, instance, actions.Begin(
                    "create", request_id, caller.username)))
                guest_data.put_user_data_into(txn, project, instance.id, stored_user_data)
            self.quotas.claim_into(txn, project, _times(one, len(made)))
            txn.expect(self.instances.images.bootable(caller, image.id)[1])  # not deleted meanwhile
            if request_id:
                txn.expect_absent(keys.request(project, request_id)).put(
                    keys.request(project, request_id),
                    {"kind": CREATE_INSTANCES, "instance_ids": [i.id for i in made]})
            if self.store.commit(txn):
                break
            if (earlier := self._replay(project, request_id)) is not None:
                return earlier  # the same request raced with itself
            taken = [n for n in names if records.name_taken(self.store, project, n)]
            if taken:
                raise AlreadyExists(f"instances named {', '.join(taken)} already exist")
            self.scheduler.table.reread()  # a host or the quota moved meanwhile
        else:
            raise Conflict("too many concurrent changes; try again")

        try:
            for instance, action_key in zip(made, action_keys, strict=True):
                self.queue.send(BUILD_INSTANCE, instance.id, action_key)
        except Unavailable:
            # Redis is down: take every one of them back, claims included.
            for instance, action_key in zip(made, action_keys, strict=True):
                self.instances._forget(instance)
                self.scheduler.placement.release(instance.id)
                self.store.commit(Txn().delete(action_key))
            if request_id:
                self.store.commit(Txn().delete(keys.request(project, request_id)))
            raise
        log.info("%d instances of %s requested in %s", len(made), flavor.name, project)
        return made

    def _replay(self, project: str, request_id: str) -> list[Instance] | None:
        """The instances an earlier scale-out with this id made, if there was one."""
        recorded = recorded_request(self.store, project, request_id, CREATE_INSTANCES)
        if recorded is None:
            return None
        return [self.instances.get(project, i) for i in recorded["instance_ids"]]


def _times(one: QuotaValues, n: int) -> QuotaValues:
    return QuotaValues(**{f: getattr(one, f) * n for f in FIELDS})
