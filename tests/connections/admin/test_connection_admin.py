"""The connection admin: the form, the write-only secret, the buttons, permissions, and encryption at rest.

A refusal is proven by what it leaves behind, not only by its status code: the rows of connections, tokens and
bot keys, the audit log and the provider's counters are compared before and after, and the same request from an
administrator is then shown to change them (so the refusal, not a malformed request, is what kept them).
"""

import re
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from django.db import connection as db
from django.db import connections as db_connections
from django.test import Client
from django.utils import timezone

from connections.models import AuditEvent, Connection, OAuthToken
from providers.models import Provider
from tests.conftest import authorize_and_store_token, get_token, messages_of, shared_token, stored_rows
from tests.support.waiting import wait_for

pytestmark = pytest.mark.django_db
# Save and test calls the provider once the admin's transaction has committed: these tests commit theirs.
AFTER_COMMIT = pytest.mark.django_db(transaction=True)


def _form(provider: str, **overrides: str) -> dict[str, str]:
    data = {
        "name": "Salesforce prod",
        "slug": "",
        "description": "Finance org",
        "provider": str(Provider.objects.get(slug=provider).pk),
        "grant_type": "authorization_code",
        "token_type": "shared",
        "client_id": "3MVG9-client",
        "client_secret": "sf-secret-value-123",
        "authorization_url": "",
        "token_url": "",
        "revocation_url": "",
        "scopes": "api, refresh_token offline_access",
        "extra_authorization_params": "{}",
        "default_token_lifetime": "",
        "is_enabled": "on",
        "tokens-TOTAL_FORMS": "0",
        "tokens-INITIAL_FORMS": "0",
        "tokens-MIN_NUM_FORMS": "0",
        "tokens-MAX_NUM_FORMS": "1000",
    }
    data.update(overrides)
    return data


def _edit_form(connection: Connection, **overrides: str) -> dict[str, str]:
    """The change form as the admin would post it for a connection made by make_connection."""
    values = {
        "name": connection.name,
        "slug": connection.slug,
        "grant_type": connection.grant_type,
        "client_id": connection.client_id,
        "client_secret": "",
        "authorization_url": connection.authorization_url,
        "token_url": connection.token_url,
        "revocation_url": connection.revocation_url,
        "scopes": connection.scopes,
    }
    return _form("custom", **{**values, **overrides})


def test_add_fills_placeholders_into_the_preset_urls(manager_client):
    response = manager_client.post(
        "/admin/connections/connection/add/", _form("salesforce", placeholder__yourinstance="acme")
    )
    assert response.status_code == 302, response.context["adminform"].form.errors
    connection = Connection.objects.get(slug="salesforce-prod")
    assert connection.effective_authorization_url == "https://acme.salesforce.com/services/oauth2/authorize"
    assert connection.effective_token_url == "https://acme.salesforce.com/services/oauth2/token"
    assert connection.effective_revocation_url == "https://acme.salesforce.com/services/oauth2/revoke"
    assert connection.scopes == "api,refresh_token,offline_access"
    assert connection.client_secret == "sf-secret-value-123"
    event = AuditEvent.objects.get(action="connection_create")
    assert "sf-secret-value-123" not in event.detail


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({}, "placeholder__yourinstance", "Salesforce needs <yourinstance>"),
        ({"placeholder__yourinstance": "evil.example/x"}, "placeholder__yourinstance", "letters, digits"),
        ({"placeholder__yourinstance": "acme", "client_secret": ""}, "client_secret", "Enter the client secret"),
        (
            {"placeholder__yourinstance": "acme", "token_url": "http://acme.example/token"},
            "token_url",
            "must use https",
        ),
        (
            {"placeholder__yourinstance": "acme", "extra_authorization_params": "[1, 2]"},
            "extra_authorization_params",
            "JSON object",
        ),
    ],
)
def test_bad_input_gets_a_clear_error_and_saves_nothing(manager_client, overrides, field, message):
    response = manager_client.post("/admin/connections/connection/add/", _form("salesforce", **overrides))
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert message in " ".join(errors.get(field, [])), errors
    assert not Connection.objects.exists()


