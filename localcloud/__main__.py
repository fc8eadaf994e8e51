"""python -m localcloud up|down|status [--dir .cloud]"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from localcloud.cloud import LocalCloud

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(prog="localcloud")
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--dir", default=str(REPO / ".cloud"))
    parser.add_argument("--image-dir", default=str(REPO / "images/build"))
    args = parser.parse_args()
    cloud = LocalCloud(Path(args.dir), image_dirs=[args.image_dir])

    if args.command == "up":
        cloud.up()
        write_cli_config(cloud.endpoint)
        print(f"cloud is up: API at {cloud.endpoint}; state and logs in {cloud.root}")
        print("  running:", ", ".join(cloud.procs.running()))
        print("  try: cloudctl flavor list; cloudctl instance create --flavor small --name web1 --wait")
    elif args.command == "down":
        stopped = cloud.down()
        print("stopped:", ", ".join(stopped) if stopped else "nothing was running")
    else:
        print("running:", ", ".join(cloud.procs.running()) or "nothing")


def write_cli_config(endpoint: str) -> None:
    """Where cloudctl looks by default ($CLOUD_CONFIG overrides)."""
    path = Path(os.environ.get("CLOUD_CONFIG") or Path.home() / ".config/cloudctl/config.toml")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'# Written by make up\nendpoint = "{endpoint}"\n')


if __name__ == "__main__":
    main()
