"""ControlRoomAuth: a real resource request to the loopback provider's protected API; a token the provider no
longer accepts gets one forced refresh and one retry, and a second 401 is returned as it is."""

import io
from datetime import timedelta

import pytest
import requests
from controlroom_client import ControlRoomAuth, ProviderUnavailable, ReauthorizationRequired
from django.utils import timezone

from connections.models import Connection
from tests.client.conftest import StubAnswer, revoke_at_provider
from tests.conftest import authorize_and_store_token, refresh_shared_token, shared_token
from tests.support.authserver import AuthServer
from tests.support.waiting import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

SHORT_LIFETIME = 3  # seconds the short-lived provider's access tokens live


@pytest.fixture
def expiring_early(short_lived_authserver, make_connection, manager_client, bot) -> tuple[Connection, AuthServer]:
    """A connection, invited to the bot's role, whose provider's access tokens die after SHORT_LIFETIME seconds
    without saying so (no expires_in): Control Room assumes the default lifetime, an hour."""
    provider = short_lived_authserver(SHORT_LIFETIME)
    provider.set_token_options(omit_expires_in=True)
    connection = make_connection(server=provider)
    authorize_and_store_token(manager_client, connection, provider)
    bot.invite(connection)
    return connection, provider


def test_the_auth_sends_the_connections_token(control_room, recorder, bot_connection, authserver):
    # when the bot calls the provider's API with the auth, twice
    auth = ControlRoomAuth(bot_connection.slug, client=control_room)
    with requests.Session() as session:
        first = session.get(authserver.userinfo_url, auth=auth, timeout=10)
        second = session.get(authserver.userinfo_url, auth=auth, timeout=10)

    # then the provider accepted Control Room's token, asked for once
    assert first.status_code == second.status_code == 200
    assert first.json()["username"] == "alice"
    assert first.request.headers["Authorization"] == f"Bearer {shared_token(bot_connection).access_token}"
    assert len(recorder.token_requests()) == 1


def test_a_token_the_provider_dropped_early_is_replaced_and_the_request_sent_again(
    control_room, recorder, expiring_early
):
    # given a token the bot holds, which the provider stopped accepting while Control Room still holds it as
    # valid for an hour (the provider said no lifetime, as Salesforce's session timeout does)
    connection, provider = expiring_early
    held = control_room.token(connection.slug)
    wait_for(lambda: provider.whoami(held).status_code == 401, 30, "the provider to refuse the token", interval=0.25)
    stored = shared_token(connection)
    assert stored.access_token == held
    assert stored.expires_at > timezone.now() + timedelta(minutes=50)

    # when the bot calls the provider's API with the auth
    with requests.Session() as session:
        session.auth = ControlRoomAuth(connection.slug, client=control_room)
        response = session.get(provider.userinfo_url, timeout=10)

    # then the 401 made the client ask Control Room once with force_refresh, which refreshed at the provider,
    # and the request went again with the fresh token, which the provider accepted
    assert response.status_code == 200, response.text
    assert response.json()["username"] == "alice"
    assert [r.status_code for r in response.history] == [401]
    assert response.history[0].request.headers["Authorization"] == f"Bearer {held}"
    fresh = shared_token(connection).access_token
    assert fresh != held
    assert response.request.headers["Authorization"] == f"Bearer {fresh}"
    assert recorder.token_requests() == [{"min_validity": ["60"]}, {"min_validity": ["60"], "force_refresh": ["true"]}]
    # and the fresh token is kept for the next calls
    assert control_room.token(connection.slug) == fresh
    assert len(recorder.token_requests()) == 2


def test_a_token_rotated_away_by_a_refresh_elsewhere_is_replaced(control_room, recorder, bot_connection, authserver):
    # given a token the bot holds, and a refresh by a worker since (the provider drops the old access token when
    # it rotates the refresh token)
    held = control_room.token(bot_connection.slug)
    refresh_shared_token(bot_connection)
    assert authserver.whoami(held).status_code == 401

    # when the bot calls the provider's API with the auth
    response = requests.get(
        authserver.userinfo_url, auth=ControlRoomAuth(bot_connection.slug, client=control_room), timeout=10
    )

    # then it was sent again with the token Control Room holds now, and accepted
    assert response.status_code == 200, response.text
    assert [r.status_code for r in response.history] == [401]
    assert response.request.headers["Authorization"] == f"Bearer {shared_token(bot_connection).access_token}"
    assert recorder.token_requests()[1]["force_refresh"] == ["true"]


def test_a_second_401_is_returned_without_another_retry(control_room, recorder, bot_connection, stub_server):
    # given a resource server that refuses every token
    stub_server.answer_json(401, {"error": "invalid_token"}, **{"WWW-Authenticate": 'Bearer error="invalid_token"'})

    # when the bot calls it with the auth
    response = requests.get(
        stub_server.url + "/api/orders", auth=ControlRoomAuth(bot_connection.slug, client=control_room), timeout=10
    )

    # then it was sent twice, the second time with a token got with force_refresh, and the second 401 is the answer
    assert response.status_code == 401
    assert len(response.history) == 1
    first_token, second_token = (received["authorization"] for received in stub_server.received)
    assert len(stub_server.received) == 2
    assert first_token != second_token
    assert second_token == f"Bearer {shared_token(bot_connection).access_token}"
    assert len(recorder.token_requests()) == 2
    assert recorder.token_requests()[1]["force_refresh"] == ["true"]


