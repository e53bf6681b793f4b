"""A provider slow to answer a refresh holds at most REFRESH_WAITERS_PER_CONNECTION request threads of a web process
(connections.endpoint.freshness): the others are answered at once, and other connections' bots are not kept
waiting."""

from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connections as db_connections

from connections.endpoint import freshness
from tests.conftest import get_token, shared_token
from tests.support.waiting import wait_for

pytestmark = pytest.mark.django_db(transaction=True)  # the requests run in threads: what they write is committed


def forced(bot, slug: str):
    try:
        return get_token(bot.raw_key, slug, force_refresh="true")
    finally:
        db_connections.close_all()


def test_requests_past_the_bound_are_answered_at_once_while_the_provider_holds_a_refresh(
    bot_connection, make_connection, authserver, bot, settings
):
    settings.REFRESH_WAITERS_PER_CONNECTION = 2
    settings.OUTBOUND_TIMEOUT = 60  # the held refresh must not time out while the test looks: it ends by release
    # Another connection of the same provider, whose tokens come by client credentials (not held below).
    other = make_connection(grant_type="client_credentials")
    bot.invite(other)
    before = shared_token(bot_connection).access_token
    # given the provider holding every refresh until the test lets it go
    authserver.hold(["refresh_token"])
    with ThreadPoolExecutor(2) as pool:
        # when two forced refreshes of one connection are under way: one calls the provider, one waits for it
        first_two = [pool.submit(forced, bot, bot_connection.slug) for _ in range(2)]
        authserver.wait_held(1)
        wait_for(lambda: freshness.requests_refreshing(bot_connection.pk) == 2, 30, "two requests in the refresh")
        # then a third forced refresh is turned away at once, saying until when the current token is valid
        third = get_token(bot.raw_key, bot_connection.slug, force_refresh="true")
        assert third.status_code == 503, third.content
        assert third.json()["error"] == "provider_unavailable" and "already wait" in third.json()["detail"]
        assert int(third["Retry-After"]) == freshness.BUSY_RETRY_AFTER
        # a request whose token lasts as long as it asks is answered with it, and so is another connection's bot
        assert get_token(bot.raw_key, bot_connection.slug).json()["access_token"] == before
        assert get_token(bot.raw_key, other.slug, force_refresh="true").status_code == 200
        assert authserver.held()["held_now"] == 1  # nothing more reached the held provider for `bot_connection`
        authserver.release()
        answers = [future.result(timeout=30) for future in first_two]
    # and the two under way get the one new token
    after = shared_token(bot_connection).access_token
    assert after != before
    assert [answer.json()["access_token"] for answer in answers] == [after, after]
    assert freshness.requests_refreshing(bot_connection.pk) == 0
