"""A connection from its issuer only: the URLs come from the issuer's discovery document (OpenID Connect
Discovery 1.0, RFC 8414), read from the loopback authorization server before the save, checked, and stored."""

from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from connections.engine.store import connection_client_config
from connections.errors import ProviderError
from connections.models import Connection
from connections.oauth import client as oauth_client
from providers.models import Provider
from tests.conftest import authorize_and_store_token, messages_of, refresh_shared_token
from tests.support.authserver import AuthServer
from tests.support.waiting import wait_for

pytestmark = pytest.mark.django_db

CLIENT_ID, CLIENT_SECRET = "discovered-client", "discovered-client-s3cr3t"


@pytest.fixture
def registered(authserver: AuthServer, settings) -> AuthServer:
    authserver.create_client(CLIENT_ID, CLIENT_SECRET, [settings.OAUTH_REDIRECT_URI])
    return authserver


def issuer_only_form(issuer: str) -> dict[str, str]:
    """The admin's add form for a Custom connection that gives its issuer and no URL."""
    return {
        "name": "Discovered",
        "slug": "",
        "provider": str(Provider.objects.get(slug="custom").pk),
        "grant_type": "authorization_code",
        "token_type": "shared",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "authorization_url": "",
        "token_url": "",
        "revocation_url": "",
        "issuer": issuer,
        "scopes": "read,write",
        "extra_authorization_params": "{}",
        "default_token_lifetime": "",
        "is_enabled": "on",
        "tokens-TOTAL_FORMS": "0",
        "tokens-INITIAL_FORMS": "0",
        "tokens-MIN_NUM_FORMS": "0",
        "tokens-MAX_NUM_FORMS": "1000",
    }


def connects_and_refreshes(connection: Connection, manager_client, server: AuthServer) -> None:
    first = authorize_and_store_token(manager_client, connection, server)
    refreshed = refresh_shared_token(connection)
    assert refreshed.access_token != first.access_token
    assert server.whoami(refreshed.access_token).status_code == 200
    assert server.stats()["token_requests"]["refresh_token"] == 1


def test_the_admin_fills_the_urls_from_the_issuer_and_the_connection_works(manager_client, registered):
    response = manager_client.post("/admin/connections/connection/add/", issuer_only_form(registered.issuer))
    assert response.status_code == 302, messages_of(response)
    connection = Connection.objects.get(slug="discovered")
    assert (connection.authorization_url, connection.token_url, connection.revocation_url) == (
        registered.authorize_url,
        registered.token_url,
        registered.revoke_url,
    )
    assert f"Token URL: {registered.token_url}" in " ".join(messages_of(response))
    connects_and_refreshes(connection, manager_client, registered)


def test_without_an_openid_configuration_the_rfc_8414_metadata_is_read(manager_client, registered):
    registered.set_discovery(openid_missing=True)
    response = manager_client.post("/admin/connections/connection/add/", issuer_only_form(registered.issuer))
    assert response.status_code == 302, messages_of(response)
    assert Connection.objects.get(slug="discovered").token_url == registered.token_url


def test_urls_given_win_over_the_document(manager_client, registered):
    form = {**issuer_only_form(registered.issuer), "token_url": registered.token_url + "?given"}
    manager_client.post("/admin/connections/connection/add/", form)
    connection = Connection.objects.get(slug="discovered")
    assert connection.token_url == registered.token_url + "?given"
    assert connection.authorization_url == registered.authorize_url  # the blank one was discovered


REFUSALS = {
    "another issuer named": ({"issuer": "https://idp.example.com"}, "names the issuer 'https://idp.example.com'"),
    "a token URL over plain http": ({"token_endpoint": "http://idp.example.com/token"}, "token_endpoint is refused"),
    "no token URL": ({"token_endpoint": None}, "gives no token_endpoint"),
    "no document": ({"missing": True}, "publishes no discovery document"),
}


@pytest.mark.parametrize("fault", REFUSALS)
def test_a_document_that_cannot_be_trusted_is_refused_clearly_and_nothing_is_saved(fault, manager_client, registered):
    fields, reason = REFUSALS[fault]
    registered.set_discovery(**fields)
    response = manager_client.post("/admin/connections/connection/add/", issuer_only_form(registered.issuer))
    assert response.status_code == 200  # the form again, with what is missing
    said = " ".join(messages_of(response))
    assert "The URLs could not be discovered from the issuer" in said and reason in said, said
    assert not Connection.objects.exists()


