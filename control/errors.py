"""One exception family for the whole control plane.

Raised anywhere below the API; mapped to gRPC status codes once, by the error
interceptor (control/api/interceptors.py).
"""


class CloudError(Exception):
    """Base of every error the API reports to a caller."""


class NotFound(CloudError):
    """The resource does not exist, or belongs to another project."""


class InvalidArgument(CloudError):
    """Bad input: nothing was written."""


class AlreadyExists(CloudError):
    """A resource with that name already exists."""


class Conflict(CloudError):
    """A compare-and-swap lost too many times in a row."""


class InvalidTransition(CloudError):
    """The operation is not legal in the resource's current state."""


class ResourceExhausted(CloudError):
    """No quota or no host with room; the message says why."""


class Unavailable(CloudError):
    """A backing service (etcd, Redis, an agent) cannot be reached; the message says which."""


class Unauthenticated(CloudError):
    """No token, or one that is expired, revoked or not ours."""


class PermissionDenied(CloudError):
    """The caller's role may not do this."""


class OutOfRange(CloudError):
    """A position past what is kept or exists: e.g. a watch revision that has been
    compacted away (the message says the oldest one available)."""


class DeadlineExceeded(CloudError):
    """The caller's deadline passed before the work was done (control/deadlines.py)."""
