"""ANY /api/v1/connections/<slug>/proxy/<path>: the API proxy, against the real loopback authorization server and a
loopback API that notes what it received."""

import hashlib
import io
from urllib.parse import urlsplit

import pytest

from connections.cache import token_cache
from connections.endpoint import proxy
from connections.models import AuditEvent, OAuthToken
from connections.outbound import policy
from providers.models import Provider
from tests.conftest import get_token, shared_token
from tests.connections.endpoint.conftest import body_of, call
from tests.support.resource import Answer, generated

pytestmark = pytest.mark.django_db

BIG = 20 * 1024 * 1024


def test_the_token_is_added_and_the_bot_key_never_forwarded(proxied, bot, api):
    response = call(bot.raw_key, proxied.slug, "v1.0/me?$select=id,displayName&top=5")
    assert response.status_code == 200, response.content
    assert body_of(response) == b'{"ok": true}'
    assert response["Content-Type"] == "application/json"
    [received] = api.received
    assert received.path == "/base/v1.0/me?$select=id,displayName&top=5"
    assert received.header("Authorization") == f"Bearer {shared_token(proxied).access_token}"
    assert bot.raw_key not in str(received.headers)


def test_a_provider_type_that_takes_its_token_in_another_header_gets_it_there(proxied, bot, api):
    # Shopify's Admin API: the token alone, in X-Shopify-Access-Token; a bot's own header of that name is dropped.
    Provider.objects.filter(pk=proxied.provider_id).update(
        api_token_header="X-Shopify-Access-Token", api_token_prefix=""
    )
    response = call(bot.raw_key, proxied.slug, "2025-01/shop.json", HTTP_X_SHOPIFY_ACCESS_TOKEN="the-bots-own")
    assert response.status_code == 200, response.content
    [received] = api.received
    assert received.header("X-Shopify-Access-Token") == shared_token(proxied).access_token
    assert received.header("Authorization") is None and "the-bots-own" not in str(received.headers)


def test_a_token_prefix_other_than_bearer_is_written_before_the_token(proxied, bot, api):
    Provider.objects.filter(pk=proxied.provider_id).update(api_token_prefix="Zoho-oauthtoken")
    assert call(bot.raw_key, proxied.slug, "crm/v8/users").status_code == 200
    [received] = api.received
    assert received.header("Authorization") == f"Zoho-oauthtoken {shared_token(proxied).access_token}"


def test_a_call_leaves_the_process_connection_pools_open(proxied, bot, api):
    # The pools are the whole process's (policy._shared_adapter): a call that closed them closed every kept-alive
    # connection to every API and token URL.
    pools = policy._shared_adapter().poolmanager.pools
    assert call(bot.raw_key, proxied.slug, "v1/x").status_code == 200
    port = urlsplit(api.url).port
    assert [key for key in pools.keys() if (key.key_host, key.key_port) == ("127.0.0.1", port)]


def test_hop_by_hop_headers_and_cookies_are_not_forwarded_and_set_cookie_not_returned(proxied, bot, api):
    api.answers["/base/items"] = Answer(
        201,
        [("Content-Type", "text/plain"), ("Set-Cookie", "session=abc"), ("X-Api", "kept"), ("Keep-Alive", "5")],
        b"made",
    )
    response = call(
        bot.raw_key,
        proxied.slug,
        "items",
        "POST",
        data=b"hello",
        content_type="text/plain",
        HTTP_CONNECTION="keep-alive, X-Hop",
        HTTP_X_HOP="named by Connection",
        HTTP_KEEP_ALIVE="timeout=5",
        HTTP_TE="trailers",
        HTTP_UPGRADE="h2c",
        HTTP_PROXY_AUTHORIZATION="Basic eDp5",
        HTTP_COOKIE="sessionid=browser",
        HTTP_X_TRACE="passed",
    )
    assert response.status_code == 201
    assert body_of(response) == b"made"
    assert "Set-Cookie" not in response and not response.cookies
    assert "Keep-Alive" not in response
    assert response["X-Api"] == "kept"
    [received] = api.received
    names = {name.lower() for name, _ in received.headers}
    assert not names & {"x-hop", "keep-alive", "te", "upgrade", "proxy-authorization", "cookie"}
    assert received.header("X-Trace") == "passed"
    assert received.header("Content-Type") == "text/plain"
    assert (received.method, received.body_size) == ("POST", 5)


