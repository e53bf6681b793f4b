"""Every error code of the token endpoint, produced for real by the live server, as its exception; and what
can go wrong on the way (no answer, an answer that is not the endpoint's)."""

from datetime import timedelta

import pytest
import yaml
from controlroom_client import (
    BadRequest,
    ControlRoom,
    ControlRoomError,
    ControlRoomUnavailable,
    ControlRoomUnreachable,
    Forbidden,
    InvalidKey,
    InvalidResponse,
    NotConnected,
    NotFound,
    ProviderUnavailable,
    RateLimited,
    ReauthorizationRequired,
    RefreshBackoff,
    TemporaryError,
)
from controlroom_client.errors import ERRORS_BY_CODE
from django.utils import timezone

from connections.models import OAuthToken
from tests.client.conftest import StubAnswer
from tests.conftest import shared_token
from tests.connections.endpoint.test_token_endpoint_schema import SPEC
from tests.support.processes import closed_port

pytestmark = pytest.mark.django_db(transaction=True)


def raised_by(client: ControlRoom, slug: str, **kwargs) -> ControlRoomError:
    with pytest.raises(ControlRoomError) as raised:
        client.token(slug, **kwargs)
    return raised.value


def raised_by_new_client(url: str, key: str, slug: str) -> ControlRoomError:
    """The error a client of its own gets; its session closed at once (no live server thread left waiting)."""
    with ControlRoom(url, key, timeout=10) as client:
        return raised_by(client, slug)


def assert_no_key_in(error: ControlRoomError, key: str) -> None:
    for text in (str(error), repr(error), error.detail, *map(str, error.args)):
        assert key not in text
    assert key[:16] not in str(error)


def test_every_code_of_the_contract_has_its_class():
    codes = yaml.safe_load(SPEC.read_text())["components"]["schemas"]["ErrorCode"]["enum"]
    assert sorted(ERRORS_BY_CODE) == sorted(codes)
    assert len({cls.exit_code for cls in ERRORS_BY_CODE.values()}) == len(codes)


def test_a_wrong_key_is_invalid_key(live_server, bot_connection):
    wrong_key = "crk_0123456789ab_" + "x" * 40
    error = raised_by_new_client(live_server.url, wrong_key, bot_connection.slug)
    assert type(error) is InvalidKey
    assert (error.status, error.code, error.retry_after) == (401, "invalid_key", None)
    assert error.detail
    assert_no_key_in(error, wrong_key)


def test_a_connection_no_role_of_the_key_is_invited_to_is_forbidden(control_room, make_connection, bot):
    private = make_connection()
    error = raised_by(control_room, private.slug)
    assert type(error) is Forbidden
    assert (error.status, error.code, error.retry_after) == (403, "forbidden", None)
    assert error.detail == f"None of the roles of {bot.user.username} is invited to use {private.slug}."
    assert_no_key_in(error, bot.raw_key)


def test_an_unknown_slug_is_not_found(control_room, bot):
    error = raised_by(control_room, "no-such-connection")
    assert type(error) is NotFound
    assert (error.status, error.code, error.retry_after) == (404, "not_found", None)
    assert error.detail == "No connection is named 'no-such-connection'."
    assert_no_key_in(error, bot.raw_key)


def test_a_connection_nobody_authorized_is_not_connected(control_room, make_connection, bot):
    pending = make_connection()
    bot.invite(pending)
    error = raised_by(control_room, pending.slug)
    assert type(error) is NotConnected
    assert (error.status, error.code, error.retry_after) == (409, "not_connected", None)
    assert error.detail.startswith(f"{pending.slug} is not connected: nobody has")


