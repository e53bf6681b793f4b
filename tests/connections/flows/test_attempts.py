"""A failed Save and test or Connect stays on the connection (no token holds it): its change page and the list say
what failed, when (to the second) and how many times in a row, in the one colour for failures, until a test or
connect succeeds. Against the real loopback server; the stored token is never touched by the record."""

import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.utils import timezone

from connections import selectors
from connections.flows.attempts import connection_attempt_failed, connection_attempt_succeeded
from connections.models import AnswerVersion, AuditEvent, Connection, OAuthToken
from tests.conftest import authorize_and_store_token, callback_after_consent, messages_of, shared_token
from tests.connections.admin.test_connection_admin import _edit_form

pytestmark = pytest.mark.django_db

LIST = "/admin/connections/connection/"
MOMENT = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"  # a date with seconds


def _save_and_test(client, connection: Connection, **overrides: str):
    data = _edit_form(connection, description="", token_type=connection.token_type, **overrides)  # Custom
    return client.post(f"{LIST}{connection.pk}/change/", {**data, "_test": "Save and test connection"}, follow=True)


def _field(page: str, name: str) -> str:
    """The text of a read-only field of the change page."""
    html = re.search(rf'<div class="[^"]*field-{name}[^"]*">.*?<div class="readonly">(.*?)</div>', page, re.S).group(1)
    return html


def _list_row(client, connection: Connection) -> str:
    page = client.get(LIST).content.decode()
    return re.search(rf"<tr>(?:(?!</tr>).)*?>{re.escape(connection.name)}<br>.*?</tr>", page, re.S).group()


@pytest.mark.django_db(transaction=True)  # Save and test runs once the admin's transaction commits
def test_a_failed_save_and_test_stays_on_the_page_and_in_the_list_until_a_test_passes(
    manager_client, make_connection, authserver
):
    # given a client-credentials connection whose secret the provider does not know
    connection = make_connection(grant_type="client_credentials", scopes="read")
    registered_secret = connection.client_secret
    # when the administrator saves and tests it, twice
    _save_and_test(manager_client, connection, client_secret="a-wrong-s3cret")
    response = _save_and_test(manager_client, connection)
    # then no token is stored, and the connection keeps the failure: in words, when, how often; never the secret
    assert any("Test failed" in text and "invalid_client" in text for text in messages_of(response))
    # with what to check for that error
    hint = "Check the client ID, the client secret, the client authentication method (HTTP Basic or form body)"
    assert any(hint in text and "(production or sandbox)" in text for text in messages_of(response))
    assert not OAuthToken.objects.filter(connection=connection).exists()
    connection.refresh_from_db()
    assert connection.last_failure.startswith("Save and test: ") and "invalid_client" in connection.last_failure
    assert "a-wrong-s3cret" not in connection.last_failure and registered_secret not in connection.last_failure
    assert connection.failures_in_a_row == 2
    assert timezone.now() - connection.last_failure_at < timedelta(minutes=1)
    # and the change page says so in the colour of failures, with the time to the second and the count
    page = response.content.decode()
    assert "a-wrong-s3cret" not in page
    status = _field(page, "status_display")
    assert status == '<span class="connection-failed">Not connected — last attempt failed</span>'
    error = _field(page, "last_error_display")
    assert 'class="connection-failed"' in error and "invalid_client" in error
    assert re.search(rf"\({MOMENT}; 2 failures in a row\)", error), error
    assert selectors.moment_text(connection.last_failure_at) in error
    # and so does the list
    row = _list_row(manager_client, connection)
    assert '<span class="connection-failed">Not connected — last attempt failed</span>' in row
    error = rf'class="last-error connection-failed" title="[^"]*invalid_client[^"]*">.*?\({MOMENT}; 2 failures in a row'
    assert re.search(error, row)

    # when the secret is put right and the test passes
    response = _save_and_test(manager_client, connection, client_secret=registered_secret)
    assert any("Test passed" in text for text in messages_of(response)), messages_of(response)
    # then the failure is over
    connection.refresh_from_db()
    assert (connection.last_failure, connection.last_failure_at, connection.failures_in_a_row) == ("", None, 0)
    page = response.content.decode()
    assert _field(page, "status_display").startswith("Connected, expires in")
    assert _field(page, "last_error_display") == "—"
    assert "connection-failed" not in _list_row(manager_client, connection)


