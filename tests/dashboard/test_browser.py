"""The dashboard in real Chromium (Debian's, driven by Playwright), served the
production way: nginx in front of gunicorn, started by localcloud on the session cloud.

Screenshots of the main pages, at laptop and phone widths, and the measured
timings go to test-output/dashboard/."""

from __future__ import annotations

import json
import re
import socket
import time
import uuid
from collections.abc import Iterator

import pytest
from cloudapi.v1 import compute_pb2 as pb
from cloudapi.v1 import identity_pb2 as ipb

from tests.conftest import OUTPUT

playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect

SHOTS = OUTPUT / "dashboard"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
LAPTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="module")
def dashboard(cloud) -> Iterator[str]:
    """The dashboard as `make up` serves it: nginx in front of gunicorn's gthread workers."""
    cloud.start_dashboard()
    yield cloud.dashboard_url
    cloud.stop_dashboard()
    SHOTS.mkdir(parents=True, exist_ok=True)
    (SHOTS / "timings.json").write_text(json.dumps(TIMINGS, indent=2) + "\n")


@pytest.fixture(scope="module")
def browser() -> Iterator:
    SHOTS.mkdir(parents=True, exist_ok=True)
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def new_page(browser, viewport=LAPTOP, **kwargs):
    context = browser.new_context(viewport=viewport, **kwargs)
    context.set_default_timeout(30_000)
    page = context.new_page()
    page.on("dialog", lambda dialog: dialog.accept())  # "Stop web1?" and the like
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.js_errors = errors  # type: ignore[attr-defined]
    return page


def log_in(page, base: str, username: str, password: str) -> None:
    page.goto(base + "login")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button:has-text('Log in')")
    expect(page).to_have_url(base + "instances")
    expect(page.get_by_test_id("whoami")).to_contain_text(username)


def shot(page, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def render_ms(page) -> float:
    """How long the last navigation took, as the browser measured it (ms)."""
    return round(page.evaluate("performance.getEntriesByType('navigation')[0].duration"), 1)


def test_served_by_nginx_in_front_of_gunicorn(dashboard, browser, cloud):
    page = new_page(browser)
    response = page.request.get(dashboard + "healthz")
    assert response.ok and response.headers["server"] == "nginx"
    page.context.close()
    # gunicorn answers only on its unix socket, behind nginx.
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(cloud.dashboard_socket))
        sock.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        assert b"Server: gunicorn" in sock.recv(4096)