@pytest.mark.parametrize("replaced_recently", [30.0, 0.0])
def test_a_resource_that_keeps_refusing_fresh_tokens_costs_one_forced_refresh(
    control_room, recorder, bot_connection, stub_server, monkeypatch, replaced_recently
):
    # given a resource server that refuses every token (a scope the connection lacks, say)
    stub_server.answer_json(401, {"error": "insufficient_scope"})
    monkeypatch.setattr("controlroom_client.client.REPLACED_RECENTLY", replaced_recently)
    auth = ControlRoomAuth(bot_connection.slug, client=control_room)

    # when a bot calls it five times in a row
    answers = [requests.get(stub_server.url + "/api/orders", auth=auth, timeout=10) for _ in range(5)]

    # then every call gets its 401; a token replaced moments ago is not replaced again (nor the call retried):
    # Control Room is asked for a forced refresh once, not once a call
    assert [answer.status_code for answer in answers] == [401] * 5
    forced = [query for query in recorder.token_requests() if query.get("force_refresh") == ["true"]]
    if replaced_recently:
        assert len(forced) == 1 and len(stub_server.received) == 6  # the first call's retry, then one each
    else:  # without the pause: one forced refresh and one retry per call
        assert len(forced) == 5 and len(stub_server.received) == 10


def test_a_body_is_sent_again_with_the_retry(control_room, bot_connection, stub_server, monkeypatch):
    stub_server.answer_json(401, {"error": "invalid_token"})
    monkeypatch.setattr("controlroom_client.client.REPLACED_RECENTLY", 0.0)  # each call retries
    auth = ControlRoomAuth(bot_connection.slug, client=control_room)

    requests.post(stub_server.url + "/bytes", data=b"payload", auth=auth, timeout=10)
    requests.post(stub_server.url + "/file", data=io.BytesIO(b"from a file"), auth=auth, timeout=10)

    assert [(r["path"], r["body"]) for r in stub_server.received] == [
        ("/bytes", b"payload"),
        ("/bytes", b"payload"),
        ("/file", b"from a file"),
        ("/file", b"from a file"),
    ]


def test_a_streamed_body_is_not_sent_twice(control_room, bot_connection, stub_server):
    # given a body that can be read only once
    stub_server.answer_json(401, {"error": "invalid_token"})
    chunks = iter([b"once"])

    # when the resource server refuses the token
    response = requests.post(
        stub_server.url + "/stream",
        data=chunks,
        auth=ControlRoomAuth(bot_connection.slug, client=control_room),
        timeout=10,
    )

    # then the 401 is the answer (nothing half sent again), and the next request already has the fresh token
    assert response.status_code == 401
    assert len(stub_server.received) == 1
    assert control_room.token(bot_connection.slug) == shared_token(bot_connection).access_token
    assert f"Bearer {control_room.token(bot_connection.slug)}" != stub_server.received[0]["authorization"]


def test_a_revoked_grant_raises_the_typed_error(control_room, bot_connection, authserver):
    # given the bot's token revoked at the provider, which revokes the refresh token with it (RFC 7009 2.1)
    revoked = control_room.token(bot_connection.slug)
    revoke_at_provider(authserver, bot_connection, revoked)

    # when / then: the bot learns why, not just a 401
    with pytest.raises(ReauthorizationRequired) as raised:
        requests.get(
            authserver.userinfo_url, auth=ControlRoomAuth(bot_connection.slug, client=control_room), timeout=10
        )
    assert raised.value.status == 409
    assert raised.value.detail.startswith("The provider rejected the grant (invalid_grant)")


def test_401s_for_the_same_token_cost_one_forced_refresh(control_room, recorder, bot_connection, authserver):
    # given a token that two requests sent, and both were refused
    old = control_room.token(bot_connection.slug)

    # when each of them asks for a replacement
    first = control_room.replace_rejected(bot_connection.slug, old)
    second = control_room.replace_rejected(bot_connection.slug, old)

    # then the second takes the token the first one got: Control Room was asked once with force_refresh
    assert first == second
    assert first.access_token != old
    assert authserver.whoami(first.access_token).status_code == 200
    assert [query.get("force_refresh") for query in recorder.token_requests()] == [None, ["true"]]


def test_a_401_after_a_redirect_to_another_host_gets_no_token_sent_there(
    control_room, recorder, bot_connection, stub_server
):
    # given a resource that redirects to another host (localhost, not 127.0.0.1), which refuses the request
    port = stub_server.url.rsplit(":", 1)[1]
    stub_server.answers["/start"] = StubAnswer(302, {"Location": f"http://localhost:{port}/elsewhere"}, b"")
    stub_server.answer_json(401, {"error": "invalid_token"})
    # when the bot calls it with the auth
    response = requests.get(
        stub_server.url + "/start", auth=ControlRoomAuth(bot_connection.slug, client=control_room), timeout=10
    )
    # then the other host's 401 is the answer: requests left the token out there, and the auth did not put it back
    assert response.status_code == 401
    assert [received["authorization"] for received in stub_server.received] == [
        f"Bearer {shared_token(bot_connection).access_token}",
        None,
    ]
    assert len(recorder.token_requests()) == 1  # no forced refresh either


def test_a_401_while_the_provider_is_down_raises_provider_unavailable(
    control_room, bot_connection, authserver, stub_server
):
    # given a resource that refuses the token, and a provider that cannot refresh it now
    stub_server.answer_json(401, {"error": "invalid_token"})
    authserver.set_fault("status_500", grant_types=["refresh_token"])
    # when the bot calls the resource with the auth
    with pytest.raises(ProviderUnavailable) as raised:
        requests.get(
            stub_server.url + "/api", auth=ControlRoomAuth(bot_connection.slug, client=control_room), timeout=10
        )
    # then it is told the forced refresh failed, when to ask again, and that its token is still valid meanwhile
    assert raised.value.retry_after and raised.value.retry_after >= 1
    assert "without force_refresh" in str(raised.value)
    assert len(stub_server.received) == 1  # the dead token was not sent again