@pytest.mark.parametrize(
    "path",
    [
        "../secret",
        "a/../../secret",
        "%2e%2e/secret",
        "a%2fb",
        "a%2Fb",
        "a%5cb",
        "a\\b",
        "/evil.example/x",
        "http://evil",
    ],
)
def test_paths_that_could_leave_the_api_base_are_refused(proxied, bot, api, path):
    response = call(bot.raw_key, proxied.slug, path)
    assert response.status_code == 400, (path, response.content)
    assert response.json()["error"] == "bad_request"
    assert api.received == []


def test_a_decoded_path_is_checked_too_without_the_raw_request_line(proxied, bot, api):
    # runserver gives no RAW_URI: %2e%2e arrives decoded, as .., and is refused all the same.
    response = call(bot.raw_key, proxied.slug, "%2e%2e/secret", raw=False)
    assert response.status_code == 400
    assert api.received == []


def test_a_401_gets_one_forced_refresh_and_one_retry(bot_connection, bot, authserver):
    # The loopback server's own API (userinfo) is the API. The stored token is one the API no longer accepts (as
    # after a password change at the provider), while the refresh token still works.
    bot_connection.api_base_url = authserver.url
    bot_connection.save()
    OAuthToken.objects.filter(connection=bot_connection).update(access_token="no-longer-accepted")
    refreshes = authserver.stats()["token_requests"].get("refresh_token", 0)
    response = call(bot.raw_key, bot_connection.slug, "api/me")
    assert response.status_code == 200, body_of(response)
    after = shared_token(bot_connection).access_token
    assert after != "no-longer-accepted"
    assert authserver.whoami(after).status_code == 200
    assert authserver.stats()["token_requests"].get("refresh_token", 0) == refreshes + 1


def test_a_large_body_is_not_sent_again_after_a_401(proxied, bot, api):
    api.answers["/base/upload"] = Answer(401, [("WWW-Authenticate", "Bearer")], b"")
    body = b"x" * (proxy.REPLAYABLE_BYTES + 1)
    response = call(bot.raw_key, proxied.slug, "upload", "PUT", data=body, content_type="application/octet-stream")
    assert response.status_code == 401
    assert len(api.received) == 1
    assert api.received[0].body_size == len(body)


def test_the_apis_429_and_retry_after_pass_back(proxied, bot, api):
    api.answers["/base/busy"] = Answer(429, [("Retry-After", "17"), ("Content-Type", "application/json")], b"{}")
    response = call(bot.raw_key, proxied.slug, "busy")
    assert response.status_code == 429
    assert response["Retry-After"] == "17"
    assert body_of(response) == b"{}"
    assert len(api.received) == 1  # not retried


UNAVAILABLE = Answer(503, [("Content-Type", "application/json")], b'{"error": "busy"}')


def test_a_5xx_is_passed_back_without_a_retry_by_default(proxied, bot, api):
    api.queued["/base/flaky"] = [UNAVAILABLE]
    response = call(bot.raw_key, proxied.slug, "flaky")
    assert (response.status_code, body_of(response)) == (503, b'{"error": "busy"}')
    assert len(api.received) == 1


