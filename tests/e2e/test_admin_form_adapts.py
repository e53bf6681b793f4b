"""The connection form adapts as the administrator chooses, in a real browser (1366x768): the grant select offers
the provider type's grants only; the app grants hide the redirect URI, the authorization URL, the extra parameters,
the device URL and both Connect buttons, leaving Save and test connection; the Device Code grant shows its URL;
Custom marks the URLs its grant needs required; extra parameters typed as a query string are stored as a dict."""

import pytest
from playwright.sync_api import expect

from connections.models import Connection
from providers.models import Provider

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

ADD_PATH = "/admin/connections/connection/add/"
ALL_GRANTS = ["authorization_code", "authorization_code_pkce", "client_credentials", "jwt_bearer", "device_code"]
# What the Authorization Code grants show and the grants acting as the application hide.
REDIRECT_ROWS = [".field-redirect_uri", ".field-authorization_url", ".field-extra_authorization_params"]


@pytest.fixture(autouse=True)
def redirect_uri(live_server, settings) -> None:
    settings.OAUTH_REDIRECT_URI = f"{live_server.url}/oauth/callback/"


def grant_options(page) -> list[str]:
    return page.locator("#id_grant_type option").evaluate_all("options => options.map(option => option.value)")


def expect_connect_grant(page) -> None:
    """What an Authorization Code grant shows: the redirect rows, Save and connect as the primary button."""
    for row in REDIRECT_ROWS:
        expect(page.locator(row)).to_be_visible()
    expect(page.locator(".field-device_authorization_url")).to_be_hidden()
    expect(page.locator("#save-and-connect")).to_be_visible()
    expect(page.locator("#save-and-connect")).to_have_class("default")
    expect(page.locator("#save-and-test")).to_be_hidden()  # nothing to test before it is connected
    assert primary_buttons(page) == ["Save and connect"]


def expect_app_grant(page) -> None:
    """What a grant acting as the application shows: none of the redirect rows, no Connect, Save and test."""
    for row in [*REDIRECT_ROWS, ".field-device_authorization_url", "#save-and-connect", "#connect-button"]:
        expect(page.locator(row)).to_be_hidden()
    expect(page.locator("#save-and-test")).to_be_visible()
    expect(page.locator("#save-and-test")).to_have_value("Save and test connection")
    expect(page.locator("#save-and-test")).to_have_class("default")
    assert primary_buttons(page) == ["Save and test connection"]


# The visible submit buttons drawn as the main one (the colour of the admin's "default" button).
PRIMARY_BUTTONS = """() => {
  const probe = Object.assign(document.createElement("input"), {type: "submit", className: "default"});
  document.querySelector(".submit-row").append(probe);
  const primary = getComputedStyle(probe).backgroundColor;
  probe.remove();
  return [...document.querySelectorAll(".submit-row input[type=submit]")]
    .filter((button) => button.offsetParent !== null && getComputedStyle(button).backgroundColor === primary)
    .map((button) => button.value);
}"""


def primary_buttons(page) -> list[str]:
    return page.evaluate(PRIMARY_BUTTONS)


def required_urls(page) -> list[str]:
    labels = page.locator("label.required[for$='_url']").evaluate_all("labels => labels.map(label => label.htmlFor)")
    return [label.removeprefix("id_") for label in labels]


def test_the_grant_select_offers_the_provider_types_grants_only(admin_page, live_server):
    page = admin_page
    page.goto(f"{live_server.url}{ADD_PATH}")
    assert grant_options(page) == ALL_GRANTS  # no provider type chosen yet

    page.select_option("#id_provider", label="Okta")
    assert grant_options(page) == ["authorization_code", "authorization_code_pkce", "client_credentials"]
    page.select_option("#id_grant_type", "client_credentials")
    page.select_option("#id_provider", label="Salesforce")  # supports it too: kept
    expect(page.locator("#id_grant_type")).to_have_value("client_credentials")
    page.select_option("#id_provider", label="Jira")  # does not: its first grant
    assert grant_options(page) == ["authorization_code"]
    expect(page.locator("#id_grant_type")).to_have_value("authorization_code")
    page.select_option("#id_provider", label="Google service account")
    assert grant_options(page) == ["jwt_bearer"]
    expect_app_grant(page)  # the only grant, chosen: its rows follow
    page.select_option("#id_provider", label="Custom")
    assert grant_options(page) == ALL_GRANTS


