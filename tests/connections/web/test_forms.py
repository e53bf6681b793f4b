"""The connection form adapts to the provider type and the grant, on the server (the page as rendered, before any
script, and what it accepts): only the grants the provider type supports; the rows and buttons of the grant; the
URLs a provider type without URLs of its own needs, marked required; the extra authorization parameters as a
query string or JSON. And the provider type page shows its <placeholders> in its help texts."""

import html
import json
import re

import pytest

from connections.models import Connection
from providers.models import Provider
from tests.connections.admin.test_connection_admin import _form

pytestmark = pytest.mark.django_db

ADD_URL = "/admin/connections/connection/add/"
OPTIONAL_HELP = "Leave blank to use the provider type's URL."
REQUIRED_HELP = "Required: this provider type has no URL of its own."


def _grant_options(page: str) -> list[str]:
    select = re.search(r'<select name="grant_type".*?</select>', page, re.DOTALL)
    assert select, "no grant select on the page"
    return re.findall(r'<option value="([^"]*)"', select.group(0))


def _label_classes(page: str, field: str) -> list[str]:
    label = re.search(rf'<label([^>]*)for="id_{field}"', page)
    assert label, f"no label for {field}"
    found = re.search(r'class="([^"]*)"', label.group(1))
    return found.group(1).split() if found else []


def _help_text(page: str, field: str) -> str:
    found = re.search(rf'id="id_{field}_helptext">\s*<div>(.*?)</div>', page, re.DOTALL)
    assert found, f"no help text for {field}"
    return found.group(1)


def _body_classes(page: str) -> list[str]:
    return re.search(r'<body class="([^"]*)"', page).group(1).split()


def _provider(slug: str) -> Provider:
    return Provider.objects.get(slug=slug)


# 1. Only the grants the provider type supports


def test_an_unsupported_grant_is_refused_in_words_and_nothing_is_saved(manager_client):
    response = manager_client.post(ADD_URL, _form("jira", grant_type="client_credentials"))
    errors = response.context["adminform"].form.errors["grant_type"]
    assert errors == ["Jira supports: Authorization Code (not Client Credentials)."], errors
    assert not Connection.objects.exists()
    # and the page shown again offers Jira's grants only, with the rows of the one it shows chosen
    page = response.content.decode()
    assert _grant_options(page) == ["authorization_code"]
    assert "grant-code" in _body_classes(page)


def test_the_add_page_offers_every_grant_until_a_provider_type_is_chosen(manager_client):
    page = manager_client.get(ADD_URL).content.decode()
    assert _grant_options(page) == [
        "authorization_code",
        "authorization_code_pkce",
        "client_credentials",
        "jwt_bearer",
        "device_code",
    ]
    airtable = manager_client.get(f"{ADD_URL}?provider={_provider('airtable').pk}").content.decode()
    assert _grant_options(airtable) == ["authorization_code_pkce"]


def test_a_saved_connection_offers_only_its_provider_types_grants(manager_client, make_connection):
    connection = make_connection(register=False, provider=_provider("okta"), placeholders={"yourinstance": "acme"})
    page = manager_client.get(f"/admin/connections/connection/{connection.pk}/change/").content.decode()
    assert _grant_options(page) == ["authorization_code", "authorization_code_pkce", "client_credentials"]
    # every grant's label, layout and URLs are there for the script, whichever provider type is chosen next
    assert "device_code" in re.search(r'data-grants="([^"]*)"', page).group(1)


# 2. The rows and buttons of the grant (the page's grant-<layout> class; the template's CSS hides by it)


@pytest.mark.parametrize(
    ("grant_type", "layout", "primary"),
    [
        ("client_credentials", "grant-app", "save-and-test"),
        ("jwt_bearer", "grant-app", "save-and-test"),
        ("authorization_code", "grant-code", "save-and-connect"),
        ("authorization_code_pkce", "grant-code", "save-and-connect"),
        ("device_code", "grant-device", "save-and-connect"),
    ],
)
def test_a_saved_connection_is_shown_with_the_rows_and_buttons_of_its_grant(
    manager_client, make_connection, grant_type, layout, primary
):
    connection = make_connection(register=False, grant_type=grant_type)
    page = manager_client.get(f"/admin/connections/connection/{connection.pk}/change/").content.decode()
    layouts = [name for name in _body_classes(page) if name.startswith("grant-")]
    assert layouts == [layout]
    defaults = re.findall(r'<input type="submit"[^>]*id="(save-and-\w+)" class="default"', page)
    assert defaults == [primary]
    assert ('id="connect-button"' in page) == (layout != "grant-app")


