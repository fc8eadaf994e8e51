"""Instance records: what the API does with them (validate, record intent, enqueue).

The API never acts on hosts itself: it writes the desired state to etcd and
hands the instance id to a Celery task (control/compute/tasks.py).
"""

from __future__ import annotations

import builtins
import logging
import random
import re
import time
import uuid
from typing import TYPE_CHECKING

from control import deadlines
from control.compute import actions, guest_data, records
from control.compute.flavors import Catalog
from control.compute.keypairs import Keypairs
from control.compute.server_groups import ServerGroups, with_member, without_member
from control.compute.states import Event, TaskState
from control.config import ControlConfig
from control.errors import AlreadyExists, Conflict, InvalidArgument, Unavailable
from control.identity.accounts import Caller
from control.identity.quotas import Quotas, QuotaValues
from control.images.catalog import Images
from control.models import Flavor, Image, Instance, validate_name
from control.network import ipam
from control.network.networks import Networks
from control.queue import BUILD_INSTANCE, DELETE_INSTANCE, TaskQueue
from control.store import keys, lookup
from control.store.etcd import CAS_ATTEMPTS, Record, Store, Txn

if TYPE_CHECKING:  # it imports this module (request ids)
    from control.network.security_groups import Joined, SecurityGroups

log = logging.getLogger(__name__)

REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,128}")

# What a request id was recorded for (its record's "kind"). A project's request ids
# are one namespace: an id used for one kind of request is not accepted for another.
CREATE_INSTANCE = "CreateInstance"
CREATE_INSTANCES = "CreateInstances"

# Creates in one project race for its quota record; a loser re-reads and tries
# again. Each loss means another create won, so this bounds the wait even when
# a hundred creates arrive at once.
QUOTA_ATTEMPTS = 200


def recorded_request(store: Store, project: str, request_id: str, kind: str) -> dict | None:
    """The record of an earlier request with this id (None if there was none).
    INVALID_ARGUMENT when the id was used for another kind of request: retrying
    cannot help, the caller must pick a new id."""
    if not request_id:
        return None
    record = store.get(keys.request(project, request_id))
    if record is None:
        return None
    # Records written before "kind" was recorded are told apart by their shape.
    first = record.value.get("kind") or (CREATE_INSTANCES if "instance_ids" in record.value
                                         else CREATE_INSTANCE)
    if first != kind:
        raise InvalidArgument(f"request_id {request_id!r} was used for a {first} request; "
                              f"use a new request_id for this {kind}")
    return record.value