def test_a_grant_the_provider_rejects_is_reauthorization_required(control_room, bot_connection, authserver, bot):
    # given a provider that now rejects the refresh token
    authserver.set_fault("invalid_grant", description="Token has been expired or revoked.")

    # when the bot forces a refresh, and asks again
    refused = raised_by(control_room, bot_connection.slug, force_refresh=True)
    again = raised_by(control_room, bot_connection.slug)

    # then both say someone must authorize again
    assert type(refused) is type(again) is ReauthorizationRequired
    assert (refused.status, refused.code, refused.retry_after) == (409, "reauthorization_required", None)
    assert refused.detail.startswith("The provider rejected the grant (invalid_grant)")
    assert again.detail.startswith(f"{bot_connection.slug} must be authorized again")
    assert not isinstance(refused, TemporaryError)
    assert_no_key_in(refused, bot.raw_key)


def test_a_failing_provider_with_an_expired_token_is_unavailable_then_in_backoff(
    control_room, recorder, bot_connection, authserver
):
    # given an expired token and a provider that answers 500
    OAuthToken.objects.filter(connection=bot_connection).update(expires_at=timezone.now() - timedelta(minutes=1))
    authserver.set_fault("status_500")

    # when the bot asks: Control Room tries the provider, which fails, and no valid token is left
    unavailable = raised_by(control_room, bot_connection.slug)

    # then it is told to come back when the next refresh is due (Retry-After, in seconds)
    next_refresh_in = (shared_token(bot_connection).next_refresh_at - timezone.now()).total_seconds()
    assert type(unavailable) is ProviderUnavailable
    assert (unavailable.status, unavailable.code) == (503, "provider_unavailable")
    assert unavailable.detail.startswith("The provider is unavailable and no valid token is left")
    assert unavailable.retry_after == int(recorder.last_retry_after())
    assert 1 <= unavailable.retry_after <= next_refresh_in + 2
    assert isinstance(unavailable, TemporaryError)
    assert authserver.stats()["token_requests"]["refresh_token"] == 1

    # and when it asks again before then, the provider is not asked: the refresh is in backoff
    backoff = raised_by(control_room, bot_connection.slug)
    assert type(backoff) is RefreshBackoff
    assert (backoff.status, backoff.code) == (424, "refresh_backoff")
    assert backoff.detail.startswith(f"Recent refreshes of {bot_connection.slug} failed")
    assert backoff.retry_after == int(recorder.last_retry_after())
    assert 1 <= backoff.retry_after <= next_refresh_in + 2
    assert authserver.stats()["token_requests"]["refresh_token"] == 1


def test_a_token_url_that_refuses_connections_is_provider_unavailable(control_room, recorder, make_connection, bot):
    # given a client-credentials connection whose token URL is a closed port
    down = make_connection(
        grant_type="client_credentials", register=False, token_url=f"http://127.0.0.1:{closed_port()}/o/token/"
    )
    bot.invite(down)

    error = raised_by(control_room, down.slug)

    assert type(error) is ProviderUnavailable
    assert (error.status, error.code, error.retry_after) == (503, "provider_unavailable", 30)
    assert recorder.last_retry_after() == "30"
    assert error.detail.startswith("The provider is unavailable and no valid token is left")


def test_too_many_requests_are_rate_limited(control_room, recorder, bot_connection, settings, one_rate_window, bot):
    # given a limit of one token a minute per key, and the one taken
    settings.TOKEN_RATE_LIMIT_PER_MINUTE = 1
    control_room.token(bot_connection.slug)
    control_room.forget()

    # when the bot asks again this minute
    error = raised_by(control_room, bot_connection.slug)

    # then it is told how long until the next minute
    assert type(error) is RateLimited
    assert (error.status, error.code) == (429, "rate_limited")
    assert error.detail == "This key may ask for 1 tokens a minute; retry shortly."
    assert error.retry_after == int(recorder.last_retry_after())
    assert 1 <= error.retry_after <= 60
    assert isinstance(error, TemporaryError)
    assert_no_key_in(error, bot.raw_key)


