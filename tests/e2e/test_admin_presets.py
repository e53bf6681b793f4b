"""The connection form with 50+ provider types, in a real browser: the grouped select and its filter, what a
preset will use (its URLs with the placeholders filled as they are typed, its scopes for the grant, its
documentation), and the issuer's Discover button against the real loopback authorization server."""

import pytest
from playwright.sync_api import expect

from connections.models import Connection
from providers.models import Provider
from tests.e2e.conftest import sign_in_as_root

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def add_page(page, live_server, settings):
    """The admin's Add connection page, signed in as a superuser; fails the test on any script error."""
    settings.OAUTH_REDIRECT_URI = f"{live_server.url}/oauth/callback/"
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    sign_in_as_root(page, live_server.url)
    page.goto(f"{live_server.url}/admin/connections/connection/add/")
    yield page
    assert errors == [], errors


def preview(page) -> str:
    return page.locator(".field-preset_display .readonly").inner_text()


def test_the_provider_select_is_grouped_and_filters_as_you_type(add_page):
    page = add_page
    groups = page.locator("#id_provider optgroup").evaluate_all("groups => groups.map(group => group.label)")
    assert groups[0] == "Custom and your own provider types" and "Identity and single sign-on" in groups
    assert page.locator("#id_provider option").count() == Provider.objects.count() + 1  # and the empty choice

    page.fill(".provider-filter", "desk")
    names = page.locator("#id_provider option").all_inner_texts()
    assert names == ["---------", "Zendesk"], names
    page.fill(".provider-filter", "identity")  # a group's name finds its members
    assert "Okta" in page.locator("#id_provider option").all_inner_texts()
    page.fill(".provider-filter", "")
    assert page.locator("#id_provider option").count() == Provider.objects.count() + 1


def test_a_preset_shows_its_urls_with_the_placeholders_filled_as_they_are_typed(add_page):
    page = add_page
    expect(page.locator(".field-preset_display")).to_contain_text("Choose a provider type")
    page.select_option("#id_provider", label="Zendesk")
    assert "https://<subdomain>.zendesk.com/oauth/tokens" in preview(page)
    expect(page.locator(".preset-missing")).to_be_visible()
    assert page.locator(".field-preset_display a").get_attribute("href").startswith("https://developer.zendesk.com/")

    page.fill("#id_placeholder__subdomain", "acme")
    assert "https://acme.zendesk.com/oauth/tokens" in preview(page)
    expect(page.locator(".preset-missing")).to_have_count(0)
    # a blank URL field says what it will use, in the field itself
    assert page.get_attribute("#id_token_url", "placeholder") == "https://acme.zendesk.com/oauth/tokens"
    assert page.get_attribute("#id_scopes", "placeholder") == "read write"
    # what is typed wins
    page.fill("#id_token_url", "https://tokens.acme.example/oauth/tokens")
    assert "https://tokens.acme.example/oauth/tokens" in preview(page)


def test_the_scopes_shown_follow_the_grant_type(add_page):
    page = add_page
    page.select_option("#id_provider", label="Microsoft Dynamics 365 (Dataverse)")
    page.fill("#id_placeholder__environment-host", "acme.crm4.dynamics.com")
    page.select_option("#id_grant_type", "authorization_code")
    assert "https://acme.crm4.dynamics.com/.default offline_access" in preview(page)
    page.select_option("#id_grant_type", "client_credentials")
    assert "offline_access" not in preview(page)
    assert "https://acme.crm4.dynamics.com/.default" in preview(page)


def test_discover_fills_the_blank_urls_from_the_issuer_and_the_connection_is_saved_with_them(add_page, authserver):
    page = add_page
    page.fill("#id_name", "Discovered in a browser")
    page.select_option("#id_provider", label="Custom")
    page.fill("#id_issuer", authserver.issuer)
    page.click("#discover-button")
    expect(page.locator(".discover-result")).to_contain_text("Discovered:")
    expect(page.locator(".discover-result")).to_contain_text("PKCE (S256)")  # the safer choice is suggested
    assert page.input_value("#id_token_url") == authserver.token_url
    assert page.input_value("#id_authorization_url") == authserver.authorize_url
    assert authserver.token_url in preview(page)

    page.fill("#id_client_id", "browser-client")
    page.fill("#id_client_secret", "browser-client-secret")
    page.click("input[name=_continue]")
    expect(page.locator(".messagelist .success").first).to_contain_text("was added successfully")
    connection = Connection.objects.get(name="Discovered in a browser")
    assert (connection.token_url, connection.revocation_url) == (authserver.token_url, authserver.revoke_url)


def test_discover_says_why_when_the_issuer_publishes_nothing(add_page, authserver):
    page = add_page
    authserver.set_discovery(missing=True)
    page.select_option("#id_provider", label="Custom")
    page.fill("#id_issuer", authserver.issuer)
    page.click("#discover-button")
    expect(page.locator(".discover-result.discover-error")).to_contain_text("publishes no discovery document")
    assert page.input_value("#id_token_url") == ""
