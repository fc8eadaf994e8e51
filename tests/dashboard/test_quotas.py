"""quotas blueprint: usage bars for instances, vCPUs, RAM, disk."""

import uuid

from cloudapi.v1 import compute_pb2 as pb

from tests.dashboard.conftest import Web, make_tenant


def test_bars_show_usage_of_the_project(app, cloud, admin):
    tenant = make_tenant(cloud, admin, "bars", quota={"instances": 4, "vcpus": -1, "memory_mb": 1024,
                                                      "disk_gb": 10})
    made = tenant.api.instances.CreateInstance(pb.CreateInstanceRequest(
        name="q1", flavor="tiny", request_id=str(uuid.uuid4())))
    try:
        web = Web(app).login(tenant.username, tenant.password)
        page = web.get("/quotas").get_data(as_text=True)
        assert f"Quota of {tenant.project}" in page
        assert page.count("<meter") == 4
        assert "1 of 4 (25%)" in page          # instances
        assert "of unlimited" in page          # vCPUs
        assert "256 MiB of 1024 MiB (25%)" in page
        assert "1 GiB of 10 GiB (10%)" in page
        rows = {r["field"]: r for r in web.get("/quotas.json").json["rows"]}
        assert rows["memory_mb"]["percent"] == 25 and rows["vcpus"]["unlimited"]
    finally:
        tenant.api.instances.DeleteInstance(pb.DeleteInstanceRequest(id_or_name=made.id))
        tenant.api.wait_gone(made.id)
