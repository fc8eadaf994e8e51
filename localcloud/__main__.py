"""python -m localcloud up|down|status [--dir .cloud]"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from cloudclient.client import read_config, write_config

from localcloud.cloud import LocalCloud, tenant_network_settings

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(prog="localcloud")
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--dir", default=str(REPO / ".cloud"))
    parser.add_argument("--image-dir", default=str(REPO / "images/build"))
    parser.add_argument("--dashboard-port", type=int, default=int(os.environ.get("DASHBOARD_PORT", 8080)),
                        help="port of the web dashboard (default 8080, or $DASHBOARD_PORT)")
    parser.add_argument("--etcd-members", type=int, choices=[1, 3], default=1,
                        help="an etcd cluster of 3 members (high availability; default 1)")
    parser.add_argument("--api-replicas", type=int, choices=[1, 2], default=1,
                        help="API server replicas (default 1)")
    parser.add_argument("--workers", type=int, default=1, help="Celery workers (default 1)")
    parser.add_argument("--redis-sentinel", action="store_true",
                        help="Redis as a master, a replica and 3 sentinels (with a password)")
    parser.add_argument("--networking", choices=["tenant", "nat"], default="tenant",
                        help="tenant: each project's own networks, floating IPs from 100.64.0.0/24 "
                             "on the bridge cloud-ext (default); nat: every guest on the host's "
                             "NAT network, as before tenant networks")
    args = parser.parse_args()
    control, agent = tenant_network_settings() if args.networking == "tenant" else ({}, {})
    cloud = LocalCloud(Path(args.dir), image_dirs=[args.image_dir], dashboard=True,
                       etcd_members=args.etcd_members, api_replicas=args.api_replicas,
                       workers=args.workers, redis_sentinel=args.redis_sentinel,
                       control_settings=control, agent_settings=agent)
    cloud.ports.dashboard = args.dashboard_port

    if args.command == "up":
        cloud.up()
        # cloudctl starts logged in as the demo user.
        token = cloud.client("demo").token
        path = write_config({**read_config(), "endpoint": cloud.endpoint, "token": token})
        print(f"cloud is up: API at {cloud.endpoint}; state and logs in {cloud.root}")
        print(f"  agents reach the control plane at {cloud.agent_endpoint} (mutual TLS; "
              f"CA and certificates in {cloud.pki_dir})")
        print("  running:", ", ".join(cloud.procs.running()))
        print(f"  dashboard: {cloud.dashboard_url} (log in as admin or demo)")
        print(f"  admin: user admin, password {cloud.password('admin')} (project admin)")
        print(f"  demo:  user demo, password {cloud.password('demo')} (project demo, member)")
        print(f"  cloudctl is logged in as demo ({path}); "
              "`cloudctl login` when the token expires (1 hour)")
        print("  try: cloudctl flavor list; cloudctl instance create --flavor small --name web1 --wait")
        if args.networking == "tenant":
            print(f"  networks: each project's own (the first instance makes its \"default\" one); "
                  f"floating IPs from {control['external_cidr']}, reachable from this machine "
                  f"through {control['external_bridge']}: cloudctl floating-ip create; "
                  "cloudctl floating-ip attach ADDRESS web1")
    elif args.command == "down":
        stopped = cloud.down()
        print("stopped:", ", ".join(stopped) if stopped else "nothing was running")
    else:
        print("running:", ", ".join(cloud.procs.running()) or "nothing")




if __name__ == "__main__":
    main()
