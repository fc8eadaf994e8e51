"""cloudctl events watch: follow EventService.Watch, one line (or JSON object) per event."""

from __future__ import annotations

import json

import click
import grpc
from cloudapi.v1 import events_pb2 as epb

from cloudclient.cli.base import CloudGroup, api, as_dict, cli, err

Event = epb.Event


@cli.group(cls=CloudGroup)
def events() -> None:
    """The event stream: instance (and, for admins, host) changes as they happen."""


def parse_position(value: str | None) -> tuple[int, int | None]:
    if not value:
        return 0, None
    revision, _, index = value.partition(":")
    try:
        return int(revision), int(index) if index else None
    except ValueError:
        raise click.BadParameter("REVISION or REVISION:INDEX") from None


def line(e: epb.Event) -> str:
    position = f"{e.revision}:{e.index}"
    kind = Event.Type.Name(e.type)
    if e.kind == Event.INSTANCE:
        i = e.instance
        what = f"{e.project}/{i.name} ({i.id}) {i.status}"
        if i.task_state:
            what += f" ({i.task_state})"
    elif e.kind == Event.HOST:
        h = e.host
        what = f"host {h.name} {'up' if h.up else 'down'} {'enabled' if h.enabled else 'disabled'}"
    else:
        what = "watching"
    changed = f" [{', '.join(e.changed)}]" if e.changed else ""
    return f"{position} {e.time.ToDatetime().isoformat(timespec='seconds')}Z {kind} {what}{changed}"


@events.command("watch")
@click.option("--project", default="", help="admin: another project's instances ('*': every project)")
@click.option("--kind", "kinds", multiple=True, type=click.Choice(["instance", "host"]),
              help="only these kinds (default: all you may see; host: admins)")
@click.option("--instance", "instance_id", default="", help="only this instance (its id)")
@click.option("--after", "after", metavar="REVISION[:INDEX]",
              help="resume after this position (printed first on each line)")
@click.option("--existing", is_flag=True, help="first list what exists now (EXISTING events)")
@click.option("--timeout", type=float, default=None, help="stop after this many seconds")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="json: one object per line")
@click.pass_context
def events_watch(ctx: click.Context, project: str, kinds: tuple[str, ...], instance_id: str,
                 after: str | None, existing: bool, timeout: float | None, output: str) -> None:
    """Print events as they happen, until interrupted (or --timeout)."""
    revision, index = parse_position(after)
    request = epb.WatchRequest(project=project, instance_id=instance_id, after_revision=revision,
                               include_existing=existing,
                               kinds=[Event.Kind.Value(k.upper()) for k in kinds])
    if index is not None:
        request.after_index = index
    call = api(ctx).events.Watch(request, timeout=timeout)
    try:
        for event in call:
            click.echo(json.dumps(as_dict(event)) if output == "json" else line(event))
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED or timeout is None:
            raise
    except KeyboardInterrupt:
        call.cancel()
        err.print("stopped")
