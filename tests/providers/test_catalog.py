import os
import re
from pathlib import Path

import pytest
import yaml
from django.core.exceptions import ValidationError

from providers.models import Provider
from providers.services import CATALOG_PATH, provider_catalog_sync

pytestmark = pytest.mark.django_db

# The seed's provider types and those the catalog promises (ISSUE 14's list, less what is not OAuth 2.0 or
# cannot be confirmed: see the catalog's header).
PROMISED_SLUGS = {
    *("genesys", "google-apigee", "google-workspace", "jira", "microsoft-entra", "microsoft-sharepoint", "okta"),
    *("salesforce", "servicenow", "custom", "github", "gitlab", "bitbucket", "slack", "microsoft-dynamics-365"),
    *("google", "hubspot", "zoom", "box", "dropbox", "zendesk", "intercom", "docusign", "docusign-demo"),
    *("adobe-acrobat-sign", "xero", "quickbooks-online", "sage-accounting", "netsuite", "sap-concur", "coupa"),
    *("shopify", "stripe-connect", "asana", "notion", "linear", "airtable", "smartsheet", "monday", "miro"),
    *("figma", "confluence", "webex", "calendly", "linkedin", "x", "pipedrive", "zoho", "keycloak", "auth0"),
    *("pingone", "onelogin", "amazon-cognito"),
}


def _rows() -> list[dict]:
    return list(Provider.objects.order_by("slug").values())


def test_migrate_loads_the_catalogs_provider_types():
    slugs = set(Provider.objects.values_list("slug", flat=True))
    assert PROMISED_SLUGS <= slugs and len(slugs) >= 50, PROMISED_SLUGS - slugs
    assert Provider.objects.filter(is_certified=True).count() == len(slugs)


def test_loading_the_catalog_twice_changes_nothing():
    # given the catalog loaded once (by migrate)
    before = _rows()
    # when
    result = provider_catalog_sync()
    # then
    assert result.created == [] and result.updated == []
    assert sorted(result.unchanged) == sorted(Provider.objects.values_list("slug", flat=True))
    assert _rows() == before


def test_an_edited_preset_updates_its_row_only(tmp_path: Path):
    entries = yaml.safe_load(CATALOG_PATH.read_text())
    okta = next(entry for entry in entries if entry["slug"] == "okta")
    okta["default_scopes"] = "openid,offline_access"
    okta["default_token_lifetime"] = 900
    edited = tmp_path / "catalog.yaml"
    edited.write_text(yaml.safe_dump(entries))
    salesforce_before = Provider.objects.filter(slug="salesforce").values().get()

    result = provider_catalog_sync(path=edited)

    assert result.updated == ["okta"]
    okta_row = Provider.objects.get(slug="okta")
    assert (okta_row.default_scopes, okta_row.default_token_lifetime) == ("openid,offline_access", 900)
    assert Provider.objects.filter(slug="salesforce").values().get() == salesforce_before


def test_a_custom_provider_created_in_the_admin_is_left_alone(tmp_path: Path):
    custom = Provider.objects.create(
        slug="acme-idp", name="Acme IdP", token_url="https://idp.acme.test/token", grant_types=["client_credentials"]
    )
    entries = yaml.safe_load(CATALOG_PATH.read_text())
    # Even a catalog that later adopts the same slug does not take the row over.
    entries.append(
        {
            "slug": "acme-idp",
            "name": "Acme (catalog)",
            "token_url": "https://x",
            "grant_types": [],
            "docs_url": "https://x",
        }
    )
    adopted = tmp_path / "catalog.yaml"
    adopted.write_text(yaml.safe_dump(entries))

    result = provider_catalog_sync(path=adopted)

    assert result.skipped == ["acme-idp"]
    custom.refresh_from_db()
    assert (custom.name, custom.token_url, custom.is_certified) == ("Acme IdP", "https://idp.acme.test/token", False)


def test_seed_urls_and_placeholders():
    salesforce = Provider.objects.get(slug="salesforce")
    assert salesforce.authorization_url == "https://<yourinstance>.salesforce.com/services/oauth2/authorize"
    assert salesforce.token_url == "https://<yourinstance>.salesforce.com/services/oauth2/token"
    assert salesforce.placeholders == ["yourinstance"]
    assert Provider.objects.get(slug="microsoft-entra").placeholders == ["tenant"]
    assert Provider.objects.get(slug="microsoft-sharepoint").placeholders == ["tenant-id"]
    assert Provider.objects.get(slug="servicenow").token_url == "https://<yourinstance>.service-now.com/oauth_token.do"
    assert Provider.objects.get(slug="genesys").token_url == "https://login.<yourinstance>.pure.cloud/oauth/token"
    google = Provider.objects.get(slug="google-workspace")
    assert google.extra_authorization_params == {"prompt": "consent", "access_type": "offline"}
    assert Provider.objects.get(slug="custom").placeholders == []