def test_a_min_validity_out_of_range_is_bad_request(control_room, bot_connection):
    # given a token kept in memory: a day of validity is more than it has, so Control Room is asked
    control_room.token(bot_connection.slug)
    error = raised_by(control_room, bot_connection.slug, min_validity=86401)
    assert type(error) is BadRequest
    assert (error.status, error.code, error.retry_after) == (400, "bad_request", None)
    assert error.detail == "min_validity must be whole seconds from 0 to 86400."


def test_no_answer_is_unreachable(bot):
    url = f"http://127.0.0.1:{closed_port()}"
    error = raised_by_new_client(url, bot.raw_key, "any")
    assert type(error) is ControlRoomUnreachable
    assert (error.status, error.code, error.retry_after) == (None, "unreachable", None)
    assert error.detail.startswith(f"Cannot reach Control Room at {url}: ConnectionError")
    assert "Connection refused" in error.detail
    assert isinstance(error, TemporaryError)
    assert_no_key_in(error, bot.raw_key)


def test_a_wrong_path_is_an_invalid_response(live_server, bot, bot_connection):
    # given a URL under which Django answers its HTML 404 page
    error = raised_by_new_client(live_server.url + "/not-here", bot.raw_key, bot_connection.slug)
    assert type(error) is InvalidResponse
    assert (error.status, error.code) == (404, "invalid_response")
    assert "text/html" in error.detail
    assert "check CONTROLROOM_URL" in error.detail


def test_a_redirect_is_not_followed(live_server, bot, stub_server):
    # given a URL that redirects elsewhere (the key must not follow)
    stub_server.answer.status = 301
    stub_server.answer.headers = {"Location": live_server.url + "/api/v1/connections/x/token"}
    error = raised_by_new_client(stub_server.url, bot.raw_key, "x")
    assert type(error) is InvalidResponse
    assert error.status == 301
    assert live_server.url in error.detail
    assert len(stub_server.received) == 1


def test_a_200_without_a_token_is_an_invalid_response(stub_server, bot):
    stub_server.answer_json(200, {"connection": "x", "token_type": "Bearer"})
    error = raised_by_new_client(stub_server.url, bot.raw_key, "x")
    assert type(error) is InvalidResponse
    assert error.detail.startswith("Control Room answered HTTP 200 without a usable token (the answer has no")


def test_an_unknown_error_code_is_the_base_class(stub_server, bot):
    # given an answer with a code this client does not know (a newer Control Room), and Retry-After as a date
    stub_server.answer_json(
        418, {"error": "maintenance", "detail": "Back at noon."}, **{"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}
    )
    error = raised_by_new_client(stub_server.url, bot.raw_key, "x")
    assert type(error) is ControlRoomError
    assert (error.status, error.code, error.detail, error.retry_after) == (418, "maintenance", "Back at noon.", 0)
    assert str(error) == "maintenance (HTTP 418): Back at noon. Retry after 0 s."
    assert stub_server.received[0]["authorization"] == f"Bearer {bot.raw_key}"
    assert stub_server.received[0]["path"] == "/api/v1/connections/x/token?min_validity=60"


@pytest.mark.parametrize(
    ("status", "content_type", "body"),
    [
        (502, "text/html", b"<html><body>Bad gateway</body></html>"),  # a proxy while Control Room restarts
        (500, "application/json", b'{"error": "server_error"}'),  # a code of no token endpoint
        (503, "text/plain", b"Service Unavailable"),
    ],
)
def test_a_failing_control_room_is_a_temporary_error(stub_server, bot, status, content_type, body):
    # given Control Room (or the proxy before it) failing for now, asking to come back in 10 s
    stub_server.answer = StubAnswer(status, {"Content-Type": content_type, "Retry-After": "10"}, body)
    # when a bot asks, then it gets an error worth retrying later, which says so
    error = raised_by_new_client(stub_server.url, bot.raw_key, "x")
    assert type(error) is ControlRoomUnavailable and isinstance(error, TemporaryError)
    assert (error.status, error.retry_after) == (status, 10)
    assert "failing for now" in error.detail and "CONTROLROOM_URL" not in error.detail
