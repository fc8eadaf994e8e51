"""admin blueprint: admins only; hosts with capacity and usage, enable/disable;
projects and quotas, users and roles, flavors."""

import re
import uuid

from cloudapi.v1 import compute_pb2 as pb
from cloudapi.v1 import identity_pb2 as ipb


def test_members_get_403_and_no_admin_link(demo):
    for path in ["/admin/hosts", "/admin/projects", "/admin/users", "/admin/flavors"]:
        response = demo.get(path)
        assert response.status_code == 403, path
        assert "for the cloud" in response.get_data(as_text=True)
    assert demo.post("/admin/hosts/x", data={"enabled": "0"}).status_code == 403
    assert 'href="/admin/hosts"' not in demo.get("/instances").get_data(as_text=True)


def test_hosts_with_capacity_and_usage(admin_web, cloud):
    page = admin_web.get("/admin/hosts").get_data(as_text=True)
    assert cloud.host_name in page
    for rc in ("VCPU", "MEMORY_MB", "DISK_GB"):
        assert rc in page
    assert page.count("<meter") >= 3
    page = admin_web.get("/admin/hosts?flavor=tiny").get_data(as_text=True)
    assert re.search(r"<strong>\d+</strong> more tiny instances fit", page)


def test_hosts_page_shows_the_state_store(admin_web, cloud):
    page = admin_web.get("/admin/hosts").get_data(as_text=True)
    assert "State store (etcd)" in page and "no alarms" in page
    assert "quota 2048.0 MiB" in page and "history kept 1h" in page
    assert re.search(r"127\.0\.0\.1:\d+ \(leader\)</strong><span>[\d.]+ MiB, [\d.]+ MiB in use", page)


def test_disable_and_enable_a_host(admin_web, admin, cloud):
    try:
        response = admin_web.post(f"/admin/hosts/{cloud.host_name}",
                                  data={"enabled": "0", "reason": "dashboard test"})
        assert response.status_code == 302
        host = admin.hosts.GetHost(pb.GetHostRequest(name=cloud.host_name))
        assert not host.enabled and host.disabled_reason == "dashboard test"
        assert "Disabled: dashboard test" in admin_web.get("/admin/hosts").get_data(as_text=True)
    finally:
        admin_web.post(f"/admin/hosts/{cloud.host_name}", data={"enabled": "1"})
    assert admin.hosts.GetHost(pb.GetHostRequest(name=cloud.host_name)).enabled


def test_projects_quotas_and_a_script_description(admin_web, admin):
    name = f"adm-{uuid.uuid4().hex[:6]}"
    response = admin_web.post("/admin/projects", data={"project-name": name,
                                                       "project-description": "<script>alert(1)</script>"})
    assert response.status_code == 302
    page = admin_web.get("/admin/projects").get_data(as_text=True)
    assert name in page
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    admin_web.post(f"/admin/projects/{name}/quota", data={"quota-instances": "3", "quota-vcpus": "-1"})
    quota = admin.quotas.GetQuota(ipb.GetQuotaRequest(project=name))
    assert quota.limits.instances == 3 and quota.limits.vcpus == -1
    admin_web.post(f"/admin/projects/{name}/delete")
    assert name not in [p.name for p in admin.identity.ListProjects(ipb.ListProjectsRequest()).projects]


def test_users_and_roles(admin_web, admin, cloud):
    project = f"adm-{uuid.uuid4().hex[:6]}"
    admin.identity.CreateProject(ipb.CreateProjectRequest(name=project))
    user = f"u-{uuid.uuid4().hex[:6]}"
    response = admin_web.post("/admin/users", data={"user-name": user, "user-password": "",
                                                    "user-project": project, "user-role": "reader"})
    assert response.status_code == 200
    password = re.search(r'data-testid="generated-password">([^<]+)<', response.get_data(as_text=True))[1]
    from cloudclient.client import CloudClient
    CloudClient(cloud.endpoint).login(user, password, project)
    admin_web.post(f"/admin/users/{user}/roles/add", data={"role-project": project, "role-role": "member"})
    roles = next(u for u in admin.identity.ListUsers(ipb.ListUsersRequest()).users if u.name == user).roles
    assert ("member", project) in [(r.role, r.project) for r in roles]
    assert "member in " + project in admin_web.get("/admin/users").get_data(as_text=True)
    admin_web.post(f"/admin/users/{user}/delete")
    assert user not in [u.name for u in admin.identity.ListUsers(ipb.ListUsersRequest()).users]
    admin.identity.DeleteProject(ipb.DeleteProjectRequest(name=project))


def test_flavors(admin_web, admin):
    name = f"fl-{uuid.uuid4().hex[:6]}"
    response = admin_web.post("/admin/flavors", data={"flavor-name": name, "flavor-vcpus": "2",
                                                      "flavor-memory_mb": "768", "flavor-disk_gb": "3",
                                                      "flavor-public": "y"})
    assert response.status_code == 302
    assert name in admin_web.get("/admin/flavors").get_data(as_text=True)
    flavor = admin.flavors.GetFlavor(pb.GetFlavorRequest(name=name))
    assert (flavor.vcpus, flavor.memory_mb, flavor.disk_gb, flavor.public) == (2, 768, 3, True)
    admin_web.post(f"/admin/flavors/{name}/delete")
    page = admin_web.get("/admin/flavors").get_data(as_text=True)
    assert f'<td data-label="Name">{name}</td>' not in page
    assert name not in [f.name for f in admin.flavors.ListFlavors(pb.ListFlavorsRequest()).flavors]