@pytest.mark.parametrize(
    ("mutation", "message"),
    [
        (
            lambda entries: entries.append({"slug": "okta", "name": "x", "token_url": "", "grant_types": []}),
            "unique slug",
        ),
        (lambda entries: entries[0].update(grant_types=["implicit"]), "unknown grant type"),
        (lambda entries: entries[0].update(colour="red"), "unknown field"),
        (lambda entries: entries[0].update(client_auth_method="jwt"), "one of basic, body, private_key_jwt"),
    ],
)
def test_a_broken_catalog_names_the_preset_and_changes_nothing(tmp_path: Path, mutation, message):
    entries = yaml.safe_load(CATALOG_PATH.read_text())
    mutation(entries)
    broken = tmp_path / "catalog.yaml"
    broken.write_text(yaml.safe_dump(entries))
    before = _rows()

    with pytest.raises(ValidationError, match=message):
        provider_catalog_sync(path=broken)

    assert _rows() == before


@pytest.mark.parametrize(
    ("grant_type", "scopes", "sent"),
    [
        # Microsoft accepts only <resource>/.default with client credentials (no offline_access, no openid).
        ("client_credentials", "", ["https://graph.microsoft.com/.default"]),
        ("authorization_code", "", ["offline_access", "openid", "https://graph.microsoft.com/.default"]),
        ("client_credentials", "https://vault.azure.net/.default", ["https://vault.azure.net/.default"]),
    ],
)
def test_default_scopes_can_differ_by_grant(grant_type, scopes, sent):
    from connections.models import Connection

    entra = Provider.objects.get(slug="microsoft-entra")
    connection = Connection(provider=entra, grant_type=grant_type, scopes=scopes)
    assert connection.scope_list == sent


@pytest.mark.parametrize(
    ("client_credentials_scopes", "sent"),
    [(None, ["openid", "offline_access"]), ("", []), ("api", ["api"])],
)
def test_client_credentials_scopes_none_means_the_default_scopes_and_blank_means_none(client_credentials_scopes, sent):
    from connections.models import Connection

    provider = Provider(default_scopes="openid offline_access", client_credentials_scopes=client_credentials_scopes)
    assert Connection(provider=provider, grant_type="client_credentials", scopes="").scope_list == sent
    # the other grants keep the default scopes
    assert Connection(provider=provider, grant_type="authorization_code", scopes="").scope_list == [
        "openid",
        "offline_access",
    ]


def test_placeholders_are_filled_in_default_scopes_too():
    from connections.models import Connection

    dynamics = Provider.objects.get(slug="microsoft-dynamics-365")
    assert dynamics.placeholders == ["tenant", "environment-host"]
    values = {"tenant": "acme.example", "environment-host": "acme.crm4.dynamics.com"}
    connection = Connection(provider=dynamics, placeholders=values, grant_type="client_credentials", scopes="")
    assert connection.scope_list == ["https://acme.crm4.dynamics.com/.default"]
    connection.grant_type = "authorization_code"
    assert connection.scope_list == ["https://acme.crm4.dynamics.com/.default", "offline_access"]


def test_a_client_credentials_token_is_asked_for_with_the_grants_default_scopes(make_connection, authserver):
    from connections.engine.refresh import app_token_obtain

    provider = Provider.objects.create(
        slug="app-only", name="App only", default_scopes="read,write,offline_access", client_credentials_scopes="read",
        grant_types=["authorization_code", "client_credentials"],
    )  # fmt: skip
    connection = make_connection(grant_type="client_credentials", provider=provider, scopes="")
    token = app_token_obtain(connection=connection)
    assert token.scope == "read"  # the loopback server grants what was asked for


