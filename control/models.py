"""The records kept in etcd, as typed models. Stored as JSON by control.store.etcd."""

from __future__ import annotations

import re
import time
from typing import Any

from pydantic import BaseModel, Field

from control.compute.states import INITIAL, Event, PowerState, State, TaskState, VmState, transition
from control.errors import InvalidArgument
from control.resources import INSTANCE_CLASSES

NAME_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,63}")


def validate_name(name: str, what: str = "name") -> str:
    if not NAME_PATTERN.fullmatch(name or ""):
        raise InvalidArgument(
            f"invalid {what} {name!r}: 1 to 63 characters from A-Z a-z 0-9 . _ -"
        )
    return name


class Resources(BaseModel):
    """An instance's size: what it asks of its compute host."""

    vcpus: int = 0
    memory_mb: int = 0
    disk_gb: int = 0

    def amounts(self) -> dict[str, int]:
        """The size as amounts per resource class (control/resources.py)."""
        return {c.name: getattr(self, c.field) for c in INSTANCE_CLASSES}

    def __add__(self, other: Resources) -> Resources:
        return Resources(vcpus=self.vcpus + other.vcpus, memory_mb=self.memory_mb + other.memory_mb,
                         disk_gb=self.disk_gb + other.disk_gb)

    def __sub__(self, other: Resources) -> Resources:
        return Resources(vcpus=self.vcpus - other.vcpus, memory_mb=self.memory_mb - other.memory_mb,
                         disk_gb=self.disk_gb - other.disk_gb)


class Flavor(BaseModel):
    name: str
    vcpus: int
    memory_mb: int
    disk_gb: int
    public: bool = True
    projects: list[str] = Field(default_factory=list)  # who may use a private flavor
    # Scheduling constraints: hosts must have every required trait and none of
    # the forbidden ones; a zone pins the flavor to one availability zone.
    required_traits: list[str] = Field(default_factory=list)
    forbidden_traits: list[str] = Field(default_factory=list)
    zone: str = ""
    # Headroom for live scale-up; 0 takes the cloud's default.
    max_vcpus: int = 0
    max_memory_mb: int = 0

    def visible_to(self, project: str, is_admin: bool = False) -> bool:
        return self.public or is_admin or project in self.projects

    @property
    def resources(self) -> Resources:
        return Resources(vcpus=self.vcpus, memory_mb=self.memory_mb, disk_gb=self.disk_gb)


class Image(BaseModel):
    id: str
    name: str
    os: str = "linux"
    project: str = ""           # the owner; "" for the operator's seed images
    visibility: str = "private"  # public: every project; private: its project only
    disk_format: str = "qcow2"  # raw or qcow2, declared by the uploader and checked
    size_bytes: int = 0
    virtual_size_bytes: int = 0
    # SHA-256 of each file; an empty kernel checksum means the disk boots itself.
    disk_sha256: str = ""
    kernel_sha256: str = ""
    initrd_sha256: str = ""
    cmdline: str = ""
    min_disk_gb: int = 1
    min_memory_mb: int = 128
    status: str = "active"  # active, or deleting while its delete checks for users
    created_at: float = Field(default_factory=time.time)

    @property
    def direct_kernel_boot(self) -> bool:
        return bool(self.kernel_sha256)

    def visible_to(self, project: str, is_admin: bool = False) -> bool:
        return self.visibility == "public" or is_admin or self.project == project


DEFAULT_ZONE = "default"


class Host(BaseModel):
    name: str
    address: str
    inventory: Resources
    virt_type: str = ""
    hypervisor: str = ""
    enabled: bool = True
    disabled_reason: str = ""
    zone: str = DEFAULT_ZONE
    traits: list[str] = Field(default_factory=list)
    registered_at: float = Field(default_factory=time.time)
    last_heartbeat: float = Field(default_factory=time.time)
    # False once the reconciler found its heartbeats stopped (control/reconcile/reconciler.py);
    # true again with its next heartbeat. Down hosts get no new instances.
    up: bool = True

    def is_up(self, down_after_s: float, now: float | None = None) -> bool:
        return self.up and ((now or time.time()) - self.last_heartbeat) < down_after_s


class Allocation(BaseModel):
    """What one consumer holds: an instance's share of its compute host, and any
    consumer's shares of other providers (address pools, storage pools). All of
    it is claimed, and released, in one transaction (control/placement/allocations.py)."""

    instance_id: str  # the consumer: an instance's id, or any other consumer's
    project: str
    host: str = ""  # its compute host ("" until placed, or for a consumer that has none)
    resources: Resources = Field(default_factory=Resources)  # its share of `host`
    # Shares of other providers: provider -> resource class -> amount. Records
    # written before there were other providers have none.
    others: dict[str, dict[str, int]] = Field(default_factory=dict)

    def by_provider(self) -> dict[str, dict[str, int]]:
        """Every share, per provider: the host's and the others'."""
        shares = {name: dict(amounts) for name, amounts in self.others.items()}
        if self.host:
            on_host = shares.setdefault(self.host, {})
            for rc, amount in self.resources.amounts().items():
                on_host[rc] = on_host.get(rc, 0) + amount
        return shares


