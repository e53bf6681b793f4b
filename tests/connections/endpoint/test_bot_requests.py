"""A bot's requests pass none of the browser's middleware (connections.endpoint.middleware) but keep what protects
them: the Host check, the security headers, a Content-Length; and the token endpoint's one read is its own
connection health check (connections.endpoint.read)."""

import pytest
from django.db import connection as database
from django.test import Client

from tests.conftest import get_token, shared_token

pytestmark = pytest.mark.django_db


def test_a_token_request_with_a_host_allowed_hosts_does_not_name_is_refused(bot_connection, bot):
    response = Client().get(
        f"/api/v1/connections/{bot_connection.slug}/token",
        HTTP_AUTHORIZATION=f"Bearer {bot.raw_key}",
        HTTP_HOST="evil.example",
    )
    assert response.status_code == 400
    assert shared_token(bot_connection).access_token not in response.content.decode()


def test_the_full_paths_answer_has_a_length_and_no_browser_headers(bot_connection, bot, settings):
    settings.TOKEN_CACHE_ENABLED = False  # every answer through the database
    response = Client().get(
        f"/api/v1/connections/{bot_connection.slug}/token",
        HTTP_AUTHORIZATION=f"Bearer {bot.raw_key}",
        HTTP_COOKIE=f"{settings.SESSION_COOKIE_NAME}=anything",
    )
    assert response.status_code == 200
    assert response["Content-Length"] == str(len(response.content))
    assert "Vary" not in response and "X-Frame-Options" not in response and not response.cookies
    assert response["X-Content-Type-Options"] == "nosniff" and response["Cache-Control"] == "no-store"
    refused = get_token("crk_nope_nope", bot_connection.slug)
    assert refused.status_code == 401 and refused["Content-Length"] == str(len(refused.content))


@pytest.mark.django_db(transaction=True)  # the connection is dropped by another: nothing may be held open
def test_a_token_request_on_a_connection_the_database_dropped_is_answered(bot_connection, bot, settings):
    settings.TOKEN_CACHE_ENABLED = False
    assert get_token(bot.raw_key, bot_connection.slug).status_code == 200
    # given this process's connection ended by the server (as a restart ends it), its health not yet checked
    with database.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        [pid] = cursor.fetchone()
    with database._nodb_cursor() as other:
        other.execute("SELECT pg_terminate_backend(%s)", [pid])
    database.health_check_enabled, database.health_check_done = True, False  # as at a request's start
    # then the next request is answered (the read sent again on a new connection), not failed
    response = get_token(bot.raw_key, bot_connection.slug)
    assert response.status_code == 200, response.content
    assert response.json()["access_token"] == shared_token(bot_connection).access_token
