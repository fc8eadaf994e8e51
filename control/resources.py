"""Resource classes and provider kinds: the data that placement and quotas run on.

A resource class is a name in a provider's inventory ("VCPU", "IPV4_ADDRESS").
Placement takes any class a provider reports; this list says, for the ones the
cloud knows, what one unit is, which project quota it counts against, and which
field of an instance's size (control.models.Resources) asks for it. A new kind
of thing (an address pool's addresses, a storage pool's gigabytes) adds an entry
here, not a code path in placement or quotas (DESIGN.md, convention 12).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ResourceClass:
    name: str        # as in a provider's inventory and an allocation
    unit: str        # what one of it is, for people
    quota: str       # the project quota it counts against
    field: str = ""  # the field of an instance's Resources that asks for it ("" for none)


CLASSES: dict[str, ResourceClass] = {c.name: c for c in (
    ResourceClass("VCPU", "vCPU", quota="vcpus", field="vcpus"),
    ResourceClass("MEMORY_MB", "MiB", quota="memory_mb", field="memory_mb"),
    ResourceClass("DISK_GB", "GiB", quota="disk_gb", field="disk_gb"),
    ResourceClass("IPV4_ADDRESS", "address", quota="floating_ips"),
)}

# What an instance asks of its compute host, in this order (the scheduler's
# first columns, and the order its refusals list them in).
INSTANCE_CLASSES: tuple[ResourceClass, ...] = tuple(c for c in CLASSES.values() if c.field)

# The quota every instance counts against once, besides its classes' quotas.
INSTANCES = "instances"

# Kinds of resource provider: a compute host (registered by its agent and
# scheduled onto), or a pool that is not a host.
COMPUTE_HOST = "compute-host"
ADDRESS_POOL = "address-pool"
STORAGE_POOL = "storage-pool"
PROVIDER_KINDS = (COMPUTE_HOST, ADDRESS_POOL, STORAGE_POOL)


def quota_of(resource_class: str) -> str:
    """The quota that `resource_class` counts against: its registered one, else
    the class's own name in lower case (a class nobody registered still counts)."""
    known = CLASSES.get(resource_class)
    return known.quota if known else resource_class.lower()