def test_grant_type_must_be_supported_by_the_provider(manager_client):
    response = manager_client.post("/admin/connections/connection/add/", _form("jira", grant_type="client_credentials"))
    assert "Jira supports: Authorization Code" in " ".join(response.context["adminform"].form.errors["grant_type"])


def test_custom_provider_asks_for_the_urls(manager_client):
    response = manager_client.post("/admin/connections/connection/add/", _form("custom"))
    errors = response.context["adminform"].form.errors
    assert "enter it" in " ".join(errors["authorization_url"]) and "enter it" in " ".join(errors["token_url"])


def test_client_credentials_cannot_be_user_specific(manager_client):
    response = manager_client.post(
        "/admin/connections/connection/add/",
        _form("okta", placeholder__yourinstance="acme", grant_type="client_credentials", token_type="user_specific"),
    )
    assert "choose Shared" in " ".join(response.context["adminform"].form.errors["token_type"])


def test_secret_is_write_only(manager_client, make_connection):
    connection = make_connection(register=False)
    secret = connection.client_secret
    page = manager_client.get(f"/admin/connections/connection/{connection.pk}/change/").content.decode()
    assert secret not in page
    assert "A secret is stored" in page
    # Saving with the field blank keeps it; typing a new one replaces it.
    data = _edit_form(connection)
    assert manager_client.post(f"/admin/connections/connection/{connection.pk}/change/", data).status_code == 302
    connection.refresh_from_db()
    assert connection.client_secret == secret
    data["client_secret"] = "a-brand-new-secret"
    manager_client.post(f"/admin/connections/connection/{connection.pk}/change/", data)
    connection.refresh_from_db()
    assert connection.client_secret == "a-brand-new-secret"
    assert AuditEvent.objects.filter(action="connection_update", detail__contains="client secret (replaced)").exists()


def test_change_page_shows_redirect_uri_status_and_roles(manager_client, make_connection, authserver, settings):
    from django.contrib.auth.models import Group

    connection = make_connection()
    connection.roles.add(Group.objects.create(name="Finance bots"))
    authorize_and_store_token(manager_client, connection, authserver)
    page = manager_client.get(f"/admin/connections/connection/{connection.pk}/change/").content.decode()
    assert settings.OAUTH_REDIRECT_URI in page
    assert "Connected, expires in" in page
    assert "Finance bots" in page
    assert "Reconnect" in page and "Refresh now" in page and "Disconnect" in page
    token = shared_token(connection)
    assert token.access_token not in page and token.refresh_token not in page


@AFTER_COMMIT
def test_save_and_test_fetches_a_client_credentials_token(manager_client, make_connection, authserver):
    connection = make_connection(grant_type="client_credentials", scopes="read")
    data = _edit_form(connection, _test="Save and test connection")
    response = manager_client.post(f"/admin/connections/connection/{connection.pk}/change/", data)
    assert any("Test passed" in text for text in messages_of(response)), messages_of(response)
    token = shared_token(connection)
    assert authserver.whoami(token.access_token).json()["username"] == ""
    assert authserver.stats()["token_requests"]["client_credentials"] == 1


@AFTER_COMMIT
def test_save_and_test_reports_bad_client_credentials(manager_client, make_connection, authserver):
    connection = make_connection(grant_type="client_credentials", client_secret="wrong")
    data = _edit_form(connection, authorization_url="", scopes="read", _test="Save and test connection")
    response = manager_client.post(f"/admin/connections/connection/{connection.pk}/change/", data)
    assert any("Test failed" in text and "invalid_client" in text for text in messages_of(response))
    assert shared_token(connection) is None


@AFTER_COMMIT
def test_save_and_test_on_an_unauthorized_code_connection_says_to_connect(manager_client, make_connection):
    connection = make_connection(register=False)
    data = _edit_form(connection, _test="Save and test connection")
    response = manager_client.post(f"/admin/connections/connection/{connection.pk}/change/", data)
    assert any("Authorization needed: click Connect" in text for text in messages_of(response))


