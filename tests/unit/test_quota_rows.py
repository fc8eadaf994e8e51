"""What the CLI and the dashboard show of a quota: the instance quotas, then every
other named resource with a limit or usage (a name without a limit is unlimited)."""

from cloudapi.v1 import identity_pb2 as ipb
from cloudclient.cli.identity import parse_resource_limits, quota_rows

from dashboard.views.quotas import usage_rows

QUOTA = ipb.Quota(project="p",
                  limits=ipb.QuotaValues(instances=4, vcpus=-1, resources={"networks": 2}),
                  usage=ipb.QuotaValues(instances=1, resources={"networks": 1, "floating_ips": 3}))


def test_cli_rows():
    rows = {r["resource"]: (r["limit"], r["in use"]) for r in quota_rows(QUOTA)}
    assert list(rows) == ["instances", "vcpus", "memory_mb", "disk_gb", "floating_ips", "networks"]
    assert rows["vcpus"] == ("unlimited", 0)
    assert rows["networks"] == (2, 1) and rows["floating_ips"] == ("unlimited", 3)


def test_cli_parses_name_equals_limit():
    assert parse_resource_limits(("networks=10", "floating_ips=-1")) == {"networks": 10, "floating_ips": -1}
    for bad in ("networks", "=3", "networks=many"):
        try:
            parse_resource_limits((bad,))
        except Exception as exc:
            assert "NAME=LIMIT" in str(exc)
        else:
            raise AssertionError(f"{bad!r} was accepted")


def test_dashboard_rows():
    rows = {r["field"]: r for r in usage_rows(QUOTA)}
    assert list(rows)[4:] == ["floating_ips", "networks"]
    assert rows["networks"]["percent"] == 50 and rows["networks"]["label"] == "Networks"
    assert rows["floating_ips"]["unlimited"] and rows["floating_ips"]["used"] == 3
