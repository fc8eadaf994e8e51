"""Serve the dashboard with gunicorn (never Flask's development server):

    python -m dashboard --config .cloud/dashboard.toml

gunicorn's master forks `workers` processes, each with `threads` threads (the
pages poll every 2 s); each worker builds the app, and with it its own gRPC
channel, after the fork.

gunicorn listens on `app_listen` (a unix socket) behind the front proxy, nginx
(dashboard/proxy.py), which holds slow clients and buffers whole requests
before they take one of these threads (issue 15). Without `app_listen` it
serves `listen` itself."""

from __future__ import annotations

import argparse
from typing import Any

from gunicorn.app.base import BaseApplication

from dashboard.config import flask_config, load_settings


class DashboardServer(BaseApplication):
    def __init__(self, settings: dict[str, Any]):
        self.settings = settings
        self.flask = flask_config(settings)  # checks the config (and makes the key) before forking
        super().__init__()

    def load_config(self) -> None:
        s = self.settings
        for key, value in {
            "bind": s["app_listen"] or s["listen"],
            "workers": int(s["workers"]), "threads": int(s["threads"]),
            "worker_class": "gthread", "timeout": 120, "graceful_timeout": 10,
            "accesslog": "-", "errorlog": "-", "proc_name": "smallcloud-dashboard",
            # The client as the proxy saw it; the path without its query string
            # (the upload's CSRF token is in one) and no Referer (which may hold it).
            "access_log_format": '%({x-forwarded-for}i)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s '
                                 '%(L)s "%(a)s"',
            "forwarded_allow_ips": "127.0.0.1",
            # Managed by its pid file like the other daemons: no shared ~/.gunicorn/gunicorn.ctl.
            "control_socket_disable": True,
        }.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from dashboard.app import create_app

        return create_app(self.flask)


def main() -> None:
    parser = argparse.ArgumentParser(prog="dashboard", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="TOML file with a [dashboard] table")
    parser.add_argument("--listen", help="where gunicorn listens: host:port or unix:PATH "
                        "(overrides the config's app_listen)")
    args = parser.parse_args()
    settings = load_settings(args.config)
    if args.listen:
        settings["app_listen"] = args.listen
    DashboardServer(settings).run()


if __name__ == "__main__":
    main()