def test_a_failed_connect_stays_on_the_connection_until_a_connect_succeeds(manager_client, make_connection, authserver):
    # given a connection never connected, whose provider fails the code exchange
    connection = make_connection()
    callback = callback_after_consent(manager_client, connection, authserver)
    authserver.set_fault("status_500", grant_types=["authorization_code"])
    # when the provider redirects back
    response = manager_client.get(callback, follow=True)
    # then the person is told, and the change page keeps it: the status is a failure, the error has its time
    assert any("Could not connect" in text and "HTTP 500" in text for text in messages_of(response))
    connection.refresh_from_db()
    assert connection.last_failure.startswith("Connect: ") and "HTTP 500" in connection.last_failure
    assert connection.failures_in_a_row == 1
    page = manager_client.get(f"{LIST}{connection.pk}/change/").content.decode()
    assert _field(page, "status_display") == (
        '<span class="connection-failed">Not connected — last attempt failed</span>'
    )
    assert re.search(rf"HTTP 500.*\({MOMENT}; 1 failure in a row\)", _field(page, "last_error_display"))
    assert "Not connected — last attempt failed" in _list_row(manager_client, connection)

    # when the administrator cancels at the provider next: that is a failed attempt too, the second in a row
    authserver.clear_fault()
    manager_client.get(callback_after_consent(manager_client, connection, authserver, approve=False))
    connection.refresh_from_db()
    assert "access_denied" in connection.last_failure and connection.failures_in_a_row == 2

    # and when Connect then works, the failure is over; reloading the used callback does not bring it back
    callback = callback_after_consent(manager_client, connection, authserver)
    assert manager_client.get(callback).status_code == 302
    connection.refresh_from_db()
    assert (connection.last_failure, connection.failures_in_a_row) == ("", 0)
    assert any("already used" in text for text in messages_of(manager_client.get(callback)))
    connection.refresh_from_db()
    assert connection.last_failure == ""
    assert selectors.connection_status(connection).code == "connected"


def test_a_failed_reconnect_keeps_the_token_and_shows_the_newer_error(manager_client, make_connection, authserver):
    # given a connected connection whose token failed to refresh an hour ago
    connection = make_connection()
    token = authorize_and_store_token(manager_client, connection, authserver)
    an_hour_ago = timezone.now() - timedelta(hours=1)
    OAuthToken.objects.filter(pk=token.pk).update(
        last_error="The provider's token URL answered HTTP 503.", last_error_at=an_hour_ago, consecutive_failures=3
    )
    # when a Reconnect fails at the exchange
    callback = callback_after_consent(manager_client, connection, authserver)
    authserver.set_fault("invalid_grant", grant_types=["authorization_code"])
    manager_client.get(callback)
    # then the token is as it was and still works: the record touched only the connection
    after = shared_token(connection)
    assert (after.access_token, after.refresh_token, after.generation) == (
        token.access_token,
        token.refresh_token,
        token.generation,
    )
    assert authserver.whoami(after.access_token).status_code == 200
    # and the page shows the newer of the two errors, while the status stays what the token says
    page = manager_client.get(f"{LIST}{connection.pk}/change/").content.decode()
    assert _field(page, "status_display").startswith("Connected, expires in")
    error = _field(page, "last_error_display")
    assert "Connect: " in error and "invalid_grant" in error and "1 failure in a row" in error
    # until the token fails again, later: then its error is the newer one
    OAuthToken.objects.filter(pk=token.pk).update(last_error_at=timezone.now() + timedelta(seconds=1))
    page = manager_client.get(f"{LIST}{connection.pk}/change/").content.decode()
    error = _field(page, "last_error_display")
    assert "HTTP 503" in error and "3 failures in a row" in error


