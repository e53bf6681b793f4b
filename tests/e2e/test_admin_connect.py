"""The administrator's whole journey in a real browser, against the real loopback authorization server."""

import os
import re
from pathlib import Path

import pytest
from django.contrib.auth.models import Group, User
from django.db import connection as db
from playwright.sync_api import expect

from connections.models import OAuthToken
from tests.conftest import PROVIDER_USER
from tests.e2e.conftest import sign_in_as_root

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "first-connection.png"


@pytest.fixture
def public_url(live_server, settings) -> str:
    settings.OAUTH_REDIRECT_URI = f"{live_server.url}/oauth/callback/"
    return live_server.url


def _sign_in_at_provider_and_consent(page) -> None:
    page.fill("#id_username", PROVIDER_USER[0])
    page.fill("#id_password", PROVIDER_USER[1])
    page.click("button:has-text('Sign in')")
    page.click("button:has-text('Authorize')")


def test_administrator_creates_connects_and_disconnects(page, public_url, authserver, tmp_path):
    # given an administrator and an application registered at the provider with our redirect URI
    authserver.create_client("e2e-client", "e2e-client-secret", [f"{public_url}/oauth/callback/"])

    # when they sign in to the admin and create the connection
    sign_in_as_root(page, public_url)
    page.goto(f"{public_url}/admin/connections/connection/add/")
    page.fill("#id_name", "Loopback CRM")
    # choosing a provider type asks for its placeholders only
    page.select_option("#id_provider", label="Salesforce")
    expect(page.locator(".field-placeholder__yourinstance")).to_be_visible()
    expect(page.locator(".field-placeholder__tenant")).to_be_hidden()
    page.select_option("#id_provider", label="Custom")
    expect(page.locator(".field-placeholder__yourinstance")).to_be_hidden()
    page.select_option("#id_grant_type", "authorization_code_pkce")
    page.fill("#id_client_id", "e2e-client")
    page.fill("#id_client_secret", "e2e-client-secret")
    page.fill("#id_authorization_url", authserver.authorize_url)
    page.fill("#id_token_url", authserver.token_url)
    page.fill("#id_revocation_url", authserver.revoke_url)
    page.fill("#id_scopes", "read,write")
    page.click("input[name=_continue]")
    expect(page.locator(".messagelist .success").first).to_contain_text("was added successfully")
    expect(page.locator(".field-redirect_uri")).to_contain_text(f"{public_url}/oauth/callback/")
    expect(page.locator(".field-status_display")).to_contain_text("Not connected")

    # and click Connect, sign in and consent at the provider
    page.click("#connect-button")
    assert page.url.startswith(authserver.url)
    _sign_in_at_provider_and_consent(page)

    # then they are back on the change page, connected
    page.wait_for_url(re.compile(r".*/admin/connections/connection/\d+/change/$"))
    expect(page.locator(".messagelist")).to_contain_text("Loopback CRM is connected")
    status = page.locator(".field-status_display .readonly").inner_text()
    assert status.startswith("Connected, expires in"), status
    shot = SCREENSHOT if os.environ.get("UPDATE_SCREENSHOTS") else tmp_path / "first-connection.png"
    page.screenshot(path=str(shot), full_page=True)

    # and the database holds only encrypted tokens, which work at the provider
    token = OAuthToken.objects.get(connection__slug="loopback-crm")
    with db.cursor() as cursor:
        cursor.execute("SELECT access_token, refresh_token FROM connections_oauthtoken WHERE id = %s", [token.pk])
        raw = b"".join(bytes(value) for value in cursor.fetchone())
    assert token.access_token.encode() not in raw and token.refresh_token.encode() not in raw
    assert authserver.whoami(token.access_token).status_code == 200
    assert token.access_token not in page.content()

    # when they disconnect
    page.click("#disconnect-link")
    page.click("#confirm-disconnect")

    # then the grant is revoked at the provider and nothing is stored
    expect(page.locator(".messagelist")).to_contain_text("Disconnected Loopback CRM")
    assert not OAuthToken.objects.exists()
    assert authserver.whoami(token.access_token).status_code == 401


def test_a_non_administrator_authorizes_their_own_user_specific_token(page, public_url, authserver, make_connection):
    # given a user-specific connection invited to a role, and a user in it who is not staff
    role = Group.objects.create(name="Support agents")
    connection = make_connection(token_type="user_specific", register=False)
    authserver.create_client(connection.client_id, connection.client_secret, [f"{public_url}/oauth/callback/"])
    connection.roles.add(role)
    user = User.objects.create_user("agent", password="agent-password-1")
    user.groups.add(role)

    # when they sign in, open My connections and authorize
    page.goto(f"{public_url}/connections/mine/")
    page.fill("#id_username", "agent")
    page.fill("#id_password", "agent-password-1")
    page.click("input[type=submit]")
    row = page.locator(f"tr[data-slug='{connection.slug}']")
    expect(row).to_contain_text("Not connected")
    row.locator("button:has-text('Authorize')").click()
    _sign_in_at_provider_and_consent(page)

    # then the token is theirs and the page says so
    page.wait_for_url(f"{public_url}/connections/mine/")
    expect(page.locator(f"tr[data-slug='{connection.slug}']")).to_contain_text("Connected, expires in")
    token = OAuthToken.objects.get(connection=connection)
    assert token.user == user
    assert authserver.whoami(token.access_token).status_code == 200