class Nic(BaseModel):
    """An instance's NIC on a tenant network: its address and MAC, chosen by the
    control plane in the instance's create transaction (control/network/ipam.py)."""

    network_id: str
    network_name: str  # as it was when the NIC was made (a network is never renamed)
    mac: str
    fixed_ip: str


class Network(BaseModel):
    """A project's private network (control/network/networks.py): one IPv4 subnet,
    one VXLAN segment (its VNI, unique in the cloud) and a router whose external
    address is `snat_ip`."""

    id: str
    project: str
    name: str
    cidr: str        # normalised: host bits zero
    gateway_ip: str  # the subnet's first address
    mtu: int
    vni: int
    snat_ip: str
    # Whether it counts against the project's `networks` quota: every network but
    # the "default" one the cloud makes on first use.
    counted: bool = True
    created_at: float = Field(default_factory=time.time)


class FloatingIp(BaseModel):
    """An external address a project holds (control/network/floating_ips.py),
    attached to one NIC of one of its instances, or to none."""

    address: str
    project: str
    instance_id: str = ""
    network_id: str = ""
    fixed_ip: str = ""
    created_at: float = Field(default_factory=time.time)


class SecurityGroupRule(BaseModel):
    """One rule of a security group (control/network/security_groups.py says what
    each field may hold; validated there before it is stored)."""

    id: str
    direction: str       # ingress or egress
    protocol: str        # tcp, udp, icmp or any
    port_min: int = 0    # tcp and udp; 0 and 0: every port
    port_max: int = 0
    remote_cidr: str = ""      # an IPv4 CIDR; or
    remote_group_id: str = ""  # a group of the same project; neither: anyone


class SecurityGroup(BaseModel):
    """A project's named set of rules; its rules are in its record."""

    id: str
    project: str
    name: str
    description: str = ""
    rules: list[SecurityGroupRule] = Field(default_factory=list)
    created_at: float = Field(default_factory=time.time)


class SecurityGroupRef(BaseModel):
    """A security group an instance is in (groups are never renamed)."""

    id: str
    name: str


class Fault(BaseModel):
    message: str
    phase: str
    time: float = Field(default_factory=time.time)
    host: str = ""


class Metered(BaseModel):
    """The usage interval an instance is in now (control/metering/usage.py): what it
    is billed as since `since_ms`. Closed into an immutable usage record by the
    same transaction that changes any of these."""

    state: str  # building, running, stopped or error
    flavor: str
    vcpus: int
    memory_mb: int
    disk_gb: int
    since_ms: int  # the control plane's clock, milliseconds since the epoch


class Instance(BaseModel):
    id: str
    project: str
    name: str
    flavor: str
    resources: Resources
    image: str
    request_id: str = ""
    host: str = ""
    vm_state: VmState = INITIAL.vm
    task_state: TaskState = INITIAL.task
    power_state: PowerState = PowerState.NOSTATE
    addresses: list[str] = Field(default_factory=list)
    # Its NICs on tenant networks, in order (none when tenant networks are off:
    # the guest is on its host's NAT network).
    nics: list[Nic] = Field(default_factory=list)
    # Its security groups (tenant networks): their rules filter its NICs' traffic.
    # Records made before security groups existed have none.
    security_groups: list[SecurityGroupRef] = Field(default_factory=list)
    fault: Fault | None = None
    created_at: float = Field(default_factory=time.time)
    updated_at: float = Field(default_factory=time.time)
    launched_at: float | None = None
    # Whether the instance's share of its project's quota is still claimed
    # (released when its build fails, so a failed instance costs no quota).
    quota_held: bool = True
    # Hosts where a spawn of this instance failed (each one is tried once).
    attempts: list[Fault] = Field(default_factory=list)
    group: str = ""  # server group name, in the instance's project
    scaling_group: str = ""  # the scaling group it is a member of (control/autoscaling/groups.py)
    key_name: str = ""  # keypair for the guest, in the instance's project
    # Live scale-up headroom (the domain's maximums) and a scale in flight.
    max_vcpus: int = 0
    max_memory_mb: int = 0
    scaling_to: Resources | None = None
    # A cold resize in flight: the target flavor and its maximums.
    resize: dict[str, Any] | None = None
    # The open usage interval (None only for records written before metering).
    metered: Metered | None = None

    @property
    def state(self) -> State:
        return State(self.vm_state, self.task_state)

    def after(self, event: Event, **changes: object) -> Instance:
        """A copy of this instance after `event` (raises InvalidTransition if illegal)."""
        new = transition(self.state, event)
        return self.model_copy(update={"vm_state": new.vm, "task_state": new.task,
                                       "updated_at": time.time(), **changes})