class Instances:
    def __init__(self, store: Store, queue: TaskQueue, catalog: Catalog, images: Images,
                 quotas: Quotas, groups: ServerGroups, config: ControlConfig, keypairs: Keypairs,
                 networks: Networks | None = None, security_groups: SecurityGroups | None = None):
        self.groups = groups
        self.networks = networks
        self.security_groups = security_groups
        self.keypairs = keypairs
        self.config = config
        self.store = store
        self.queue = queue
        self.catalog = catalog
        self.images = images
        self.quotas = quotas
        self.default_image = config.default_image

    # ---------------------------------------------------------------- reads

    def record(self, project: str, id_or_name: str) -> Record:
        return lookup.by_id_or_name(self.store, id_or_name, lambda i: keys.instance(project, i),
                                    lambda n: keys.instance_name(project, n), "instance")

    def get(self, project: str, id_or_name: str) -> Instance:
        return Instance(**self.record(project, id_or_name).value)

    def list(self, project: str) -> list[Instance]:
        instances = [Instance(**r.value) for r in self.store.list(keys.instances(project))]
        return sorted(instances, key=lambda i: (i.created_at, i.name))

    # ---------------------------------------------------------------- create

    def _check_request_id(self, request_id: str) -> None:
        if request_id and not REQUEST_ID_PATTERN.fullmatch(request_id):
            raise InvalidArgument("invalid request_id: 1 to 128 characters from A-Z a-z 0-9 . _ : -")

    def _replay(self, project: str, request_id: str) -> Instance | None:
        """The result of an earlier request with this id, if there was one."""
        recorded = recorded_request(self.store, project, request_id, CREATE_INSTANCE)
        if recorded is None:
            return None
        found = self.store.get(keys.instance(project, recorded["instance_id"]))
        # The instance may be gone since (deleted): answer with what was recorded.
        return Instance(**(found.value if found else recorded["instance"]))

    def create(self, caller: Caller, name: str, flavor_name: str, image_ref: str,
               request_id: str = "", group: str = "", key_name: str = "",
               user_data: bytes = b"", scaling_group: str = "",
               networks: builtins.list[str] | None = None,
               security_groups: builtins.list[str] | None = None) -> Instance:
        """Record a new instance (and its user data) and claim its quota in one
        transaction, then queue its build. With tenant networks, the same
        transaction gives it a NIC (address and MAC) on each of `networks` (ids
        or names; none: the project's default network) and makes it a member of
        `security_groups` (ids or names; none: the project's default group)."""
        project = caller.project
        validate_name(name, "instance name")
        self._check_request_id(request_id)
        guest_data.validate_user_data(user_data)
        if (earlier := self._replay(project, request_id)) is not None:
            return earlier
        flavor, image = self.flavor_and_image(caller, flavor_name, image_ref)
        if group:
            self.groups.record(project, group)  # NOT_FOUND before anything is written
        if key_name:
            self.keypairs.get(project, key_name)
        # Groups first: a group not found refuses the create before a default network is made.
        in_groups = self.security_groups_of(project, security_groups or [])
        on_networks = self.networks_of(project, networks or [])
        instance = self.new_instance(project, name, flavor, image, request_id, group)
        instance.key_name = key_name
        instance.scaling_group = scaling_group
        stored_user_data = guest_data.encode_user_data(user_data)
        for attempt in range(QUOTA_ATTEMPTS):
            if attempt:
                deadlines.check(f"the create of {name!r}")
            txn = Txn()
            if on_networks:
                assert self.networks is not None
                if attempt:  # a network deleted meanwhile is NOT_FOUND now
                    on_networks = self.networks.reread(on_networks)
                instance.nics = self.networks.nics_into(txn, on_networks, instance.id)
            if in_groups:
                assert self.security_groups is not None
                if attempt:  # a group deleted meanwhile is NOT_FOUND now
                    in_groups = self.security_groups.reread(in_groups)
                instance.security_groups = self.security_groups.join_into(txn, project, in_groups,
                                                                          instance.id)
            data = instance.model_dump(mode="json")
            action_key = records.create_into(txn, instance, actions.Begin(
                "create", request_id, caller.username))
            guest_data.put_user_data_into(txn, project, instance.id, stored_user_data)
            if request_id:
                txn.expect_absent(keys.request(project, request_id)).put(
                    keys.request(project, request_id),
                    {"kind": CREATE_INSTANCE, "instance_id": instance.id, "instance": data})
            self.quotas.claim_into(txn, project, QuotaValues.of(flavor.resources))
            txn.expect(self.images.bootable(caller, image.id)[1])  # not deleted meanwhile
            if group:
                txn.merge(with_member(self.groups.record(project, group), instance.id))
            if self.store.commit(txn):
                break
            if (earlier := self._replay(project, request_id)) is not None:
                return earlier  # the same request raced with itself
            if records.name_taken(self.store, project, name):
                raise AlreadyExists(f"an instance named {name!r} already exists")
            # Another create in this project claimed quota first: read it again.
            time.sleep(random.uniform(0, 0.002 * min(attempt + 1, 10)))
        else:
            raise Conflict(f"too many concurrent creates in project {project}; try again")
        try:
            self.queue.send(BUILD_INSTANCE, instance.id, action_key)
        except Unavailable:
            self._forget(instance, request_id)
            self.store.commit(Txn().delete(action_key))  # no half-created instance is left
            raise
        # The conflicts it lost on the way (the quota record, or an address): what
        # tests of parallel creates count.
        log.info("instance %s (%s) requested in %s: flavor %s, %d conflicts", instance.id, name,
                 project, flavor.name, attempt)
        return instance

    def networks_of(self, project: str, refs: builtins.list[str]) -> builtins.list[Record]:
        """The networks a new instance gets NICs on (none when tenant networks are
        off: then it is on its host's NAT network)."""
        if self.networks is None or not self.config.tenant_networks:
            if refs:
                raise InvalidArgument("this cloud has no tenant networks (tenant_networks is off): "
                                      "create the instance without networks")
            return []
        return self.networks.for_instance(project, refs)

    def security_groups_of(self, project: str, refs: builtins.list[str]) -> builtins.list[Joined]:
        """The security groups a new instance joins (none when tenant networks are
        off: its host's NAT network has no filtering)."""
        if self.security_groups is None or not self.config.tenant_networks:
            if refs:
                raise InvalidArgument("this cloud has no tenant networks (tenant_networks is off): "
                                      "create the instance without security groups")
            return []
        return self.security_groups.for_instance(project, refs)

    def flavor_and_image(self, caller: Caller, flavor_name: str, image_ref: str) -> tuple[Flavor, Image]:
        flavor = self.catalog.flavor(flavor_name, caller.project, caller.is_admin)
        image, _ = self.images.bootable(caller, image_ref or self.default_image)
        if flavor.disk_gb < image.min_disk_gb or flavor.memory_mb < image.min_memory_mb:
            raise InvalidArgument(f"flavor {flavor.name} is too small for image {image.name}")
        return flavor, image

    def new_instance(self, project: str, name: str, flavor: Flavor, image: Image,
                     request_id: str = "", group: str = "") -> Instance:
        c = self.config
        instance = Instance(id=str(uuid.uuid4()), project=project, name=name, flavor=flavor.name,
                            resources=flavor.resources, image=image.id, request_id=request_id,
                            group=group,
                            max_vcpus=max(flavor.vcpus, flavor.max_vcpus or c.default_max_vcpus),
                            max_memory_mb=max(flavor.memory_mb,
                                              flavor.max_memory_mb or c.default_max_memory_mb))
        return records.new(instance)

    def _forget(self, instance: Instance, request_id: str = "") -> None:
        """Undo a create whose build could not be queued, quota claim included.
        Nothing is metered: the create failed, so its moment of BUILD is not billed."""
        project = instance.project
        for _ in range(QUOTA_ATTEMPTS):
            txn = Txn()
            records.forget_into(txn, instance)
            ipam.release_nics_into(txn, instance)
            for ref in instance.security_groups:  # (security_groups.leave_into: it imports this module)
                txn.delete(keys.security_group_member(project, ref.id, instance.id))
            guest_data.delete_user_data_into(txn, project, instance.id)
            if request_id:
                txn.delete(keys.request(project, request_id))
            self.quotas.release_into(txn, project, QuotaValues.of(instance.resources))
            if instance.group:
                txn.merge(without_member(self.groups.record(project, instance.group), instance.id))
            if self.store.commit(txn):
                return

    # ---------------------------------------------------------------- delete

    def delete(self, project: str, id_or_name: str, user: str = "", request_id: str = "") -> Instance:
        for attempt in range(CAS_ATTEMPTS):
            if attempt:
                deadlines.check(f"the delete of {id_or_name!r}")
            record = self.record(project, id_or_name)
            before = Instance(**record.value)
            if before.task_state is TaskState.DELETING:
                # Already asked: send the task again, in case the first one was lost.
                self.queue.send(DELETE_INSTANCE, before.id)
                return before
            txn = Txn()
            deleting = records.change_into(txn, record, Event.DELETE,
                                           action=actions.Begin("delete", request_id, user))
            if self.store.commit(txn):
                break
        else:
            raise Conflict(f"instance {id_or_name!r} is changing too often; try again")
        try:
            self.queue.send(DELETE_INSTANCE, before.id, deleting.action_key)
        except Unavailable:
            # Put back the state it had, so no delete is left without a task.
            def revert(current: Record) -> Txn:
                txn = Txn()
                records.revert_into(txn, current, before)
                return txn

            self.store.update(record.key, revert)
            self.store.commit(Txn().delete(deleting.action_key))
            raise
        return deleting.instance
