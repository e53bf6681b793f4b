"""The authorization-code flow against the real loopback server: success, PKCE, and every failure case.

Each failure must give a clear message, write an audit event, and leave the previously stored token intact.
"""

from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from django.contrib.auth.models import Group
from django.test import Client
from django.utils import timezone

from connections.audit import events as audit
from connections.models import AuditEvent, AuthorizationRequest, Connection, OAuthToken
from connections.oauth import client as oauth_client
from providers.models import Provider
from tests.conftest import callback_after_consent, messages_of, shared_token

pytestmark = pytest.mark.django_db


def _assert_token_intact(connection, before, authserver) -> None:
    after = shared_token(connection)
    assert after is not None, "the stored token was lost"
    assert (after.access_token, after.refresh_token, after.generation) == (
        before.access_token,
        before.refresh_token,
        before.generation,
    )
    assert authserver.whoami(after.access_token).status_code == 200


def test_connect_stores_a_working_token_and_returns_to_the_change_page(make_connection, manager_client, authserver):
    # given
    connection = make_connection()
    authserver.set_token_extra({"instance_url": "https://acme.my.example", "id": "https://login.example/id/1"})
    # when
    response = manager_client.get(callback_after_consent(manager_client, connection, authserver))
    # then
    assert response.status_code == 302
    assert response["Location"] == f"/admin/connections/connection/{connection.pk}/change/"
    assert any("is connected" in text and "expires in" in text for text in messages_of(response))
    token = shared_token(connection)
    assert token.refresh_token and token.user is None
    assert token.scope == "read write"
    assert token.extra == {"instance_url": "https://acme.my.example", "id": "https://login.example/id/1"}
    assert authserver.whoami(token.access_token).json()["username"] == "alice"
    assert AuditEvent.objects.filter(connection=connection, action="authorize_callback", outcome="success").exists()


def test_authorization_url_carries_state_scopes_and_extra_params(make_connection, manager_client, authserver):
    connection = make_connection(extra_authorization_params={"prompt": "consent"})
    response = manager_client.post(f"/oauth/connect/{connection.slug}/")
    query = parse_qs(urlsplit(response["Location"]).query)
    assert query["client_id"] == [connection.client_id]
    assert query["scope"] == ["read write"]
    assert query["prompt"] == ["consent"]
    assert len(query["state"][0]) >= 40
    assert "code_challenge" not in query


def test_pkce_sends_an_s256_challenge_and_the_verifier(make_connection, manager_client, authserver):
    connection = make_connection(grant_type="authorization_code_pkce", pkce_required=True)
    response = manager_client.post(f"/oauth/connect/{connection.slug}/")
    query = parse_qs(urlsplit(response["Location"]).query)
    assert query["code_challenge_method"] == ["S256"]
    location = authserver.authorize_with_requests(response["Location"], "alice", "alice-provider-password")
    parts = urlsplit(location)
    manager_client.get(f"{parts.path}?{parts.query}")
    token = shared_token(connection)
    assert token is not None and authserver.whoami(token.access_token).status_code == 200


def test_a_pkce_required_server_refuses_a_connection_configured_without_pkce(
    make_connection, manager_client, authserver
):
    connection = make_connection(grant_type="authorization_code", pkce_required=True)
    response = manager_client.post(f"/oauth/connect/{connection.slug}/")
    location = authserver.authorize_with_requests(response["Location"], "alice", "alice-provider-password")
    parts = urlsplit(location)
    response = manager_client.get(f"{parts.path}?{parts.query}")
    assert any("refused to authorize" in text for text in messages_of(response))
    assert shared_token(connection) is None


def test_user_cancels_at_the_provider(authorized_connection, manager_client, authserver):
    connection, before = authorized_connection, shared_token(authorized_connection)
    response = manager_client.get(callback_after_consent(manager_client, connection, authserver, approve=False))
    assert any("cancelled at the provider (access_denied)" in text for text in messages_of(response))
    _assert_token_intact(connection, before, authserver)
    assert AuditEvent.objects.filter(connection=connection, outcome="failure", detail__contains="access_denied")


def test_provider_returns_another_error(authorized_connection, manager_client, authserver):
    connection, before = authorized_connection, shared_token(authorized_connection)
    callback = callback_after_consent(manager_client, connection, authserver)
    state = parse_qs(urlsplit(callback).query)["state"][0]
    response = manager_client.get(
        "/oauth/callback/", {"state": state, "error": "server_error", "error_description": "Try later"}
    )
    assert any("refused to authorize" in text and "server_error (Try later)" in text for text in messages_of(response))
    _assert_token_intact(connection, before, authserver)


def test_unknown_state(authorized_connection, manager_client, authserver):
    connection, before = authorized_connection, shared_token(authorized_connection)
    response = manager_client.get("/oauth/callback/", {"state": "forged", "code": "whatever"})
    assert any("unknown" in text for text in messages_of(response))
    _assert_token_intact(connection, before, authserver)
    assert AuditEvent.objects.filter(action="authorize_callback", outcome="failure", actor_label="anonymous browser")


