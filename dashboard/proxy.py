"""The dashboard's front proxy: nginx's configuration, from the dashboard's settings.

    python -m dashboard.proxy --config dashboard.toml --output nginx.conf

nginx listens on `listen` and passes whole requests to gunicorn on
`app_listen` (issue 15). gunicorn's gthread workers give each request a thread
(2 workers x 8), and a thread reading a request blocks until its last byte:
a few dozen clients that send half a request and stall took them all, and
/healthz timed out. nginx reads requests and writes responses itself, for
thousands of connections per worker, with timeouts (a header not complete in
10 s, a body stalled 20 s: 408), and hands gunicorn a request only once it has
all of it (request buffering; responses are buffered the same way, for slow
readers). An async worker class (gevent) would hold slow clients too, but it
monkey-patches the process the dashboard's gRPC client runs in, which grpcio
supports only as an experiment (grpc.experimental.gevent), and it would still
read bodies into the app's workers; nginx keeps the app as it is, is measured
in tests/dashboard/test_exhaustion.py, and is what operators know.

Bodies: every location takes at most `body_max_bytes` (nginx answers 413 on
the Content-Length, before reading); the image upload takes up to
`upload_max_bytes`, and only after the app said yes to its headers
(auth_request to /images/upload/allowed: a login and the upload's CSRF token,
which is in its URL), so an anonymous upload is refused before nginx reads or
buffers a byte of it: nginx answers it itself (no login: a redirect to the
login page; no token: 403). The app makes the same checks itself
(dashboard.app._guard).

The access log leaves out query strings: the upload's CSRF token is in one.
localcloud runs nginx under its ProcessSet and the Ansible dashboard role as a
unit (`nginx -e stderr -c CONFIG`, in the foreground)."""

from __future__ import annotations

import argparse
import grp
import pwd
from pathlib import Path
from typing import Any

from jinja2 import Environment, StrictUndefined

from dashboard.config import DEFAULTS, load_settings

TEMPLATE = """\
# Written by `python -m dashboard.proxy` from the dashboard's settings: the
# front proxy of the dashboard (see dashboard/proxy.py). Regenerated, not edited.
daemon off;
worker_processes auto;
{% if user %}user {{ user }};
{% endif %}pid {{ proxy_dir }}/nginx.pid;
error_log stderr warn;
worker_rlimit_nofile 16384;
events {
    worker_connections 4096;
}
http {
    server_tokens off;
    log_format dashboard '$remote_addr [$time_local] "$request_method $uri $server_protocol" '
                         '$status $body_bytes_sent $request_time "$http_user_agent"';
    access_log {{ access_log }} dashboard;
    client_body_temp_path {{ proxy_dir }}/body;
    proxy_temp_path {{ proxy_dir }}/proxy;
    fastcgi_temp_path {{ proxy_dir }}/fastcgi;
    uwsgi_temp_path {{ proxy_dir }}/uwsgi;
    scgi_temp_path {{ proxy_dir }}/scgi;

    # Slow clients wait here, not in gunicorn's threads.
    client_header_timeout 10s;
    client_body_timeout 20s;
    send_timeout 30s;
    keepalive_timeout 30s;
    reset_timedout_connection on;
    client_max_body_size {{ body_max_bytes }};
    client_body_buffer_size 128k;

    upstream dashboard {
        server {{ upstream }};
    }
    proxy_http_version 1.1;
    proxy_request_buffering on;
    proxy_buffering on;
    proxy_connect_timeout 5s;
    proxy_read_timeout 120s;
    proxy_set_header Host $http_host;
    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    proxy_set_header X-Forwarded-Proto $scheme;

    server {
        listen {{ listen }};
        absolute_redirect off;  # (behind an HTTPS proxy too)
        location / {
            proxy_pass http://dashboard;
        }
        # Only a member's upload, with its CSRF token, is read (and buffered to
        # disk here, then passed on whole).
        location = /images/upload {
            client_max_body_size {{ upload_max_bytes }};
            auth_request /_dashboard/upload-allowed;
            error_page 401 = @upload_login;
            error_page 403 = @upload_refused;
            proxy_read_timeout 900s;  # the dashboard sends it on to the API
            proxy_pass http://dashboard;
        }
        # Refused uploads: answered here, their bodies never read (proxying
        # one on, even without its body, would still buffer it to disk first).
        location @upload_login {
            return 303 /login?next=/images;
        }
        location @upload_refused {
            default_type text/plain;
            return 403 "The upload was refused: its form is out of date. Reload the page and try again.\n";
        }
        location = /_dashboard/upload-allowed {
            internal;
            client_max_body_size {{ upload_max_bytes }};  # (checked on the upload's Content-Length)
            proxy_method GET;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Original-URI $request_uri;
            proxy_pass http://dashboard/images/upload/allowed;
        }
    }
}
"""


def upstream(app_listen: str) -> str:
    """nginx's name for gunicorn's address: unix:PATH or host:port."""
    if app_listen.startswith("unix:"):
        return "unix:" + str(Path(app_listen[len("unix:"):]).resolve())
    return app_listen


def worker_user(user: str) -> str:
    """nginx's `user` for proxy_user: "USER GROUP", the group being the user's
    own primary group unless given (nginx would look for a group named like
    the user: Debian's nobody is in nogroup)."""
    if not user or " " in user.strip():
        return user.strip()
    try:
        return f"{user} {grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name}"
    except KeyError:
        return user


def render(settings: dict[str, Any]) -> str:
    s = {**DEFAULTS, **settings}
    for key in ("app_listen", "proxy_dir"):
        if not s[key]:
            raise ValueError(f"the dashboard's proxy needs {key}")
    proxy_dir = Path(s["proxy_dir"]).resolve()
    env = Environment(undefined=StrictUndefined, keep_trailing_newline=True, autoescape=False)
    return env.from_string(TEMPLATE).render(
        listen=s["listen"], upstream=upstream(s["app_listen"]), proxy_dir=proxy_dir,
        user=worker_user(s["proxy_user"]), access_log=s["proxy_access_log"] or proxy_dir / "access.log",
        body_max_bytes=int(s["body_max_bytes"]), upload_max_bytes=int(s["upload_max_bytes"]))


def write(settings: dict[str, Any], path: str | Path) -> bool:
    """Write the configuration to `path`, and make proxy_dir; whether it changed."""
    path = Path(path)
    text = render(settings)
    Path(settings["proxy_dir"]).mkdir(mode=0o755, parents=True, exist_ok=True)
    if path.exists() and path.read_text() == text:
        return False
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return True


def command(config: str | Path) -> list[str]:
    """How nginx is run with that configuration: in the foreground (its
    `daemon off`), its errors to stderr from the start (every path in the
    configuration is absolute)."""
    return ["nginx", "-e", "stderr", "-c", str(Path(config).resolve())]


def main() -> None:
    parser = argparse.ArgumentParser(prog="dashboard.proxy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="TOML file with a [dashboard] table")
    parser.add_argument("--output", required=True, help="the nginx configuration to write")
    args = parser.parse_args()
    print("changed" if write(load_settings(args.config), args.output) else "unchanged")


if __name__ == "__main__":
    main()
