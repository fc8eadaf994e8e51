"""`cloud-worker --config FILE`: a Celery worker running the control plane's tasks."""

from __future__ import annotations

import argparse
import logging
import socket

from control.compute.tasks import register_tasks
from control.config import load_config
from control.plane import build_control_plane
from control.store.schema import SchemaTooNew, migrate_at_start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="cloud-worker")
    parser.add_argument("--config", required=True)
    parser.add_argument("--name", default=f"worker@{socket.gethostname()}")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    config = load_config(args.config)
    plane = build_control_plane(config)
    # Tasks read and write records: in this release's shapes, before the first.
    try:
        migrate_at_start(plane.store)
    except SchemaTooNew as exc:
        raise SystemExit(f"cloud-worker: not starting: {exc}") from None
    register_tasks(plane.celery, plane)
    # Threads, not forked processes: gRPC channels do not survive fork().
    plane.celery.worker_main(["worker", "--pool=threads",
                              f"--concurrency={config.celery_worker_concurrency}",
                              "--loglevel=INFO", "-n", args.name, "--without-gossip",
                              "--without-mingle"])


if __name__ == "__main__":
    main()