@pytest.mark.parametrize(
    ("grant_type", "client_auth_method", "signing"),
    [
        ("authorization_code", "", "signing-none"),
        ("client_credentials", "private_key_jwt", "signing-key"),
        ("jwt_bearer", "", "signing-jwt"),
    ],
)
def test_a_saved_connection_shows_the_signing_rows_it_uses(
    manager_client, make_connection, grant_type, client_auth_method, signing
):
    connection = make_connection(register=False, grant_type=grant_type, client_auth_method=client_auth_method)
    page = manager_client.get(f"/admin/connections/connection/{connection.pk}/change/").content.decode()
    assert [name for name in _body_classes(page) if name.startswith("signing-")] == [signing]


@pytest.mark.parametrize(
    ("grant_type", "sends_to_provider"),
    [("client_credentials", False), ("device_code", False), ("authorization_code", True)],
)
def test_what_it_will_use_and_the_redirect_note_follow_the_grant(
    manager_client, make_connection, grant_type, sends_to_provider
):
    connection = make_connection(register=False, grant_type=grant_type)
    page = manager_client.get(f"/admin/connections/connection/{connection.pk}/change/").content.decode()
    preview = re.search(r'<div class="preset-preview">.*?</table>', page, re.DOTALL).group(0)
    # as the form's script draws it: the authorization URL only for a grant that sends someone there
    assert ("<th>Authorization URL</th>" in preview) == sends_to_provider
    assert "<th>Token URL</th>" in preview
    # the note is the redirect URI row's: the template's CSS hides both for the grants that use neither
    assert '<span class="redirect-note">Register the redirect URI below' in page
    hidden = re.search(r"body\.grant-app \.form-row\.field-redirect_uri[^{]*\{ display: none; \}", page, re.DOTALL)
    assert "body.grant-app .redirect-note" in hidden.group(0)
    assert "body.grant-device .redirect-note" in hidden.group(0)


def test_a_form_shown_again_keeps_the_rows_of_the_posted_grant(manager_client):
    data = _form("okta", grant_type="client_credentials", client_secret="", placeholder__yourinstance="acme")
    response = manager_client.post(ADD_URL, data)
    assert "client_secret" in response.context["adminform"].form.errors
    assert "grant-app" in _body_classes(response.content.decode())


# 3. A provider type without URLs of its own: the URLs its grant needs are marked required


def test_custom_marks_the_urls_of_its_grant_required(manager_client, make_connection):
    page = manager_client.get(f"{ADD_URL}?provider={_provider('custom').pk}").content.decode()
    for field in ("authorization_url", "token_url"):
        assert "required" in _label_classes(page, field), field
        assert _help_text(page, field).startswith(REQUIRED_HELP), field
    for field in ("revocation_url", "device_authorization_url"):
        assert "required" not in _label_classes(page, field), field
        assert REQUIRED_HELP not in _help_text(page, field), field

    app = make_connection(register=False, grant_type="client_credentials")
    page = manager_client.get(f"/admin/connections/connection/{app.pk}/change/").content.decode()
    assert "required" in _label_classes(page, "token_url")
    assert "required" not in _label_classes(page, "authorization_url")
    assert _help_text(page, "authorization_url") == OPTIONAL_HELP

    device = make_connection(register=False, grant_type="device_code")
    page = manager_client.get(f"/admin/connections/connection/{device.pk}/change/").content.decode()
    assert "required" in _label_classes(page, "device_authorization_url")
    assert "required" not in _label_classes(page, "authorization_url")


def test_a_provider_type_with_urls_says_leave_blank(manager_client):
    page = manager_client.get(f"{ADD_URL}?provider={_provider('salesforce').pk}").content.decode()
    for field in ("authorization_url", "token_url"):
        assert "required" not in _label_classes(page, field), field
        assert _help_text(page, field) == OPTIONAL_HELP, field
    # no provider type chosen yet: nothing is said to be required
    page = manager_client.get(ADD_URL).content.decode()
    assert "required" not in _label_classes(page, "token_url")


def test_custom_refuses_the_blank_urls_it_marked_required(manager_client):
    response = manager_client.post(ADD_URL, _form("custom", grant_type="client_credentials"))
    errors = response.context["adminform"].form.errors
    assert "enter it" in " ".join(errors["token_url"]) and "authorization_url" not in errors, errors
    page = response.content.decode()
    assert "required" in _label_classes(page, "token_url")
    assert "required" not in _label_classes(page, "authorization_url")
    assert not Connection.objects.exists()