def test_refresh_now_rotates_the_refresh_token(manager_client, make_connection, authserver):
    connection = make_connection()
    authorize_and_store_token(manager_client, connection, authserver)
    before = shared_token(connection)
    response = manager_client.post(f"/admin/connections/connection/{connection.pk}/refresh/")
    assert any("Refreshed 1 token" in text for text in messages_of(response))
    after = shared_token(connection)
    assert after.access_token != before.access_token and after.refresh_token != before.refresh_token
    assert authserver.whoami(after.access_token).status_code == 200


def test_refresh_now_failure_keeps_the_token(manager_client, make_connection, authserver):
    connection = make_connection()
    authorize_and_store_token(manager_client, connection, authserver)
    before = shared_token(connection)
    authserver.set_fault("status_500")
    response = manager_client.post(f"/admin/connections/connection/{connection.pk}/refresh/")
    assert any("HTTP 500" in text and "current token is kept" in text for text in messages_of(response))
    after = shared_token(connection)
    assert (after.access_token, after.refresh_token) == (before.access_token, before.refresh_token)
    assert after.state == "refresh_failing" and after.consecutive_failures == 1
    page = manager_client.get(f"/admin/connections/connection/{connection.pk}/change/").content.decode()
    assert "Refresh failing" in page and "HTTP 500" in page


def test_disconnect_revokes_at_the_provider_and_removes_tokens(manager_client, make_connection, authserver):
    connection = make_connection()
    authorize_and_store_token(manager_client, connection, authserver)
    token = shared_token(connection)
    confirm = manager_client.get(f"/admin/connections/connection/{connection.pk}/disconnect/")
    assert "revoked at the provider" in confirm.content.decode()
    response = manager_client.post(f"/admin/connections/connection/{connection.pk}/disconnect/")
    assert any("Disconnected" in text for text in messages_of(response))
    assert shared_token(connection) is None
    assert authserver.whoami(token.access_token).status_code == 401
    assert authserver.stats()["revocations"] >= 1


def test_view_only_role_sees_the_connection_but_not_its_secret(make_user, make_connection):
    # given a connection, and a staff user who may view connections but not manage them
    connection = make_connection(register=False)
    viewer = make_user(perms=("view_connections",), staff=True)
    client = Client()
    client.force_login(viewer)
    # when they open its page
    page = client.get(f"/admin/connections/connection/{connection.pk}/change/")
    # then they see it, read-only, without the secret (their refusals: test_a_refused_admin_request_changes_nothing)
    assert page.status_code == 200 and "Save and test connection" not in page.content.decode()
    assert connection.client_secret not in page.content.decode()
    assert connection.client_id in page.content.decode()
    # and a staff user without View connections does not even see it
    nobody = make_user(staff=True)
    client.force_login(nobody)
    assert client.get(f"/admin/connections/connection/{connection.pk}/change/").status_code == 403


def _bulk_action(action: str, pk: int) -> dict[str, object]:
    """The list page's action form, as the browser posts it for one selected row."""
    return {"action": action, "_selected_action": [str(pk)], "index": "0", "select_across": "0"}


# Each request as the admin's own pages send it: (client, connected connection, bot) -> response.
ADMIN_REQUESTS = {
    "save the add form": lambda client, connection, bot: client.post(
        "/admin/connections/connection/add/", _form("salesforce", placeholder__yourinstance="acme")
    ),
    "save the change form": lambda client, connection, bot: client.post(
        f"/admin/connections/connection/{connection.pk}/change/",
        _edit_form(connection, description="changed by a refused request"),
    ),
    "confirm the deletion": lambda client, connection, bot: client.post(
        f"/admin/connections/connection/{connection.pk}/delete/", {"post": "yes"}
    ),
    "Refresh now button": lambda client, connection, bot: client.post(
        f"/admin/connections/connection/{connection.pk}/refresh/"
    ),
    "Disconnect button": lambda client, connection, bot: client.post(
        f"/admin/connections/connection/{connection.pk}/disconnect/"
    ),
    "Refresh now list action": lambda client, connection, bot: client.post(
        "/admin/connections/connection/", _bulk_action("refresh_selected", connection.pk)
    ),
    "Revoke bot key list action": lambda client, connection, bot: client.post(
        "/admin/connections/botkey/", _bulk_action("revoke_selected", bot.key.pk)
    ),
}


