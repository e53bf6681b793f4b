"""Storing a token response (connections.engine.store): rotation-safe writes, default lifetimes and refresh margins."""

from datetime import timedelta

import pytest
import time_machine
from django.utils import timezone

from connections.engine import store as tokens
from connections.oauth.client import TokenResponse
from tests.conftest import refresh_shared_token, shared_token

pytestmark = pytest.mark.django_db


def test_rotation_stores_the_new_refresh_token_with_the_new_access_token(bot_connection, authserver):
    before = shared_token(bot_connection)
    after = refresh_shared_token(bot_connection)
    assert after.refresh_token != before.refresh_token and after.access_token != before.access_token
    assert after.generation == before.generation + 1
    # The old refresh token is spent at the provider; the stored one is the one that works.
    authserver.set_fault("none")
    assert refresh_shared_token(bot_connection).access_token != after.access_token


def test_a_response_without_refresh_token_keeps_the_old_one_and_merges_fields(bot_connection, authserver):
    authserver.set_token_extra({"instance_url": "https://acme.example"})
    first = refresh_shared_token(bot_connection)
    authserver.set_token_options(omit_refresh_token_on_refresh=True)
    authserver.set_token_extra({"issued_at": "1700000000"})
    second = refresh_shared_token(bot_connection)
    assert second.refresh_token == first.refresh_token
    assert second.extra == {"instance_url": "https://acme.example", "issued_at": "1700000000"}


def test_no_expires_in_uses_the_default_lifetime_so_the_token_is_still_refreshed(bot_connection, authserver, settings):
    authserver.set_token_options(omit_expires_in=True)
    bot_connection.default_token_lifetime = 1200
    bot_connection.save()
    token = refresh_shared_token(bot_connection)
    lifetime = (token.expires_at - token.obtained_at).total_seconds()
    assert lifetime == pytest.approx(1200, abs=2)
    margin = timedelta(seconds=settings.TOKEN_REFRESH_MARGIN)
    assert (
        token.expires_at - margin <= token.next_refresh_at <= token.expires_at - margin * (1 - settings.REFRESH_JITTER)
    )


def test_tokens_issued_together_are_due_at_spread_times_inside_their_margin(make_connection, settings):
    # given a herd: 200 one-hour tokens stored in the same second (as after apply_config)
    connection = make_connection(register=False)
    settings.REFRESH_JITTER = 0.2
    response = TokenResponse("a", "r", "", "Bearer", "", 3600, {})
    with time_machine.travel(timezone.now(), tick=False):
        due = [tokens._expiry(connection, response) for _ in range(200)]
    # then each is refreshed inside the first fifth of its 5-minute margin, never later, and they are spread
    # over that minute rather than all due at one moment
    margin = timedelta(seconds=settings.TOKEN_REFRESH_MARGIN)
    assert all(expires - margin <= refresh_at <= expires - margin * 0.8 for expires, refresh_at in due)
    refresh_times = sorted(refresh_at for _, refresh_at in due)
    assert refresh_times[-1] - refresh_times[0] > margin * 0.15
    assert len(set(refresh_times)) == 200


def test_the_margin_is_never_more_than_half_the_lifetime(make_connection, settings):
    connection = make_connection(register=False)
    assert tokens.refresh_margin(connection, 60) == 30
    assert tokens.refresh_margin(connection, 3600) == settings.TOKEN_REFRESH_MARGIN
    connection.provider.refresh_margin = 900
    assert tokens.refresh_margin(connection, 3600) == 900
    assert tokens.refresh_margin(connection, 1000) == 500
