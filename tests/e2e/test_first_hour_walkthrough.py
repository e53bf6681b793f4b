"""The administrator's first hour, as docs/providers.md walks it, in a real browser at 1366x768 against the loopback
authorization server: a client-credentials connection (only its fields shown; a wrong secret first, which stays
on the page and in the list, then Save and test), an authorization-code connection (Save and connect), a role
made on the role page with a member and an invitation, a bot key and its reach, and the first token fetched with
the curl line the connection's page shows. UPDATE_SCREENSHOTS=1 writes each step's screenshot into docs/."""

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import expect

from connections.models import AuditEvent, OAuthToken, Role
from tests.conftest import PROVIDER_USER
from tests.e2e.conftest import choose

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

DOCS = Path(__file__).resolve().parents[2] / "docs"
# Rows a client-credentials connection has no use for; the form hides them (and its Connect buttons).
AUTHORIZATION_ONLY = ("redirect_uri", "authorization_url", "extra_authorization_params")


@pytest.fixture
def first_hour(admin_page, live_server, settings, tmp_path) -> tuple[object, str, object]:
    """A laptop-sized window signed in as the first administrator; `shot(name)` keeps a screenshot of the step."""
    settings.PUBLIC_URL = live_server.url  # the address bots use, which the bot call shows
    settings.OAUTH_REDIRECT_URI = f"{live_server.url}/oauth/callback/"
    folder = DOCS if os.environ.get("UPDATE_SCREENSHOTS") else tmp_path

    def shot(name: str) -> None:
        admin_page.screenshot(path=str(folder / f"first-hour-{name}.png"), full_page=True)

    return admin_page, live_server.url, shot


def _add_client_credentials_connection(page, url: str, authserver, shot) -> None:
    """Only its fields are shown; a mistyped secret fails and stays on the page and in the list; the right one
    connects with Save and test."""
    authserver.create_client("ledger-app", "ledger-secret-1", [], grant_type="client-credentials")
    page.goto(f"{url}/admin/connections/connection/add/")
    page.fill("#id_name", "Ledger API")
    page.select_option("#id_provider", label="Custom")
    page.select_option("#id_grant_type", "client_credentials")
    for name in AUTHORIZATION_ONLY:
        expect(page.locator(f".form-row.field-{name}")).to_be_hidden()
    expect(page.locator("#save-and-connect")).to_be_hidden()
    expect(page.locator("input[name=_test]")).to_be_visible()
    page.fill("#id_client_id", "ledger-app")
    page.fill("#id_client_secret", "ledger-secret-typo")
    page.fill("#id_token_url", authserver.token_url)
    page.fill("#id_scopes", "read")
    shot("1-client-credentials")
    page.click("input[name=_test]")

    expect(page.locator(".messagelist .warning")).to_contain_text("invalid_client")
    expect(page.locator(".field-status_display .connection-failed")).to_have_text("Not connected — last attempt failed")
    expect(page.locator(".field-last_error_display")).to_contain_text("invalid_client")
    expect(page.locator(".field-last_error_display")).to_contain_text("1 failure in a row")
    shot("2-failure-stays")
    page.goto(f"{url}/admin/connections/connection/")
    row = page.locator("#result_list tbody tr", has_text="Ledger API")
    expect(row.locator(".connection-failed").first).to_contain_text("last attempt failed")
    expect(row).to_contain_text("invalid_client")

    row.locator("a", has_text="Ledger API").click()
    page.fill("#id_client_secret", "ledger-secret-1")
    page.click("input[name=_test]")
    expect(page.locator(".messagelist .success")).to_contain_text("Test passed")
    expect(page.locator(".field-status_display .readonly")).to_contain_text("Connected")
    expect(page.locator(".field-last_error_display")).not_to_contain_text("invalid_client")