def test_an_idempotent_call_is_retried_on_a_5xx_when_retries_are_on(proxied, bot, api, settings):
    settings.PROXY_RETRIES, settings.PROXY_RETRY_WAIT_MAX = 2, 2
    api.queued["/base/flaky"] = [UNAVAILABLE, Answer(502, body=b"{}")]  # then the default 200
    response = call(bot.raw_key, proxied.slug, "flaky")
    assert (response.status_code, body_of(response)) == (200, b'{"ok": true}')
    assert [received.method for received in api.received] == ["GET", "GET", "GET"]


def test_retries_stop_at_their_number_and_the_last_answer_goes_back(proxied, bot, api, settings):
    settings.PROXY_RETRIES = 1
    api.queued["/base/flaky"] = [UNAVAILABLE, Answer(504, body=b'{"error": "gateway"}')]
    response = call(bot.raw_key, proxied.slug, "flaky")
    assert (response.status_code, body_of(response)) == (504, b'{"error": "gateway"}')
    assert len(api.received) == 2


def test_a_post_or_a_longer_retry_after_than_the_cap_is_not_retried(proxied, bot, api, settings):
    settings.PROXY_RETRIES, settings.PROXY_RETRY_WAIT_MAX = 3, 2
    api.queued["/base/flaky"] = [UNAVAILABLE]
    assert (
        call(bot.raw_key, proxied.slug, "flaky", "POST", data=b"{}", content_type="application/json").status_code == 503
    )
    api.queued["/base/flaky"] = [Answer(503, [("Retry-After", "120")], b"{}")]
    response = call(bot.raw_key, proxied.slug, "flaky")
    assert (response.status_code, response["Retry-After"]) == (503, "120")  # the bot's to wait, not a thread's
    assert len(api.received) == 2


def test_a_large_answer_streams_in_pieces(proxied, bot, api):
    api.answers["/base/big"] = Answer(200, [("Content-Type", "application/octet-stream")], generated_size=BIG)
    response = call(bot.raw_key, proxied.slug, "big")
    assert response.status_code == 200 and response.streaming
    assert response["Content-Length"] == str(BIG)
    digest, size, pieces, largest = hashlib.sha256(), 0, 0, 0
    for piece in response.streaming_content:
        digest.update(piece)
        size, pieces, largest = size + len(piece), pieces + 1, max(largest, len(piece))
    expected = hashlib.sha256()
    for piece in generated(BIG):
        expected.update(piece)
    assert (size, digest.hexdigest()) == (BIG, expected.hexdigest())
    assert largest <= proxy.CHUNK and pieces >= BIG // proxy.CHUNK


def test_a_large_request_body_streams_to_the_api(proxied, bot, api, monkeypatch):
    pieces: list[int] = []
    original = proxy.Upload.__iter__

    def noting(self):
        for piece in original(self):
            pieces.append(len(piece))
            yield piece

    monkeypatch.setattr(proxy.Upload, "__iter__", noting)
    body = b"".join(generated(BIG))
    response = call(bot.raw_key, proxied.slug, "upload", "POST", data=body, content_type="application/octet-stream")
    assert response.status_code == 200
    [received] = api.received
    assert received.body_size == BIG
    assert received.body_sha256 == hashlib.sha256(body).hexdigest()
    assert received.header("Content-Length") == str(BIG) and received.header("Transfer-Encoding") is None
    assert sum(pieces) == BIG and max(pieces) <= proxy.CHUNK and len(pieces) >= BIG // proxy.CHUNK


def test_a_chunked_request_body_streams_to_the_api_chunked(proxied, bot, api):
    # As gunicorn hands over a chunked body: no CONTENT_LENGTH, the de-chunked stream in wsgi.input, which ends.
    body = b"".join(generated(3 * 1024 * 1024 + 17))
    server_stream = {"wsgi.input": io.BytesIO(body), "wsgi.input_terminated": True, "HTTP_TRANSFER_ENCODING": "chunked"}
    response = call(bot.raw_key, proxied.slug, "upload", "PUT", **server_stream)
    assert (response.status_code, body_of(response)) == (200, b'{"ok": true}')  # read whole: the call is over
    [received] = api.received
    assert (received.body_size, received.body_sha256) == (len(body), hashlib.sha256(body).hexdigest())
    # Its length is not known before its end: sent on chunked too, never buffered whole to count it.
    assert received.header("Transfer-Encoding") == "chunked" and received.header("Content-Length") is None
    assert token_cache.report()
    [event] = AuditEvent.objects.filter(action="proxy_request")
    assert f"{len(body)} bytes sent" in event.detail