def test_tenant_launches_watches_console_stops_and_deletes(dashboard, browser, cloud, api, other_tenant):
    page = new_page(browser)
    page.goto(dashboard + "instances")
    expect(page).to_have_url(dashboard + "login?next=/instances")
    shot(page, "login")
    log_in(page, dashboard, "demo", cloud.password("demo"))
    TIMINGS["instances_page_ms"] = render_ms(page)

    # Launch: the form checks quota and hosts before it is sent.
    name = f"web-{uuid.uuid4().hex[:6]}"
    page.get_by_test_id("launch-link").click()
    TIMINGS["launch_page_ms"] = render_ms(page)
    page.fill("input[name=name]", name)
    page.select_option("select[name=flavor]", "tiny")
    expect(page.get_by_test_id("launch-check")).to_contain_text("Fits your quota")
    shot(page, "launch")
    started = time.monotonic()
    page.click("#launch-submit")
    expect(page).to_have_url(re.compile(rf"{dashboard}instances/[0-9a-f-]{{36}}$"))
    instance_id = page.url.rsplit("/", 1)[1]
    try:
        # Measured from the click (3 runs, loaded 2-core machine): ACTIVE seen after
        # 2.6-2.7 s (median 2.6), the boot marker and the resources line after 4.4-6.7 s
        # (median 4.5), the stats at once after them. The bounds: the API's boot bound
        # (ApiClient.BOOT_TIMEOUT_S), then 15 s more for the guest's console.
        expect(page.get_by_test_id("status")).to_contain_text("ACTIVE", timeout=30_000)
        TIMINGS["launch_click_to_active_seen_s"] = round(time.monotonic() - started, 2)
        # The buttons are the API's allowed_actions, kept so by each refresh (the page may
        # have opened in BUILD, delete only): one shown by mistake is hidden again.
        expect(page.get_by_test_id("stop")).to_be_visible()
        expect(page.get_by_test_id("scale")).to_be_visible()
        expect(page.get_by_test_id("start")).to_be_hidden()
        page.evaluate("document.querySelector('#operations [data-action=start]').hidden = false")
        expect(page.get_by_test_id("start")).to_be_hidden(timeout=10_000)
        expect(page.get_by_test_id("console")).to_contain_text(
            f"CLOUD-BOOT-OK instance_id={instance_id}", timeout=15_000)
        TIMINGS["launch_click_to_boot_marker_seen_s"] = round(time.monotonic() - started, 2)
        # Booted far enough for a clean ACPI stop (its acpid runs before this line).
        expect(page.get_by_test_id("console")).to_contain_text("CLOUD-RESOURCES", timeout=15_000)
        TIMINGS["launch_click_to_resources_line_seen_s"] = round(time.monotonic() - started, 2)
        expect(page.locator("#stats")).to_contain_text("CPU", timeout=10_000)
        TIMINGS["launch_click_to_stats_seen_s"] = round(time.monotonic() - started, 2)
        expect(page.locator("#action-rows")).to_contain_text("create")
        shot(page, "instance")
        page.set_viewport_size(PHONE)
        shot(page, "instance-phone")
        page.set_viewport_size(LAPTOP)

        # The list: its status is live. A marker on the window shows there was no reload.
        page.goto(dashboard + "instances")
        row = page.locator(f"tr[data-id='{instance_id}']")
        expect(row).to_contain_text("ACTIVE")
        expect(row).to_contain_text("tiny")
        shot(page, "instances")
        page.set_viewport_size(PHONE)
        shot(page, "instances-phone")
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
        page.set_viewport_size(LAPTOP)

        # Another tenant, logged in at the same time, does not see it.
        theirs = new_page(browser)
        log_in(theirs, dashboard, other_tenant.username, other_tenant.password)
        expect(theirs.locator("#instance-rows")).not_to_contain_text(name)
        theirs.goto(f"{dashboard}instances/{instance_id}")
        expect(theirs.locator("h1")).to_contain_text("Not Found")
        assert theirs.request.get(f"{dashboard}instances/{instance_id}.json").status == 404
        theirs.context.close()

        # A POST without the CSRF token is refused, even with the session cookie.
        refused = page.request.post(f"{dashboard}instances/{instance_id}/stop", form={"x": "1"})
        assert refused.status == 400 and "CSRF" in refused.text()
        assert api.instances.GetInstance(pb.GetInstanceRequest(id_or_name=instance_id)).status == "ACTIVE"

        # Stop from the list, confirmed; the status follows without a page reload.
        row.locator("button:has-text('Stop')").click()
        expect(page.locator(".flash.info")).to_contain_text("stop requested")
        page.evaluate("window.__noReload = 1")
        started = time.monotonic()
        expect(row).to_contain_text("SHUTOFF", timeout=20_000)  # seen after 4.3-4.4 s (3 runs)
        TIMINGS["stop_seen_s"] = round(time.monotonic() - started, 2)
        assert page.evaluate("window.__noReload") == 1
        expect(row.locator("button:has-text('Start')")).to_be_visible()

        # Delete from its page, confirmed; it leaves the list, again without a reload.
        page.goto(f"{dashboard}instances/{instance_id}")
        expect(page.get_by_test_id("status")).to_contain_text("SHUTOFF")
        expect(page.get_by_test_id("start")).to_be_visible()
        expect(page.get_by_test_id("stop")).to_be_hidden()
        expect(page.get_by_test_id("reboot")).to_be_hidden()
        page.get_by_test_id("delete").click()
        expect(page).to_have_url(dashboard + "instances")
        page.evaluate("window.__noReload = 1")
        started = time.monotonic()
        # Gone from the list 0.00-0.01 s after the delete's page (3 runs); the API's bound.
        expect(page.locator(f"tr[data-id='{instance_id}']")).to_have_count(0, timeout=15_000)
        TIMINGS["delete_seen_gone_s"] = round(time.monotonic() - started, 2)
        assert page.evaluate("window.__noReload") == 1
        assert api.wait_gone(instance_id)
        assert page.js_errors == []
    finally:
        try:
            api.instances.DeleteInstance(pb.DeleteInstanceRequest(id_or_name=instance_id))
        except Exception:
            pass
    page.context.close()


def test_over_quota_is_said_before_submitting(dashboard, browser, cloud):
    page = new_page(browser)
    log_in(page, dashboard, "demo", cloud.password("demo"))
    page.goto(dashboard + "launch")
    page.fill("input[name=name]", "many")
    page.select_option("select[name=flavor]", "large")
    page.fill("input[name=count]", "9")
    expect(page.get_by_test_id("launch-check")).to_contain_text("Over quota")
    expect(page.locator("#launch-submit")).to_be_disabled()
    shot(page, "launch-over-quota")
    page.fill("input[name=count]", "1")
    expect(page.locator("#launch-submit")).to_be_enabled()
    page.context.close()


def test_pages_at_laptop_and_phone_widths(dashboard, browser, cloud, admin):
    description = "<script>alert('x')</script>"
    project = f"brw-{uuid.uuid4().hex[:6]}"
    admin.identity.CreateProject(ipb.CreateProjectRequest(name=project, description=description))
    try:
        for label, viewport in (("", LAPTOP), ("-phone", PHONE)):
            page = new_page(browser, viewport)
            dialogs: list[str] = []
            page.on("dialog", lambda d, seen=dialogs: seen.append(d.message))
            log_in(page, dashboard, "admin", cloud.password("admin"))
            for path, name in [("quotas", "quotas"), ("usage?project=demo", "usage"),
                               ("keypairs", "keypairs"), ("images", "images"),
                               ("networks", "networks"), ("floating-ips", "floating-ips"),
                               ("admin/hosts", "admin-hosts"), ("admin/projects", "admin-projects"),
                               ("admin/users", "admin-users"), ("admin/flavors", "admin-flavors")]:
                page.goto(dashboard + path)
                TIMINGS[f"{name}{label}_page_ms"] = render_ms(page)
                expect(page.locator("main h1")).to_be_visible()
                assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1"), path
                shot(page, name + label)
            page.goto(dashboard + "admin/projects")
            expect(page.locator("main")).to_contain_text(description)  # as text, not run
            assert dialogs == [] and page.js_errors == []
            page.goto(dashboard + "admin/hosts")
            expect(page.get_by_test_id(f"host-{cloud.host_name}")).to_contain_text("MEMORY_MB")
            page.context.close()
    finally:
        admin.identity.DeleteProject(ipb.DeleteProjectRequest(name=project))
