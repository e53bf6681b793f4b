"""My OAuth connections in a real browser (a laptop's 1366x768 screen): a user authorizes a user-specific
connection at the loopback provider, finds it by search and by status, and disconnects it after confirming,
which ends the grant at the provider."""

import re
from collections.abc import Iterator

import pytest
from django.contrib.auth.models import Group, User
from playwright.sync_api import expect

from connections.models import OAuthToken
from tests.conftest import PROVIDER_USER

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def laptop_page(browser) -> Iterator[object]:
    context = browser.new_context(viewport={"width": 1366, "height": 768})
    context.set_default_timeout(15_000)
    yield context.new_page()
    context.close()


@pytest.fixture
def public_url(live_server, settings) -> str:
    settings.OAUTH_REDIRECT_URI = f"{live_server.url}/oauth/callback/"
    return live_server.url


def rows(page) -> list[str]:
    return page.locator("tr.connection-row").evaluate_all("rows => rows.map(row => row.dataset.slug)")


def search(page, text: str, status: str = "") -> list[str]:
    page.fill("#searchbar", text)
    page.select_option("#status-filter", status)
    page.click("#changelist-search input[type=submit]")
    return rows(page)


def test_a_user_finds_and_disconnects_their_own_connection(laptop_page, public_url, authserver, make_connection):
    page = laptop_page
    # given three user-specific connections invited to the user's role
    role = Group.objects.create(name="Support agents")
    helpdesk = make_connection(
        token_type="user_specific", name="Helpdesk CRM", description="Tickets for EMEA", register=False
    )
    authserver.create_client(helpdesk.client_id, helpdesk.client_secret, [f"{public_url}/oauth/callback/"])
    calendar = make_connection(token_type="user_specific", name="Calendar sync", register=False)
    drive = make_connection(token_type="user_specific", name="Drive archive", register=False)
    for connection in (helpdesk, calendar, drive):
        connection.roles.add(role)
    User.objects.create_user("agent", password="agent-password-1").groups.add(role)

    # when the user signs in and authorizes the helpdesk at the provider
    page.goto(f"{public_url}/connections/mine/")
    page.fill("#id_username", "agent")
    page.fill("#id_password", "agent-password-1")
    page.click("input[type=submit]")
    assert rows(page) == [calendar.slug, drive.slug, helpdesk.slug]
    page.locator(f"tr[data-slug='{helpdesk.slug}'] button:has-text('Authorize')").click()
    page.fill("#id_username", PROVIDER_USER[0])
    page.fill("#id_password", PROVIDER_USER[1])
    page.click("button:has-text('Sign in')")
    page.click("button:has-text('Authorize')")
    page.wait_for_url(f"{public_url}/connections/mine/")
    token = OAuthToken.objects.get(connection=helpdesk)
    assert authserver.whoami(token.access_token).status_code == 200

    # then a search finds it by its description, and the query stays in the box
    assert search(page, "emea") == [helpdesk.slug]
    expect(page.locator("#searchbar")).to_have_value("emea")
    # and the status filter keeps the chosen status; both together may find nothing, and say so
    assert search(page, "", "not_connected") == [calendar.slug, drive.slug]
    expect(page.locator("#status-filter")).to_have_value("not_connected")
    assert search(page, "", "connected") == [helpdesk.slug]
    assert search(page, "drive", "connected") == []
    expect(page.locator("#no-match")).to_contain_text("No connection matches “drive” with that status")
    page.click("#clear-search")
    assert len(rows(page)) == 3

    # when they click Disconnect, they are asked first, told the grant ends at the provider
    page.locator(f"tr[data-slug='{helpdesk.slug}'] .disconnect-link").click()
    expect(page.locator("#revokes")).to_contain_text("revoked at the provider")
    assert OAuthToken.objects.filter(pk=token.pk).exists()
    page.click("#confirm-disconnect")

    # then the token is gone here and the grant at the provider
    page.wait_for_url(re.compile(r".*/connections/mine/$"))
    expect(page.locator(".messagelist")).to_contain_text("Disconnected Helpdesk CRM")
    expect(page.locator(f"tr[data-slug='{helpdesk.slug}'] .status")).to_have_text("Not connected")
    assert not OAuthToken.objects.filter(connection=helpdesk).exists()
    assert authserver.whoami(token.access_token).status_code == 401
