"""cloudctl flavor and image commands."""

from pathlib import Path

import click
from cloudapi.v1 import compute_pb2 as pb

from cloudclient.cli.base import (
    FLAVOR_COLUMNS,
    CloudGroup,
    api,
    as_dict,
    cli,
    err,
    output_option,
    print_record,
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


IMAGE_COLUMNS = ["id", "name", "visibility", "project", "disk_format", "size_bytes", "status"]
IMAGE_DETAIL = IMAGE_COLUMNS + ["os", "virtual_size_bytes", "checksum_sha256", "direct_kernel_boot",
                                "cmdline", "min_disk_gb", "min_memory_mb", "created_at"]


@image.command("list")
@output_option
@click.pass_context
def image_list(ctx: click.Context, output: str) -> None:
    """Images this project may boot: its own and the public ones."""
    images = api(ctx).images.ListImages(pb.ListImagesRequest()).images
    print_rows([as_dict(i) for i in images], IMAGE_COLUMNS, output)


@image.command("show")
@click.argument("id_or_name")
@output_option
@click.pass_context
def image_show(ctx: click.Context, id_or_name: str, output: str) -> None:
    found = api(ctx).images.GetImage(pb.GetImageRequest(id_or_name=id_or_name))
    print_record(as_dict(found), IMAGE_DETAIL, output)


@image.command("create")
@click.argument("name")
@click.option("--file", "disk", required=True, type=click.Path(exists=True, dir_okay=False),
              help="the disk image")
@click.option("--format", "disk_format", required=True, type=click.Choice(["qcow2", "raw"]),
              help="the disk's format (checked, never guessed)")
@click.option("--kernel", type=click.Path(exists=True, dir_okay=False), default=None,
              help="boot this kernel directly (with --initrd)")
@click.option("--initrd", type=click.Path(exists=True, dir_okay=False), default=None)
@click.option("--cmdline", default="", help="kernel command line, with --kernel")
@click.option("--os", "os_name", default="linux", show_default=True)
@click.option("--min-disk", type=int, default=0, help="GiB (at least the disk's virtual size)")
@click.option("--min-ram", type=int, default=0, help="MiB")
@click.option("--public", is_flag=True, help="visible to every project (admin)")
@output_option
@click.pass_context
def image_create(ctx: click.Context, name: str, disk: str, disk_format: str, kernel: str | None,
                 initrd: str | None, cmdline: str, os_name: str, min_disk: int, min_ram: int,
                 public: bool, output: str) -> None:
    """Upload an image (a private one of this project unless --public)."""
    if bool(kernel) != bool(initrd):
        raise click.UsageError("give --kernel and --initrd together")
    total = sum(Path(p).stat().st_size for p in (disk, kernel, initrd) if p)
    err.print(f"uploading {name}: {total / 2**20:.1f} MiB", highlight=False)
    created = api(ctx).upload_image(
        pb.ImageInfo(name=name, disk_format=disk_format, os=os_name, min_disk_gb=min_disk,
                     min_memory_mb=min_ram, cmdline=cmdline,
                     visibility="public" if public else "private"),
        disk, kernel or "", initrd or "")
    print_record(as_dict(created), IMAGE_DETAIL, output)


@image.command("delete")
@click.argument("id_or_name")
@click.pass_context
def image_delete(ctx: click.Context, id_or_name: str) -> None:
    """Delete an image no instance uses."""
    api(ctx).images.DeleteImage(pb.DeleteImageRequest(id_or_name=id_or_name))
    err.print(f"image {id_or_name} deleted", highlight=False)