@pytest.mark.parametrize(
    ("who", "request_name", "status"),
    [
        # A viewer passes the admin's view checks: each change must be refused by its own permission check.
        ("viewer", "save the add form", 403),
        ("viewer", "save the change form", 403),
        ("viewer", "confirm the deletion", 403),
        ("viewer", "Refresh now button", 403),
        ("viewer", "Disconnect button", 403),
        ("viewer", "Refresh now list action", 200),  # not offered to them: the list is shown again
        ("viewer", "Revoke bot key list action", 200),  # not offered to them: the list is shown again
        # A staff user whose role is invited to use the connection, without a feature permission: using a
        # connection is not administering it.
        *(("invited", name, 403) for name in ADMIN_REQUESTS),
    ],
)
def test_a_refused_admin_request_changes_nothing(
    who, request_name, status, bot_connection, bot, authserver, make_user, manager_client
):
    # given a connected token (stored, valid at the provider, used by a bot) and a staff user who may not do this
    user = (
        make_user(perms=("view_connections",), staff=True)
        if who == "viewer"
        else make_user(roles=(bot.role,), staff=True)
    )
    client = Client()
    client.force_login(user)
    send = ADMIN_REQUESTS[request_name]
    before, provider_before = stored_rows(), authserver.stats()

    # when they send the request the admin's page would send
    response = send(client, bot_connection, bot)

    # then it is refused, and nothing stored, audited or at the provider changed
    assert response.status_code == status, response
    assert not any(
        text.startswith(("Refreshed", "Disconnected", "Deleted", "Revoked")) for text in messages_of(response)
    )
    assert stored_rows() == before
    assert authserver.stats() == provider_before
    answer = get_token(bot.raw_key, bot_connection.slug)
    assert answer.status_code == 200 and answer.json()["access_token"] == shared_token(bot_connection).access_token

    # and the very same request from an administrator does change them: the permission check is what refused it
    before = stored_rows()
    assert send(manager_client, bot_connection, bot).status_code in (200, 302)
    assert stored_rows() != before


def test_the_audit_export_is_refused_to_those_who_may_not_view_the_audit_log(
    bot_connection, bot, make_user, manager_client
):
    # given an audit log that holds the connection's history, and a staff user whose role may use the connection
    # but who may not view connections (and so not their audit log)
    outsider = make_user(roles=(bot.role,), staff=True)
    client = Client()
    client.force_login(outsider)
    before = stored_rows()

    # when they ask for the CSV export
    response = client.get("/admin/connections/auditevent/export.csv")

    # then they are refused, and get none of it
    assert response.status_code == 403
    assert not response.streaming and bot_connection.slug.encode() not in response.content
    assert stored_rows() == before
    # and the same link gives an administrator the log (the refusal is the permission's, not a broken link)
    allowed = manager_client.get("/admin/connections/auditevent/export.csv")
    assert allowed.status_code == 200 and allowed["Content-Type"].startswith("text/csv")
    assert bot_connection.slug.encode() in b"".join(allowed.streaming_content)


def test_secrets_are_encrypted_at_rest(manager_client, make_connection, authserver):
    connection = make_connection()
    authorize_and_store_token(manager_client, connection, authserver)
    token = shared_token(connection)
    with db.cursor() as cursor:
        cursor.execute("SELECT client_secret FROM connections_connection WHERE id = %s", [connection.pk])
        (secret_column,) = cursor.fetchone()
        cursor.execute(
            "SELECT access_token, refresh_token, id_token FROM connections_oauthtoken WHERE id = %s", [token.pk]
        )
        token_columns = cursor.fetchone()
    raw = b"".join(bytes(column) for column in (secret_column, *token_columns))
    for plaintext in (connection.client_secret, token.access_token, token.refresh_token):
        assert plaintext.encode() not in raw
    assert len(bytes(secret_column)) > len(connection.client_secret)