# 4. Extra authorization parameters: a query string or JSON, stored as the same dict


@pytest.mark.parametrize(
    ("typed", "stored"),
    [
        ("prompt=consent&access_type=offline", {"prompt": "consent", "access_type": "offline"}),
        ('{"prompt": "consent", "access_type": "offline"}', {"prompt": "consent", "access_type": "offline"}),
        ("  ?hd=acme.example&login_hint=a%40acme.example  ", {"hd": "acme.example", "login_hint": "a@acme.example"}),
        ("prompt=", {"prompt": ""}),
        ('{"max_age": 300, "approval": true}', {"max_age": "300", "approval": "True"}),  # as before: made text
        ("", {}),
    ],
)
def test_extra_parameters_are_taken_as_a_query_string_or_json(manager_client, typed, stored):
    data = _form("salesforce", placeholder__yourinstance="acme", extra_authorization_params=typed)
    response = manager_client.post(ADD_URL, data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    connection = Connection.objects.get(slug="salesforce-prod")
    assert connection.extra_authorization_params == stored


@pytest.mark.parametrize(
    ("typed", "message"),
    [
        ("a=1&a=2", "“a” is given twice"),
        ("=x", "A pair has no name before its “=”: “=x”"),
        ("prompt=consent&oops", "“oops” is not a name=value pair"),
        ("prompt=consent&", "An “&” has no pair after it"),
        ("prompt = consent", "without spaces"),
        ("not a pair", "neither valid JSON nor a query string"),
        ('{"prompt": ', "neither valid JSON nor a query string"),
        ("{'prompt': 'consent'}", "neither valid JSON nor a query string"),
        ('{"prompt": {"nested": 1}}', "JSON object of names and text values"),
        ('{"prompt": null}', "JSON object of names and text values"),
        ('{"prompt": 1.5}', "JSON object of names and text values"),
        ("[1, 2]", "JSON object"),
        ('{"": "x"}', "needs a name"),
        ("a=%00", "NUL"),
        ("&".join(f"p{number}=1" for number in range(101)), "at most 100"),
    ],
)
def test_bad_extra_parameters_are_refused_in_words(manager_client, typed, message):
    data = _form("salesforce", placeholder__yourinstance="acme", extra_authorization_params=typed)
    response = manager_client.post(ADD_URL, data)
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors.get("extra_authorization_params", [])
    assert message in " ".join(errors), errors
    assert not Connection.objects.exists()


def test_the_saved_parameters_are_shown_as_json_and_typed_text_is_shown_back_after_an_error(manager_client):
    data = _form("salesforce", placeholder__yourinstance="acme", extra_authorization_params="prompt=consent&hd=x.io")
    manager_client.post(ADD_URL, data)
    connection = Connection.objects.get(slug="salesforce-prod")
    page = manager_client.get(f"/admin/connections/connection/{connection.pk}/change/").content.decode()
    shown = re.search(r'<textarea name="extra_authorization_params"[^>]*>\s*(.*?)</textarea>', page, re.DOTALL)
    assert json.loads(html.unescape(shown.group(1))) == {"prompt": "consent", "hd": "x.io"}

    # another field's error: what was typed comes back as typed
    data = _form("salesforce", name="Other", client_secret="", extra_authorization_params="prompt=login&hd=y.io")
    page = manager_client.post(ADD_URL, {**data, "placeholder__yourinstance": "acme"}).content.decode()
    assert "prompt=login&amp;hd=y.io</textarea>" in page


def test_the_help_text_says_both_ways_and_is_escaped(manager_client):
    page = manager_client.get(ADD_URL).content.decode()
    help_text = _help_text(page, "extra_authorization_params")
    assert "prompt=consent&amp;access_type=offline" in help_text
    assert "{&quot;prompt&quot;: &quot;consent&quot;}" in help_text


# 5. The provider type page: its help texts' <placeholders> are seen, not read as HTML tags


def test_the_provider_type_page_shows_the_placeholders_of_its_help_texts(admin_client):
    for url in ("/admin/providers/provider/add/", f"/admin/providers/provider/{_provider('okta').pk}/change/"):
        page = admin_client.get(url).content.decode()
        assert "placeholders such as &lt;yourinstance&gt; or &lt;tenant&gt;." in page, url
        assert "only &lt;resource&gt;/.default there" in page, url
        assert "<yourinstance>" not in page and "<resource>" not in page, url