def test_a_grant_stored_since_ends_the_failures_of_earlier_attempts(make_connection, make_user):
    # given a failed test, then a token stored by another way (a bot's first client-credentials request)
    connection = make_connection(register=False, grant_type="client_credentials")
    connection_attempt_failed(connection=connection, message="Save and test: invalid_client.")
    connection_attempt_failed(connection=connection, message="Save and test: invalid_client.")
    OAuthToken.objects.create(connection=connection, access_token="a", authorized_at=timezone.now())
    connection.refresh_from_db()
    # then the failure no longer counts for its status or its last error
    assert connection.failures_in_a_row == 2
    assert selectors.token_summary(connection).last_error is None
    assert selectors.connection_status(connection).code == "connected"
    # and the next failure is the first in a row
    connection_attempt_failed(connection=connection, message="Save and test: HTTP 500.")
    connection.refresh_from_db()
    assert connection.failures_in_a_row == 1
    assert selectors.token_summary(connection).last_error.message == "Save and test: HTTP 500."


def test_recording_a_failure_leaves_the_token_endpoints_answers_valid(make_connection):
    # The record is an update(): no post_save, so the answers kept in memory (connections.cache.token_cache) stay.
    connection = make_connection(register=False)
    before = AnswerVersion.objects.filter(name=AnswerVersion.IDENTITY).values_list("value", flat=True).first()
    connection_attempt_failed(connection=connection, message="Connect: HTTP 500.")
    after = AnswerVersion.objects.filter(name=AnswerVersion.IDENTITY).values_list("value", flat=True).first()
    assert after == before
    assert AuditEvent.objects.count() == 0  # the caller audits, in the same transaction


def test_the_change_page_shows_the_bot_call_ready_to_copy(manager_client, make_connection, bot, settings):
    # given a shared and a user-specific connection, and the address bots use (not the admin's host, testserver)
    settings.PUBLIC_URL = "https://controlroom.example"
    shared = make_connection(register=False)
    own = make_connection(register=False, token_type="user_specific")
    for connection in (shared, own):
        # when the administrator opens its page
        page = manager_client.get(f"{LIST}{connection.pk}/change/").content.decode()
        call = _field(page, "bot_call_display")
        # then it shows the absolute token URL and a curl line with a placeholder for the key, and a copy button
        url = f"https://controlroom.example/api/v1/connections/{connection.slug}/token"
        assert f'<code id="bot-call-url">{url}</code>' in call
        curl = f"curl -H &quot;Authorization: Bearer $CONTROLROOM_KEY&quot; {url}"
        assert f'<pre id="bot-call-curl">{curl}</pre>' in call
        assert 'data-copy-from="bot-call-curl"' in call
        assert "connections/copy_button.js" in page
        assert connection.client_secret not in page
    # and for the user-specific one, whose key it must be
    assert "who has authorized this connection" in _field(
        manager_client.get(f"{LIST}{own.pk}/change/").content.decode(), "bot_call_display"
    )
    assert "who has authorized" not in _field(
        manager_client.get(f"{LIST}{shared.pk}/change/").content.decode(), "bot_call_display"
    )


def test_what_a_provider_or_an_administrator_typed_is_shown_as_text(manager_client, make_connection):
    # given a failure quoting a provider's error description, and a role whose name looks like markup
    connection = make_connection(register=False)
    connection.roles.add(Group.objects.create(name="<b>Bots</b>"))
    connection_attempt_failed(connection=connection, message='Connect: refused (<img src=x onerror="alert(1)">).')
    # when the list and the page show them, then as text, never as markup
    for page in (
        manager_client.get(LIST).content.decode(),
        manager_client.get(f"{LIST}{connection.pk}/change/").content.decode(),
    ):
        assert "<img src=x" not in page and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in page
        assert "<b>Bots</b>" not in page and "&lt;b&gt;Bots&lt;/b&gt;" in page


def test_a_success_clears_only_the_failures_recorded_before_it_began(make_connection):
    connection = make_connection()
    started_at = timezone.now()
    # given an attempt that failed while a successful one was running
    connection_attempt_failed(connection=connection, message="Connect: HTTP 500.")
    # when the successful one ends, it leaves that newer failure
    connection_attempt_succeeded(connection=connection, started_at=started_at)
    connection.refresh_from_db()
    assert (connection.last_failure, connection.failures_in_a_row) == ("Connect: HTTP 500.", 1)
    # and a success that began after it clears it
    connection_attempt_succeeded(connection=connection, started_at=timezone.now())
    connection.refresh_from_db()
    assert (connection.last_failure, connection.last_failure_at, connection.failures_in_a_row) == ("", None, 0)