def test_client_authentication_in_the_form_body_as_the_provider_says(make_connection, authserver):
    from django.contrib.auth.models import User

    from connections.services import connection_test

    body_provider = Provider.objects.create(
        slug="acme-body", name="Acme (form body auth)", grant_types=["client_credentials"], client_auth_method="body"
    )
    connection = make_connection(grant_type="client_credentials", provider=body_provider, authorization_url="")
    message = connection_test(connection=connection, actor=User.objects.create(username="tester"))
    assert message.startswith("Test passed")
    assert authserver.stats()["token_requests"]["client_credentials"] == 1


@pytest.mark.django_db(transaction=True)
def test_save_and_test_calls_the_provider_only_after_the_save_is_committed(manager_client, make_connection, authserver):
    # given a provider that takes a moment to answer, and an observer on a database connection of its own
    connection = make_connection(grant_type="client_credentials", scopes="read")
    authserver.set_token_options(latency=1.5)
    seen_during_the_call: list[str] = []

    def observe() -> None:
        try:
            wait_for(lambda: authserver.stats()["token_requests"]["client_credentials"], 10, "the provider call")
            seen_during_the_call.append(Connection.objects.get(pk=connection.pk).description)
        finally:
            db_connections.close_all()

    # when the administrator changes the connection and clicks Save and test connection
    with ThreadPoolExecutor(1) as pool:
        observer = pool.submit(observe)
        data = _edit_form(connection, description="changed before the test", _test="Save and test connection")
        response = manager_client.post(f"/admin/connections/connection/{connection.pk}/change/", data)
        observer.result(timeout=15)

    # then, while the provider was being called, the change was already committed: no transaction was open
    assert any("Test passed" in text for text in messages_of(response)), messages_of(response)
    assert seen_during_the_call == ["changed before the test"]


# Django's own delete view deletes on any non-empty POST: each must take the path that revokes and audits.
@pytest.mark.parametrize("confirmation", [{"post": "yes"}, {"confirm": "1"}])
def test_deleting_a_connection_revokes_its_tokens_and_is_audited(
    manager_client, make_connection, authserver, confirmation
):
    # given a connected connection
    connection = make_connection()
    authorize_and_store_token(manager_client, connection, authserver)
    token = shared_token(connection)
    # when the administrator deletes it, told what that does, and confirms
    confirm = manager_client.get(f"/admin/connections/connection/{connection.pk}/delete/").content.decode()
    assert "revoked at the provider first" in confirm
    # (the list's bulk delete, which would skip the revocation, is not offered)
    assert "delete_selected" not in manager_client.get("/admin/connections/connection/").content.decode()
    response = manager_client.post(f"/admin/connections/connection/{connection.pk}/delete/", confirmation)
    # then it is gone, its grant is revoked at the provider, and the audit log says who deleted it
    assert response.status_code == 302
    assert not Connection.objects.filter(pk=connection.pk).exists()
    assert authserver.whoami(token.access_token).status_code == 401
    assert authserver.live_grants(connection.client_id)["refresh_tokens"] == 0
    event = AuditEvent.objects.get(action="connection_delete")
    assert (event.actor_label, event.connection_label) == ("manager", connection.slug)
    assert "revoked" in event.detail


def test_the_connection_list_warns_when_refreshes_fall_behind(manager_client, bot_connection, settings):
    # given a token whose refresh time passed ten minutes ago
    settings.BEAT_INTERVAL = 30
    url = "/admin/connections/connection/"
    assert not [text for text in messages_of(manager_client.get(url)) if "past their refresh time" in text]
    due_at = timezone.now() - timedelta(minutes=10)
    OAuthToken.objects.filter(connection=bot_connection).update(refresh_due_at=due_at)
    # when an administrator opens the list, then it says so, with the age and where to read what to do
    (warning,) = [text for text in messages_of(manager_client.get(url)) if "past their refresh time" in text]
    assert re.match(r"1 token\(s\) are past their refresh time, the oldest by 60\d s", warning)
    assert "Scaling web and workers" in warning