def test_missing_state(manager_client):
    response = manager_client.get("/oauth/callback/", {"code": "abc"})
    assert any("no state" in text for text in messages_of(response))


def test_expired_state(authorized_connection, manager_client, authserver):
    connection, before = authorized_connection, shared_token(authorized_connection)
    callback = callback_after_consent(manager_client, connection, authserver)
    AuthorizationRequest.objects.filter(used_at__isnull=True).update(expires_at=timezone.now() - timedelta(seconds=1))
    response = manager_client.get(callback)
    assert any("expired" in text for text in messages_of(response))
    _assert_token_intact(connection, before, authserver)


def test_replayed_state(make_connection, manager_client, authserver):
    connection = make_connection()
    callback = callback_after_consent(manager_client, connection, authserver)
    manager_client.get(callback)
    first = shared_token(connection)
    response = manager_client.get(callback)
    assert any("already used" in text for text in messages_of(response))
    _assert_token_intact(connection, first, authserver)


def test_state_from_another_session(authorized_connection, manager, manager_client, authserver):
    connection, before = authorized_connection, shared_token(authorized_connection)
    callback = callback_after_consent(manager_client, connection, authserver)
    other_browser = Client()
    other_browser.force_login(manager)
    response = other_browser.get(callback)
    assert any("another browser session" in text for text in messages_of(response))
    _assert_token_intact(connection, before, authserver)
    # The flow is not used up by the wrong browser: the right one can still finish it.
    manager_client.get(callback)
    assert shared_token(connection).generation == before.generation + 1


def test_missing_code(authorized_connection, manager_client, authserver):
    connection, before = authorized_connection, shared_token(authorized_connection)
    callback = callback_after_consent(manager_client, connection, authserver)
    state = parse_qs(urlsplit(callback).query)["state"][0]
    response = manager_client.get("/oauth/callback/", {"state": state})
    assert any("no authorization code" in text for text in messages_of(response))
    _assert_token_intact(connection, before, authserver)


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        ("invalid_grant", "invalid_grant"),
        ("status_500", "HTTP 500"),
        ("status_429", "HTTP 429"),
        ("html", "text/html instead of JSON"),
        ("not_json_200", "instead of JSON"),
        ("no_access_token", "no access_token"),
        ("close", "Could not reach the provider"),
    ],
)
def test_token_url_failures_keep_the_stored_token(authorized_connection, manager_client, authserver, fault, expected):
    connection, before = authorized_connection, shared_token(authorized_connection)
    callback = callback_after_consent(manager_client, connection, authserver)
    authserver.set_fault(fault, grant_types=["authorization_code"])
    response = manager_client.get(callback)
    messages = messages_of(response)
    assert any(expected in text and "Nothing stored was changed" in text for text in messages), messages
    _assert_token_intact(connection, before, authserver)
    assert AuditEvent.objects.filter(connection=connection, action="authorize_callback", outcome="failure").exists()


def test_token_url_timeout(authorized_connection, manager_client, authserver, settings):
    connection, before = authorized_connection, shared_token(authorized_connection)
    settings.OUTBOUND_TIMEOUT = 1
    callback = callback_after_consent(manager_client, connection, authserver)
    authserver.set_fault("timeout", delay=3, grant_types=["authorization_code"])
    response = manager_client.get(callback)
    assert any("did not answer" in text and "within 1 seconds" in text for text in messages_of(response))
    _assert_token_intact(connection, before, authserver)


def test_wrong_client_secret_is_invalid_client(authorized_connection, manager_client, authserver):
    connection, before = authorized_connection, shared_token(authorized_connection)
    callback = callback_after_consent(manager_client, connection, authserver)
    connection.client_secret = "not-the-registered-secret"
    connection.save()
    response = manager_client.get(callback)
    assert any("invalid_client" in text for text in messages_of(response))
    _assert_token_intact(connection, before, authserver)


def test_http_provider_url_is_refused_where_https_is_required(
    authorized_connection, manager_client, authserver, settings
):
    connection, before = authorized_connection, shared_token(authorized_connection)
    settings.OUTBOUND_HTTP_ALLOWED_HOSTS = []
    response = manager_client.post(f"/oauth/connect/{connection.slug}/")
    assert response.status_code == 302 and not response["Location"].startswith(authserver.url)
    assert any("must use https" in text for text in messages_of(response))
    _assert_token_intact(connection, before, authserver)


def test_only_managers_authorize_shared_connections(make_connection, make_user, authserver):
    connection = make_connection()
    viewer = make_user(perms=("view_connections",), staff=True)
    client = Client()
    client.force_login(viewer)
    response = client.post(f"/oauth/connect/{connection.slug}/")
    assert response.status_code == 404
    assert not AuthorizationRequest.objects.exists()


def test_connect_requires_post_and_login(make_connection):
    connection = make_connection(register=False)
    assert Client().get(f"/oauth/connect/{connection.slug}/").status_code == 405
    response = Client().post(f"/oauth/connect/{connection.slug}/")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


# --- what a review found (the trust issue) ------------------------------------------------------------------------


