"""The project's quota: usage bars for instances, vCPUs, RAM and disk, and any other
named resource the project has a limit on or uses."""

from __future__ import annotations

from typing import Any

from cloudapi.v1 import identity_pb2 as ipb
from flask import Blueprint, jsonify, render_template

from dashboard import api

bp = Blueprint("quotas", __name__)

ROWS = [("instances", "Instances", ""), ("vcpus", "vCPUs", ""), ("memory_mb", "RAM", "MiB"),
        ("disk_gb", "Disk", "GiB")]


def usage_rows(quota: ipb.Quota) -> list[dict[str, Any]]:
    """The instance quotas, then every other named one (networks, ...) with a limit or usage."""
    rows = []
    limits = {**{f: getattr(quota.limits, f) for f, _, _ in ROWS}, **quota.limits.resources}
    usage = {**{f: getattr(quota.usage, f) for f, _, _ in ROWS}, **quota.usage.resources}
    others = sorted({*quota.limits.resources, *quota.usage.resources} - {f for f, _, _ in ROWS})
    for field, label, unit in [*ROWS, *((name, name.replace("_", " ").capitalize(), "")
                                        for name in others)]:
        used, limit = usage.get(field, 0), limits.get(field, -1)  # no limit: unlimited
        percent = 0 if limit < 0 else (100 if limit == 0 else min(100, round(100 * used / limit)))
        rows.append({"field": field, "label": label, "unit": unit, "used": used, "limit": limit,
                     "unlimited": limit < 0, "percent": percent,
                     "level": "high" if percent >= 90 else "mid" if percent >= 70 else "low"})
    return rows


@bp.get("/quotas")
def index() -> Any:
    quota = api.call(api.client().quotas.GetQuota, ipb.GetQuotaRequest())
    return render_template("quotas.html", project=quota.project, rows=usage_rows(quota))


@bp.get("/quotas.json")
def index_json() -> Any:
    quota = api.call(api.client().quotas.GetQuota, ipb.GetQuotaRequest())
    return jsonify(project=quota.project, rows=usage_rows(quota))
