"""The API proxy's repeated calls: what the full path found (the token, the API base, the provider type's token
header) kept in memory as the token endpoint keeps its answers, so that a call reads nothing from the database,
and every change that matters seen by the very next call."""

import pytest
from django.db import connection as database
from django.db.models import Sum
from django.test.utils import CaptureQueriesContext

from connections.cache import token_cache
from connections.models import AuditEvent, Connection
from connections.outbound import policy
from providers.models import Provider
from tests.conftest import get_token, shared_token
from tests.connections.endpoint.conftest import body_of, call
from tests.support.resource import Answer

pytestmark = pytest.mark.django_db


def proxy_answer_kept(bot, connection: Connection) -> bool:
    return token_cache.answer_key(bot.key.key_id, connection.slug, for_proxy=True) in token_cache._process().answers


def test_a_repeated_call_reads_nothing_from_the_database(proxied, bot, api, django_assert_num_queries):
    assert call(bot.raw_key, proxied.slug, "v1/first").status_code == 200
    assert proxy_answer_kept(bot, proxied)
    with django_assert_num_queries(0):
        response = call(bot.raw_key, proxied.slug, "v1/second?top=5")
        assert body_of(response) == b'{"ok": true}'
    assert response.status_code == 200
    first, second = api.received
    assert second.path == "/base/v1/second?top=5"
    assert second.header("Authorization") == first.header("Authorization")
    assert second.header("Authorization") == f"Bearer {shared_token(proxied).access_token}"


def test_calls_from_memory_are_audited_and_counted_once_each(proxied, bot, api):
    for number in range(4):
        response = call(bot.raw_key, proxied.slug, f"v1/items/{number}")
        assert body_of(response) == b'{"ok": true}'  # read whole: the test client closes it, which audits it
    assert token_cache.report()
    calls = AuditEvent.objects.filter(action="proxy_request")
    assert calls.aggregate(total=Sum("count"))["total"] == 4
    # A kept proxy answer writes no token answer's event: no bot was given the token.
    assert not AuditEvent.objects.filter(action="token_request").exists()


def test_the_proxys_kept_answer_never_answers_the_token_endpoint_of_a_proxy_only_connection(proxied, bot, api):
    # given a proxy-only connection whose proxy answer this process keeps
    proxied.token_access = "proxy"
    proxied.save()
    for _ in range(2):
        assert call(bot.raw_key, proxied.slug, "v1/x").status_code == 200
    assert proxy_answer_kept(bot, proxied)
    # when the bot asks the token endpoint for the same connection: refused, the token not in the answer
    response = get_token(bot.raw_key, proxied.slug)
    assert response.status_code == 403
    assert shared_token(proxied).access_token not in response.content.decode()


def test_a_token_answer_kept_by_the_token_endpoint_is_not_taken_for_the_proxys(proxied, bot, api):
    # given the token endpoint's answer kept, then the connection made token-only
    for _ in range(2):
        assert get_token(bot.raw_key, proxied.slug).status_code == 200
    proxied.token_access = "token"
    proxied.save()
    # then the proxy refuses, the API called by nobody
    assert call(bot.raw_key, proxied.slug, "v1/x").status_code == 403
    assert api.received == []


def test_a_provider_types_new_token_header_is_used_by_the_next_call(proxied, bot, api):
    assert call(bot.raw_key, proxied.slug, "v1/x").status_code == 200
    assert proxy_answer_kept(bot, proxied)
    # when an administrator changes the provider type (the admin saves it)
    provider = Provider.objects.get(pk=proxied.provider_id)
    provider.api_token_header, provider.api_token_prefix = "X-Api-Key", ""
    provider.save()
    # then
    assert call(bot.raw_key, proxied.slug, "v1/y").status_code == 200
    assert api.received[-1].header("X-Api-Key") == shared_token(proxied).access_token
    assert api.received[-1].header("Authorization") is None


def test_a_new_api_base_is_used_by_the_next_call(proxied, bot, api):
    assert call(bot.raw_key, proxied.slug, "v1/x").status_code == 200
    proxied.api_base_url = api.url + "/other"
    proxied.save()
    assert call(bot.raw_key, proxied.slug, "v1/y").status_code == 200
    assert api.received[-1].path == "/other/v1/y"


def test_a_401_to_a_call_from_memory_refreshes_once_and_retries(proxied, bot, api, authserver):
    # given the next call answered from memory
    assert call(bot.raw_key, proxied.slug, "me").status_code == 200
    assert proxy_answer_kept(bot, proxied)
    kept = shared_token(proxied).access_token
    # when the API refuses the kept token once (revoked at the provider, say: the stored row does not know)
    api.queued["/base/me"] = [Answer(401, [("WWW-Authenticate", "Bearer")], b"")]
    refreshes = authserver.stats()["token_requests"].get("refresh_token", 0)
    with CaptureQueriesContext(database) as queries:
        response = call(bot.raw_key, proxied.slug, "me")
    # then one forced refresh, one retry with the new token
    assert response.status_code == 200, body_of(response)
    assert authserver.stats()["token_requests"].get("refresh_token", 0) == refreshes + 1
    after = shared_token(proxied).access_token
    assert after != kept
    assert [received.header("Authorization") for received in api.received[-2:]] == [f"Bearer {kept}", f"Bearer {after}"]
    assert queries.captured_queries  # the rows were read for the refresh: the call left memory
    # and the calls after it are answered from memory with the new token
    assert call(bot.raw_key, proxied.slug, "me").status_code == 200
    with CaptureQueriesContext(database) as queries:
        assert call(bot.raw_key, proxied.slug, "me").status_code == 200
    assert not queries.captured_queries
    assert api.received[-1].header("Authorization") == f"Bearer {after}"


def test_a_proxied_call_skips_the_browsers_middleware_but_not_the_security_headers(proxied, bot, api, settings):
    # A bot's call has no session, CSRF token or page to frame (connections.endpoint.middleware): none of that
    # middleware runs, so the API's answer is not made to vary by a cookie it never saw.
    response = call(bot.raw_key, proxied.slug, "v1/x", HTTP_COOKIE=f"{settings.SESSION_COOKIE_NAME}=anything")
    assert response.status_code == 200
    assert "Vary" not in response and "X-Frame-Options" not in response and not response.cookies
    assert response["X-Content-Type-Options"] == "nosniff"  # SecurityMiddleware's, before it
    assert response["X-Request-ID"]


def test_the_proxys_kept_session_keeps_no_cookie_of_the_api(proxied, bot, api):
    # The proxy's session is kept from call to call (policy.streaming_session, one a thread: the test client calls
    # in this one): it must keep nothing one bot's call was told, which another bot's call could carry or which
    # would pile up.
    api.queued["/base/login"] = [Answer(200, [("Set-Cookie", "session=first-bots; Path=/")], b"in")]
    assert body_of(call(bot.raw_key, proxied.slug, "login")) == b"in"
    assert list(policy.streaming_session(1).cookies) == []
    assert call(bot.raw_key, proxied.slug, "v1/next").status_code == 200
    assert api.received[-1].header("Cookie") is None