def test_an_issuer_on_a_host_the_outbound_policy_refuses_is_not_fetched(manager_client, registered, settings):
    # given the loopback server's issuer, over plain http to a host the outbound policy does not allow it for
    settings.OUTBOUND_HTTP_ALLOWED_HOSTS, settings.OUTBOUND_ALLOWED_PRIVATE = [], []
    document = "/o/.well-known/openid-configuration"
    fetched_before = registered.requests_logged("GET", document)
    # when an administrator saves a connection that gives only that issuer
    response = manager_client.post("/admin/connections/connection/add/", issuer_only_form(registered.issuer))
    # then the form says why, and nothing is saved
    assert response.status_code == 200 and not Connection.objects.exists()
    said = " ".join(messages_of(response))
    assert "Refused to call http://127.0.0.1: provider URLs must use https" in said, said
    # and the document was not fetched: once the host is allowed, the one fetch the server logs is the allowed one
    settings.OUTBOUND_HTTP_ALLOWED_HOSTS = ["127.0.0.1"]
    assert discover(manager_client, registered.issuer).status_code == 200
    wait_for(lambda: registered.requests_logged("GET", document) > fetched_before, 30, "the allowed fetch logged")
    assert registered.requests_logged("GET", document) == fetched_before + 1


def test_a_viewer_cannot_make_the_server_fetch_a_document(make_user, registered):
    from django.test import Client

    viewer = make_user("viewer", perms=("view_connections",), staff=True)
    client = Client()
    client.force_login(viewer)
    response = client.post("/admin/connections/connection/add/", issuer_only_form(registered.issuer))
    assert response.status_code == 403 and messages_of(response) == []


CONFIG = """
connections:
  - name: Discovered
    provider: custom
    issuer: {issuer}
    grant_type: authorization_code
    client_id: {client_id}
    client_secret_env: DISCOVERED_SECRET
    scopes: [read, write]
"""


def test_apply_config_accepts_an_issuer_without_urls_and_export_writes_them(
    tmp_path: Path, monkeypatch, manager_client, registered
):
    monkeypatch.setenv("DISCOVERED_SECRET", CLIENT_SECRET)
    path = tmp_path / "controlroom.yaml"
    path.write_text(CONFIG.format(issuer=registered.issuer, client_id=CLIENT_ID))
    call_command("apply_config", str(path), stdout=StringIO(), stderr=StringIO())
    connection = Connection.objects.get(slug="discovered")
    assert (connection.issuer, connection.token_url) == (registered.issuer, registered.token_url)
    connects_and_refreshes(connection, manager_client, registered)
    # applied again: nothing changes; exported: the issuer and the URLs it gave
    out = StringIO()
    call_command("apply_config", str(path), stdout=out, stderr=StringIO())
    assert "Nothing to change." in out.getvalue()
    exported = StringIO()
    call_command("export_config", stdout=exported)
    assert f"issuer: {registered.issuer}" in exported.getvalue()
    assert f"token_url: {registered.token_url}" in exported.getvalue()


def test_apply_config_names_a_discovery_failure_and_writes_nothing(tmp_path: Path, monkeypatch, registered):
    monkeypatch.setenv("DISCOVERED_SECRET", CLIENT_SECRET)
    registered.set_discovery(missing=True)
    path = tmp_path / "controlroom.yaml"
    path.write_text(CONFIG.format(issuer=registered.issuer, client_id=CLIENT_ID))
    errors = StringIO()
    with pytest.raises(CommandError, match="nothing was changed"):
        call_command("apply_config", str(path), stdout=StringIO(), stderr=errors)
    assert "connections[0] (Discovered): issuer: " in errors.getvalue()
    assert "publishes no discovery document" in errors.getvalue()
    assert not Connection.objects.exists()