MISTAKES = {
    "a field name with a typo": ({"defualt_scopes": "api"}, "unknown field(s) defualt_scopes"),
    "a plain-http token URL": ({"token_url": "http://<yourinstance>.okta.com/oauth2/v1/token"}, "https URL"),
    "a placeholder nobody explains": ({"description": "Okta."}, "<yourinstance> appears in a URL"),
    "a scope placeholder nobody explains": ({"default_scopes": "https://<resource>/.default"}, "<resource> appears"),
    "a plain-http refresh URL": ({"refresh_url": "http://<yourinstance>.okta.com/refresh"}, "refresh_url must be"),
    "an unknown request format": ({"token_request_format": "xml"}, "token_request_format must be form or json"),
    "an unknown category": ({"category": "games"}, "category must be one of identity"),
    "no documentation link": ({"docs_url": ""}, "docs_url"),
    "an unknown grant type": ({"grant_types": ["password"]}, "unknown grant type(s) password"),
    "scopes for a grant it lacks": (
        {"grant_types": ["authorization_code"], "client_credentials_scopes": "x"},
        "client_credentials_scopes",
    ),
    "replaced grants revoked with nowhere to revoke them": (
        {"revocation_url": ""},
        "revoke_replaced_grant is true, but there is no revocation_url",
    ),
    "the token in a header HTTP owns": ({"api_token_header": "Content-Length"}, "api_token_header must be a header"),
    "a token prefix of two words": ({"api_token_prefix": "Bearer token"}, "api_token_prefix must be one word"),
    "a replaced-grant rule that is not true or false": (
        {"revoke_replaced_grant": "yes"},
        "revoke_replaced_grant must be true or false",
    ),
}


@pytest.mark.parametrize("mistake", MISTAKES)
def test_a_mistake_in_the_catalog_is_refused_naming_the_preset(mistake, tmp_path: Path):
    change, said = MISTAKES[mistake]
    entries = yaml.safe_load(CATALOG_PATH.read_text())
    okta = next(entry for entry in entries if entry["slug"] == "okta")
    okta.update(change)
    edited = tmp_path / "catalog.yaml"
    edited.write_text(yaml.safe_dump(entries))
    with pytest.raises(ValidationError, match=r"preset \d+ \(okta\)") as refused:
        provider_catalog_sync(path=edited)
    assert said in str(refused.value)


def _preset_texts() -> dict[str, str]:
    """Each preset's lines in the catalog file, comments included, by slug."""
    blocks = re.split(r"^(?=- slug: )", CATALOG_PATH.read_text(), flags=re.MULTILINE)[1:]
    return {block.split("\n", 1)[0].removeprefix("- slug: ").strip(): block for block in blocks}


def test_every_preset_says_whether_a_replaced_grant_is_revoked_citing_its_documentation_where_it_is():
    entries = yaml.safe_load(CATALOG_PATH.read_text())
    # a decision for every preset, in the file itself (not the loader's default)
    assert [entry["slug"] for entry in entries if not isinstance(entry.get("revoke_replaced_grant"), bool)] == []
    revoking = {entry["slug"] for entry in entries if entry["revoke_replaced_grant"]}
    # true only with somewhere to revoke at, and with the provider's own page and words cited just above it
    assert [entry["slug"] for entry in entries if entry["slug"] in revoking and not entry.get("revocation_url")] == []
    for slug, text in _preset_texts().items():
        cited = re.search(r"((?:^  #.*\n)+)  revoke_replaced_grant: true$", text, flags=re.MULTILINE)
        assert (slug in revoking) == (cited is not None), slug
        assert cited is None or (re.search(r"https://\S+", cited.group(1)) and '"' in cited.group(1)), slug
    # the reported case (Google ends a person's whole grant whichever token is revoked) and Custom revoke nothing
    assert not {"google", "google-workspace", "google-apigee", "google-service-account", "custom"} & revoking
    # and the rows the catalog loads say the same
    rows = Provider.objects.filter(is_certified=True, revoke_replaced_grant=True)
    assert set(rows.values_list("slug", flat=True)) == revoking and revoking


PROVIDERS_PAGE = Path(__file__).resolve().parents[2] / "docs" / "providers.md"
TABLE = re.compile(r"(<!-- provider-types:[^\n]*-->\n)(.*?)(<!-- /provider-types -->)", re.DOTALL)


def test_the_provider_pages_table_of_provider_types_is_the_catalogs():
    from providers.services import provider_catalog_table

    text = PROVIDERS_PAGE.read_text()
    match = TABLE.search(text)
    assert match, "docs/providers.md lost its provider-types markers"
    table = provider_catalog_table()
    if os.environ.get("UPDATE_README"):
        PROVIDERS_PAGE.write_text(text[: match.start(2)] + table + text[match.end(2) :])
    else:
        assert match.group(2) == table, (
            "docs/providers.md's table of provider types is stale: UPDATE_README=1 make test"
        )