def _add_authorization_code_connection(page, url: str, authserver, shot) -> None:
    """Save and connect: the provider's sign-in and consent, then back on the page, connected."""
    authserver.create_client("crm-app", "crm-secret-1", [f"{url}/oauth/callback/"], pkce_required=True)
    page.goto(f"{url}/admin/connections/connection/add/")
    page.fill("#id_name", "Finance CRM")
    page.select_option("#id_provider", label="Custom")
    page.select_option("#id_grant_type", "authorization_code_pkce")
    expect(page.locator(".form-row.field-redirect_uri")).to_contain_text(f"{url}/oauth/callback/")
    page.fill("#id_client_id", "crm-app")
    page.fill("#id_client_secret", "crm-secret-1")
    page.fill("#id_authorization_url", authserver.authorize_url)
    page.fill("#id_token_url", authserver.token_url)
    page.fill("#id_revocation_url", authserver.revoke_url)
    page.fill("#id_scopes", "read,write")
    shot("3-authorization-code")
    page.click("#save-and-connect")
    assert page.url.startswith(authserver.url), page.url
    page.fill("#id_username", PROVIDER_USER[0])
    page.fill("#id_password", PROVIDER_USER[1])
    page.click("button:has-text('Sign in')")
    page.click("button:has-text('Authorize')")
    page.wait_for_url(re.compile(r".*/admin/connections/connection/\d+/change/$"))
    expect(page.locator(".messagelist")).to_contain_text("Finance CRM is connected")
    expect(page.locator(".field-status_display .readonly")).to_contain_text("Connected, expires in")


def _create_role(page, url: str, shot) -> None:
    """From the role page: the bot runner as member, the CRM connection invited."""
    page.goto(f"{url}/admin/connections/role/add/")
    page.fill("#id_name", "Finance bots")
    choose(page, "members", "finance-bot")
    choose(page, "invited_connections", "Finance CRM")
    shot("4-role")
    page.click("input[name=_continue]")
    expect(page.locator(".messagelist .success").first).to_contain_text("was added successfully")


def _create_bot_key(page, url: str, shot) -> str:
    """Bot keys > Add; the key is shown once, with the connections it reaches. Returns the raw key."""
    page.goto(f"{url}/admin/connections/botkey/add/")
    page.select_option("#id_user", label="finance-bot")
    page.fill("#id_name", "nightly runner")
    page.click("input[name=_save]")
    reach = page.locator("table.bot-key-reach")
    expect(reach.locator("tr[data-slug=finance-crm] .reach-gets-token")).to_have_text("Yes")
    expect(reach.locator("tr[data-slug=ledger-api]")).to_have_count(0)  # not invited to the role
    raw_key = page.locator("#raw-key").inner_text().strip()
    assert raw_key.startswith("crk_")
    shot("5-bot-key")
    return raw_key


def _first_token_with_the_curl_line(page, url: str, raw_key: str, authserver, shot) -> None:
    """The connection's page shows the curl line; run as shown, with the key in CONTROLROOM_KEY, it answers a
    token the provider accepts."""
    page.goto(f"{url}/admin/connections/connection/")
    page.locator("#result_list a", has_text="Finance CRM").click()
    curl = page.locator("#bot-call-curl").inner_text()
    assert "$CONTROLROOM_KEY" in curl and f"{url}/api/v1/connections/finance-crm/token" in curl, curl
    shot("6-bot-call")
    env = {"PATH": os.environ["PATH"], "CONTROLROOM_KEY": raw_key}
    answer = subprocess.run(
        ["bash", "-c", f"{curl} --silent --show-error --fail"], env=env, capture_output=True, text=True, timeout=30
    )
    assert answer.returncode == 0, answer.stderr
    access_token = json.loads(answer.stdout)["access_token"]
    assert access_token == OAuthToken.objects.get(connection__slug="finance-crm").access_token
    assert authserver.whoami(access_token).status_code == 200


def test_the_first_hour(first_hour, authserver):
    page, url, shot = first_hour
    User.objects.create_user("finance-bot")

    _add_client_credentials_connection(page, url, authserver, shot)
    _add_authorization_code_connection(page, url, authserver, shot)
    _create_role(page, url, shot)
    role = Role.objects.get(name="Finance bots")
    assert [user.username for user in role.user_set.all()] == ["finance-bot"]
    assert [connection.slug for connection in role.connections.all()] == ["finance-crm"]
    raw_key = _create_bot_key(page, url, shot)
    _first_token_with_the_curl_line(page, url, raw_key, authserver, shot)

    # and the history says who did what, in words
    actions = set(AuditEvent.objects.values_list("action", flat=True))
    assert {"connection_create", "connection_test", "authorize_callback", "role_update", "bot_key_create"} <= actions