def test_a_provider_accepting_only_client_secret_post_gets_it_and_the_connection_works(manager_client, registered):
    registered.set_discovery(token_endpoint_auth_methods_supported=["client_secret_post"])
    registered.set_token_options(client_auth="post")
    response = manager_client.post("/admin/connections/connection/add/", issuer_only_form(registered.issuer))
    assert response.status_code == 302, messages_of(response)
    assert "Client authentication: client_secret_post" in " ".join(messages_of(response))
    connection = Connection.objects.get(slug="discovered")
    assert connection.client_auth_method == "body"  # Custom's own is HTTP Basic, which this server refuses
    connects_and_refreshes(connection, manager_client, registered)
    # the control: the same connection with the provider type's HTTP Basic is refused by this server
    registered.set_token_options(client_auth="basic")
    with pytest.raises(ProviderError, match=r"invalid_client|client_secret_basic only"):
        oauth_client.refresh(connection_client_config(connection), refresh_token=connection.tokens.get().refresh_token)


@pytest.mark.parametrize(
    "document, reason",
    [
        ({"code_challenge_methods_supported": ["plain"]}, "does not offer PKCE with S256"),
        ({"token_endpoint_auth_methods_supported": ["tls_client_auth"]}, "accepts only tls_client_auth"),
    ],
)
def test_what_control_room_cannot_do_with_the_issuer_is_said_before_saving(
    document, reason, manager_client, registered
):
    registered.set_discovery(**document)
    form = {**issuer_only_form(registered.issuer), "grant_type": "authorization_code_pkce"}
    response = manager_client.post("/admin/connections/connection/add/", form)
    assert response.status_code == 200 and not Connection.objects.exists()
    assert reason in " ".join(messages_of(response))


def discover(client, issuer: str):
    custom = Provider.objects.get(slug="custom")
    return client.post("/admin/connections/connection/discover/", {"issuer": issuer, "provider": custom.pk})


def test_the_discover_button_answers_what_the_document_gives_and_saves_nothing(manager_client, registered):
    registered.set_discovery(token_endpoint_auth_methods_supported=["client_secret_post"])
    answer = discover(manager_client, registered.issuer).json()
    assert answer["urls"] == {
        "authorization_url": registered.authorize_url,
        "token_url": registered.token_url,
        "revocation_url": registered.revoke_url,
    }
    assert answer["client_auth_methods"] == ["client_secret_post"] and answer["client_auth_method"] == "body"
    assert "S256" in answer["pkce_methods"]  # django-oauth-toolkit publishes its PKCE methods
    assert f"Token URL: {registered.token_url}" in answer["summary"]
    assert not Connection.objects.exists()


def test_the_discover_button_says_why_nothing_was_found(manager_client, registered):
    registered.set_discovery(missing=True)
    answer = discover(manager_client, registered.issuer)
    assert answer.status_code == 400 and "publishes no discovery document" in answer.json()["detail"]
    refused = discover(manager_client, "http://idp.example.com").json()["detail"]
    assert refused.startswith("Nothing discovered: Refused to call http://idp.example.com: provider URLs must"), refused
    assert "Enter the issuer first" in discover(manager_client, " ").json()["detail"]


def test_only_those_who_may_edit_connections_can_press_discover(make_user, manager_client, registered):
    from django.test import Client

    viewer = Client()
    viewer.force_login(make_user("viewer", perms=("view_connections",), staff=True))
    assert discover(viewer, registered.issuer).status_code == 403
    assert manager_client.get("/admin/connections/connection/discover/").status_code == 405


def test_apply_config_takes_and_export_writes_the_client_authentication(tmp_path: Path, monkeypatch, registered):
    monkeypatch.setenv("DISCOVERED_SECRET", CLIENT_SECRET)
    path = tmp_path / "controlroom.yaml"
    config = CONFIG.format(issuer=registered.issuer, client_id=CLIENT_ID)
    path.write_text(config + "    client_auth_method: client_secret_post\n")
    call_command("apply_config", str(path), stdout=StringIO(), stderr=StringIO())
    assert Connection.objects.get(slug="discovered").client_auth_method == "body"
    exported = StringIO()
    call_command("export_config", stdout=exported)
    assert "client_auth_method: client_secret_post" in exported.getvalue()
    path.write_text(config + "    client_auth_method: secret_in_the_url\n")
    errors = StringIO()
    with pytest.raises(CommandError):
        call_command("apply_config", str(path), stdout=StringIO(), stderr=errors)
    assert "client_auth_method must be one of client_secret_basic, client_secret_post" in errors.getvalue()
