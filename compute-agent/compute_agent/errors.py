"""The agent's errors, shared by the virtualization, networking and storage contracts."""


class DriverError(Exception):
    """The hypervisor refused or failed an operation."""


class NetworkError(DriverError):
    """A NIC could not be plugged (unknown network, bad MAC) or the host network set up."""


class StorageError(DriverError):
    """A disk could not be prepared, grown or attached."""
