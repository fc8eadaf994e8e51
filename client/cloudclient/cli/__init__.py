"""cloudctl: the command-line client of the cloud's public gRPC API.

Where the API is and who the caller is come from the environment or the config
file: see client/cloudclient/client.py. One module per area of commands.
"""

from cloudclient.cli import (  # noqa: F401 (register commands)
    catalog,
    events,
    groups,
    identity,
    instances,
    keypairs,
    networks,
    placement,
    security_groups,
    usage,
)
from cloudclient.cli.base import cli


def main() -> None:
    cli(obj={})
