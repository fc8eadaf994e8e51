"""cloudctl keypair commands."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click
from cloudapi.v1 import compute_pb2 as pb

from cloudclient.cli.base import CloudGroup, api, as_dict, cli, err, output_option, print_rows

KEYPAIR_COLUMNS = ["name", "type", "fingerprint", "created_at"]


@cli.group(cls=CloudGroup)
def keypair() -> None:
    """SSH keypairs for guests."""


@keypair.command("create")
@click.argument("name")
@click.option("--private-key-file", type=click.Path(dir_okay=False, writable=True),
              help="write the private key here (mode 0600) instead of to stdout")
@output_option
@click.pass_context
def keypair_create(ctx: click.Context, name: str, private_key_file: str | None, output: str) -> None:
    """Generate a keypair; the private key is shown once and never stored."""
    created = api(ctx).keypairs.CreateKeypair(pb.CreateKeypairRequest(name=name))
    if private_key_file:
        fd = os.open(private_key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(created.private_key)
        err.print(f"private key written to {private_key_file}", highlight=False)
    if output == "json":
        click.echo(json.dumps(as_dict(created), indent=2))
    elif not private_key_file:
        click.echo(created.private_key, nl=False)


@keypair.command("import")
@click.argument("name")
@click.option("--public-key-file", type=click.Path(exists=True, dir_okay=False), required=True)
@output_option
@click.pass_context
def keypair_import(ctx: click.Context, name: str, public_key_file: str, output: str) -> None:
    imported = api(ctx).keypairs.ImportKeypair(pb.ImportKeypairRequest(
        name=name, public_key=Path(public_key_file).read_text()))
    print_rows([as_dict(imported)], KEYPAIR_COLUMNS, output)


@keypair.command("list")
@output_option
@click.pass_context
def keypair_list(ctx: click.Context, output: str) -> None:
    found = api(ctx).keypairs.ListKeypairs(pb.ListKeypairsRequest()).keypairs
    print_rows([as_dict(k) for k in found], KEYPAIR_COLUMNS, output)


@keypair.command("delete")
@click.argument("name")
@click.pass_context
def keypair_delete(ctx: click.Context, name: str) -> None:
    api(ctx).keypairs.DeleteKeypair(pb.DeleteKeypairRequest(name=name))
    err.print(f"keypair {name} deleted", highlight=False)