def test_a_proxy_only_connection_is_refused_at_the_token_endpoint(proxied, bot, api):
    proxied.token_access = "proxy"
    proxied.save()
    response = get_token(bot.raw_key, proxied.slug)
    assert response.status_code == 403
    assert response.json()["error"] == "forbidden" and "proxy" in response.json()["detail"]
    assert call(bot.raw_key, proxied.slug, "v1/x").status_code == 200


def test_a_token_only_connection_is_refused_at_the_proxy(proxied, bot, api):
    proxied.token_access = "token"
    proxied.save()
    response = call(bot.raw_key, proxied.slug, "v1/x")
    assert response.status_code == 403
    assert response.json()["error"] == "forbidden"
    assert api.received == []
    assert get_token(bot.raw_key, proxied.slug).status_code == 200


def test_a_key_whose_roles_are_not_invited_is_refused(make_connection, manager_client, authserver, bot, api):
    from tests.conftest import authorize_and_store_token

    connection = make_connection(api_base_url=api.url)
    authorize_and_store_token(manager_client, connection, authserver)
    response = call(bot.raw_key, connection.slug, "x")
    assert response.status_code == 403 and response.json()["error"] == "forbidden"
    event = AuditEvent.objects.filter(action="proxy_request").latest("id")
    assert event.outcome == "failure" and "403 forbidden" in event.detail
    assert call("crk_not-a-key", connection.slug, "x").status_code == 401
    assert api.received == []


def test_a_connection_without_an_api_base_is_not_configured(bot_connection, bot, api):
    response = call(bot.raw_key, bot_connection.slug, "x")
    assert response.status_code == 409 and response.json()["error"] == "not_configured"


def test_each_call_is_audited_without_query_values(proxied, bot, api):
    response = call(bot.raw_key, proxied.slug, "services/data/query?q=SELECT+secret-value&limit=5")
    assert body_of(response) == b'{"ok": true}'  # the test client closes the answer once it is read
    assert token_cache.report()
    event = AuditEvent.objects.get(action="proxy_request")
    assert (event.outcome, event.connection, event.remote_addr) == ("success", proxied, "127.0.0.1")
    assert f"key {bot.key.key_id}" in event.actor_label
    assert event.detail.startswith("GET /services/data/query?q=…&limit=… → 200 in ")
    assert "bytes received" in event.detail and "12 bytes received" in event.detail
    assert "secret-value" not in event.detail and "5" not in event.detail.split("→")[0]
    assert shared_token(proxied).access_token not in event.detail


def test_the_admin_shows_the_proxy_call_and_hides_the_token_call_of_a_proxy_only_connection(proxied, manager_client):
    proxied.token_access = "proxy"
    proxied.save()
    page = manager_client.get(f"/admin/connections/connection/{proxied.pk}/change/").content.decode()
    assert f"/api/v1/connections/{proxied.slug}/proxy/PATH" in page
    assert 'id="bot-call-curl"' not in page


def test_apply_config_and_export_config_carry_api_base_url_and_token_access(proxied, tmp_path):
    from connections.config.export import config_export

    exported = next(item for item in config_export()["connections"] if item["slug"] == proxied.slug)
    assert exported["api_base_url"] == proxied.api_base_url and "token_access" not in exported
    proxied.token_access = "proxy"
    proxied.save()
    exported = next(item for item in config_export()["connections"] if item["slug"] == proxied.slug)
    assert exported["token_access"] == "proxy"