def _invited_user_client(make_user, connection) -> tuple[Client, object]:
    role = Group.objects.create(name="Sales bots")
    connection.roles.add(role)
    user = make_user("bob", roles=(role,))
    client = Client()
    client.force_login(user)
    return client, role


@pytest.mark.parametrize("change", ["made_shared", "disabled", "role_removed", "made_client_credentials"])
def test_the_callback_checks_again_that_the_flow_may_still_complete(make_connection, make_user, authserver, change):
    # given a user who started authorizing their own token of a user-specific connection
    connection = make_connection(token_type="user_specific")
    client, role = _invited_user_client(make_user, connection)
    callback = callback_after_consent(client, connection, authserver)
    # when, before the provider sends them back, an administrator changes the connection
    if change == "made_shared":
        connection.token_type = "shared"
    elif change == "disabled":
        connection.is_enabled = False
    elif change == "made_client_credentials":
        connection.grant_type = "client_credentials"
    else:
        connection.roles.remove(role)
    connection.save()
    response = client.get(callback)
    # then nothing is stored (above all, not a shared token every bot would get), and the user is told why
    assert not OAuthToken.objects.filter(connection=connection).exists()
    assert len(messages_of(response)) == 1 and "changed" in messages_of(response)[0], messages_of(response)
    assert authserver.stats()["token_requests"]["authorization_code"] == 0
    assert AuditEvent.objects.filter(action="authorize_callback", outcome="failure").exists()


def test_an_iss_other_than_the_connections_issuer_is_refused(make_connection, manager_client, authserver):
    # RFC 9207: with several providers behind one redirect URI, the answer says which one it comes from.
    connection = make_connection(issuer=authserver.url)
    callback = callback_after_consent(manager_client, connection, authserver)
    response = manager_client.get(f"{callback}&iss=https://evil.example")
    assert any("evil.example" in text and "issuer" in text for text in messages_of(response)), messages_of(response)
    assert shared_token(connection) is None
    assert authserver.stats()["token_requests"]["authorization_code"] == 0
    # and the issuer's own answer goes through
    callback = callback_after_consent(manager_client, connection, authserver)
    manager_client.get(f"{callback}&iss={authserver.url}")
    assert shared_token(connection) is not None


def test_unknown_states_at_the_callback_are_audited_in_aggregate(settings):
    anonymous = Client()
    for n in range(30):
        response = anonymous.get("/oauth/callback/", {"state": f"forged-{n}", "code": "whatever"})
        assert response.status_code == 302
    assert AuditEvent.objects.filter(action="authorize_callback").count() == settings.AUTH_FAILURES_AUDITED_ONE_BY_ONE
    audit.audit_failed_authentications_summarize(now=timezone.now() + timedelta(seconds=61))
    summary = AuditEvent.objects.get(action="authentication_failures")
    assert "30 failed" in summary.detail and "callback" in summary.detail, summary.detail


@pytest.mark.parametrize("kind", ["disabled", "client_credentials", "not_mine", "missing"])
def test_connect_answers_404_alike_for_a_missing_connection_and_one_the_user_may_not_authorize(
    make_connection, make_user, kind
):
    # An outsider learns nothing: not whether it exists, nor whether it is disabled or uses client credentials.
    slugs = {
        "disabled": make_connection(register=False, is_enabled=False).slug,
        "client_credentials": make_connection(register=False, grant_type="client_credentials").slug,
        "not_mine": make_connection(register=False).slug,
        "missing": "no-such-connection",
    }
    client = Client()
    client.force_login(make_user("outsider"))
    response = client.post(f"/oauth/connect/{slugs[kind]}/")
    assert response.status_code == 404 and not messages_of(response)


@pytest.mark.parametrize("change", ["disabled", "token type changed"])
def test_a_change_made_while_the_code_is_exchanged_stores_nothing_and_revokes_what_came(
    change, make_connection, manager_client, authserver, monkeypatch
):
    # given a Connect under way, and a change to the connection that lands while the provider exchanges the code
    # (at a provider whose revocation ends a token alone: what nobody will hold is revoked there)
    connection = make_connection()
    Provider.objects.filter(pk=connection.provider_id).update(revoke_replaced_grant=True)
    callback = callback_after_consent(manager_client, connection, authserver)
    exchange = oauth_client.exchange_code
    issued = []

    def exchange_then_change(*args, **kwargs):
        answer = exchange(*args, **kwargs)
        issued.append(answer)
        fields = {"is_enabled": False} if change == "disabled" else {"token_type": "user_specific"}
        Connection.objects.filter(pk=connection.pk).update(**fields)
        return answer

    monkeypatch.setattr(oauth_client, "exchange_code", exchange_then_change)
    # when the callback completes
    response = manager_client.get(callback, follow=True)
    # then nothing is stored, the person is told why, and the tokens the provider issued are revoked there
    assert not OAuthToken.objects.filter(connection=connection).exists()
    assert any("was changed while you were authorizing it" in text for text in messages_of(response))
    assert authserver.whoami(issued[0].access_token).status_code == 401
