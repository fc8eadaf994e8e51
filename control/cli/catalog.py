"""cloudctl flavor and image commands."""



import click
from cloudapi.v1 import compute_pb2 as pb

from control.cli.base import (
    FLAVOR_COLUMNS,
    CloudGroup,
    api,
    as_dict,
    cli,
    err,
    output_option,
    print_rows,
)

# ---------------------------------------------------------------- flavors, images

@cli.group(cls=CloudGroup)
def flavor() -> None:
    """Instance types (vCPUs, memory, disk)."""


@flavor.command("list")
@output_option
@click.pass_context
def flavor_list(ctx: click.Context, output: str) -> None:
    flavors = api(ctx).flavors.ListFlavors(pb.ListFlavorsRequest()).flavors
    print_rows([as_dict(f) for f in flavors], FLAVOR_COLUMNS, output)


@flavor.command("create")
@click.argument("name")
@click.option("--vcpus", type=int, required=True)
@click.option("--ram", "memory_mb", type=int, required=True, help="MiB")
@click.option("--disk", "disk_gb", type=int, required=True, help="GiB")
@click.option("--private", is_flag=True, help="visible only to the projects given with --project")
@click.option("--project", "projects", multiple=True, help="a project given access (repeatable)")
@click.option("--require-trait", "required", multiple=True, help="hosts must have it (repeatable)")
@click.option("--forbid-trait", "forbidden", multiple=True, help="hosts must not have it (repeatable)")
@click.option("--zone", default="", help="pin to an availability zone")
@output_option
@click.pass_context
def flavor_create(ctx: click.Context, name: str, vcpus: int, memory_mb: int, disk_gb: int,
                  private: bool, projects: tuple[str, ...], required: tuple[str, ...],
                  forbidden: tuple[str, ...], zone: str, output: str) -> None:
    """Create a flavor (admin)."""
    created = api(ctx).flavors.CreateFlavor(pb.CreateFlavorRequest(flavor=pb.Flavor(
        name=name, vcpus=vcpus, memory_mb=memory_mb, disk_gb=disk_gb, public=not private,
        projects=list(projects), required_traits=list(required), forbidden_traits=list(forbidden),
        zone=zone)))
    print_rows([as_dict(created)], FLAVOR_COLUMNS, output)


@flavor.command("delete")
@click.argument("name")
@click.pass_context
def flavor_delete(ctx: click.Context, name: str) -> None:
    """Delete a flavor no instance uses (admin)."""
    api(ctx).flavors.DeleteFlavor(pb.DeleteFlavorRequest(name=name))
    err.print(f"flavor {name} deleted", highlight=False)


@cli.group(cls=CloudGroup)
def image() -> None:
    """Bootable images."""


@image.command("list")
@output_option
@click.pass_context
def image_list(ctx: click.Context, output: str) -> None:
    images = api(ctx).images.ListImages(pb.ListImagesRequest()).images
    print_rows([as_dict(i) for i in images],
               ["id", "name", "os", "status", "min_disk_gb", "min_memory_mb"], output)
