"""The admin's dashboard in a real browser, with real data: connections in every status, a day of refreshes and
tokens expiring in the next hours; drawn as SVG on the server, with links to what needs someone."""

import os
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from connections.models import AuditEvent, OAuthToken, TokenState
from tests.e2e.conftest import sign_in_as_root

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "dashboard.png"


# The size a text of an SVG is drawn at on the screen: its font size times the scale from the SVG to the screen.
RENDERED_FONT_SIZES = """(selector) => Array.from(document.querySelectorAll(selector)).map(
    (text) => parseFloat(getComputedStyle(text).fontSize) * text.getScreenCTM().a)"""


def _history(connection, hours_ago: int, successes: int, failures: int) -> None:
    at = timezone.now() - timedelta(hours=hours_ago)
    for outcome, count in (("success", successes), ("failure", failures)):
        for _ in range(count):
            event = AuditEvent.objects.create(
                action=AuditEvent.Action.TOKEN_REFRESH, outcome=outcome, connection=connection, detail="history"
            )
            AuditEvent.objects.filter(pk=event.pk).update(created_at=at)


def test_the_dashboard_draws_statuses_history_expiries_and_what_needs_someone(
    page, live_server, make_connection, tmp_path
):
    # given connections in every status, a day of refreshes and tokens expiring over the next hours
    now = timezone.now()
    healthy = [make_connection(register=False, name=f"Healthy {n}") for n in range(3)]
    for n, connection in enumerate(healthy):
        OAuthToken.objects.create(connection=connection, access_token="a", expires_at=now + timedelta(hours=n + 1))
    failing = make_connection(register=False, name="Failing CRM")
    OAuthToken.objects.create(connection=failing, access_token="a", state=TokenState.REFRESH_FAILING)
    lost = make_connection(register=False, name="Lost ERP")
    OAuthToken.objects.create(connection=lost, access_token="a", state=TokenState.REAUTHORIZATION_REQUIRED)
    make_connection(register=False, name="Never connected")
    make_connection(register=False, name="Switched off", is_enabled=False)
    for hours_ago in range(0, 24, 2):
        _history(healthy[0], hours_ago, successes=3 + hours_ago % 5, failures=1 if hours_ago % 6 == 0 else 0)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))

    # when an administrator opens it from the admin's home page
    page.set_viewport_size({"width": 1366, "height": 900})
    sign_in_as_root(page, live_server.url)
    page.click("#dashboard-link a.button")

    # then every picture is there, with its figures, and the attention list links to the connections
    expect(page.locator("h1")).to_have_text("Dashboard")
    status_text = page.locator("#status-chart").text_content()
    for label in ("connected", "refresh failing", "reauthorization required", "not connected", "disabled"):
        assert label in status_text
    assert page.locator("#refresh-chart rect").count() == 2 * 24
    assert page.locator("#expiry-chart g").count() == 12
    # every label of the charts reads at 11 px or more on the screen, as drawn (after any scaling of the SVG)
    sizes = page.evaluate(RENDERED_FONT_SIZES, ".dashboard-card svg text")
    assert len(sizes) > 40 and min(sizes) >= 11, sizes
    attention = page.locator("#attention li")
    expect(attention).to_have_count(2)
    expect(attention.first).to_contain_text("Lost ERP: Reauthorization required")
    page.click("#attention a:has-text('Failing CRM')")
    page.wait_for_url(f"**/admin/connections/connection/{failing.pk}/change/")
    page.go_back()
    shot = SCREENSHOT if os.environ.get("UPDATE_SCREENSHOTS") else tmp_path / "dashboard.png"
    page.screenshot(path=str(shot), full_page=True)
    assert errors == []


def test_an_empty_dashboard_says_so_in_words(laptop_page, live_server):
    sign_in_as_root(laptop_page, live_server.url)  # at 1366x768, nothing there yet
    laptop_page.goto(f"{live_server.url}/admin/connections/connection/dashboard/")
    expect(laptop_page.locator("#status-chart")).to_have_text("No connection yet: add one under Connections.")
    expect(laptop_page.locator("#refresh-chart")).to_contain_text("No refresh in the last 24 hours yet")
    expect(laptop_page.locator("#expiry-chart")).to_have_text("No connected token expires in the next 12 hours.")
    assert laptop_page.locator(".dashboard-card svg").count() == 0  # no axis scaled to a bare "1"
    font = laptop_page.evaluate("parseFloat(getComputedStyle(document.querySelector('.chart-empty')).fontSize)")
    assert font >= 11


def test_someone_without_view_permission_is_refused(client, make_user):
    client.force_login(make_user("outsider", staff=True))
    assert client.get("/admin/connections/connection/dashboard/").status_code == 403