def test_client_credentials_hides_the_redirect_rows_and_connect_and_switching_back_shows_them(admin_page, live_server):
    # given a saved Okta connection using the Authorization Code grant
    connection = Connection.objects.create(
        name="Okta prod",
        slug="okta-prod",
        provider=Provider.objects.get(slug="okta"),
        placeholders={"yourinstance": "acme"},
        grant_type="authorization_code",
        client_id="okta-client",
        client_secret="okta-secret-1",
    )
    page = admin_page
    page.goto(f"{live_server.url}/admin/connections/connection/{connection.pk}/change/")
    expect_connect_grant(page)
    expect(page.locator("#connect-button")).to_be_visible()

    # when the administrator switches to Client Credentials
    page.select_option("#id_grant_type", "client_credentials")
    # then what it does not use is hidden, the object tools' Connect too
    expect_app_grant(page)

    # and switching back shows them again
    page.select_option("#id_grant_type", "authorization_code_pkce")
    expect_connect_grant(page)
    expect(page.locator("#connect-button")).to_be_visible()


def test_the_device_code_grant_shows_its_url_and_hides_the_redirect_rows(admin_page, live_server):
    page = admin_page
    page.goto(f"{live_server.url}{ADD_PATH}")
    page.select_option("#id_provider", label="Microsoft Entra (Microsoft 365, Office, Teams)")
    page.select_option("#id_grant_type", "device_code")
    expect(page.locator(".field-device_authorization_url")).to_be_visible()
    for row in REDIRECT_ROWS:
        expect(page.locator(row)).to_be_hidden()
    expect(page.locator("#save-and-connect")).to_be_visible()


def test_custom_marks_the_urls_its_grant_needs_required(admin_page, live_server):
    page = admin_page
    page.goto(f"{live_server.url}{ADD_PATH}")
    help_of = lambda name: page.locator(f"#id_{name}_helptext")  # noqa: E731
    page.select_option("#id_provider", label="Salesforce")
    assert required_urls(page) == []
    expect(help_of("token_url")).to_have_text("Leave blank to use the provider type's URL.")

    page.select_option("#id_provider", label="Custom")
    assert required_urls(page) == ["authorization_url", "token_url"]
    expect(help_of("token_url")).to_contain_text("Required: this provider type has no URL of its own")
    expect(help_of("revocation_url")).to_contain_text("Leave blank")
    page.select_option("#id_grant_type", "client_credentials")
    assert required_urls(page) == ["token_url"]
    page.select_option("#id_grant_type", "device_code")
    assert required_urls(page) == ["token_url", "device_authorization_url"]
    expect(help_of("device_authorization_url")).to_contain_text("Required: this provider type has no URL of its own")

    page.select_option("#id_provider", label="Okta")  # has URLs of its own: nothing required, "leave blank" again
    assert required_urls(page) == []
    expect(help_of("authorization_url")).to_have_text("Leave blank to use the provider type's URL.")


def test_extra_parameters_typed_as_a_query_string_are_stored_as_a_dict(admin_page, live_server):
    page = admin_page
    page.goto(f"{live_server.url}{ADD_PATH}")
    page.fill("#id_name", "Okta with consent")
    page.select_option("#id_provider", label="Okta")
    page.fill("#id_placeholder__yourinstance", "acme")
    page.fill("#id_client_id", "okta-client")
    page.fill("#id_client_secret", "okta-secret-1")
    page.fill("#id_extra_authorization_params", "prompt=consent&access_type=offline")
    page.click("input[name=_continue]")
    expect(page.locator(".messagelist .success").first).to_contain_text("was added successfully")

    connection = Connection.objects.get(name="Okta with consent")
    assert connection.extra_authorization_params == {"prompt": "consent", "access_type": "offline"}
    shown = page.input_value("#id_extra_authorization_params")  # shown back as JSON
    assert '"prompt": "consent"' in shown and '"access_type": "offline"' in shown, shown


def test_the_signing_rows_follow_the_client_authentication_and_the_grant(admin_page, live_server):
    page = admin_page
    page.goto(f"{live_server.url}{ADD_PATH}")
    page.select_option("#id_provider", label="Custom")
    page.select_option("#id_grant_type", "authorization_code")
    key_rows = [".field-private_key", ".field-private_key_id"]
    for row in [*key_rows, ".field-jwt_subject"]:  # a client secret needs none of them
        expect(page.locator(row)).to_be_hidden()

    page.select_option("#id_client_auth_method", "private_key_jwt")
    for row in key_rows:
        expect(page.locator(row)).to_be_visible()
    expect(page.locator(".field-jwt_subject")).to_be_hidden()

    page.select_option("#id_client_auth_method", "")
    page.select_option("#id_grant_type", "jwt_bearer")
    for row in [*key_rows, ".field-jwt_subject"]:
        expect(page.locator(row)).to_be_visible()
