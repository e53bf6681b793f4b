"""Fenced refresh writes (connections.engine.refresh): a refresh result is written only while the row is still what the
refresher leased. A disconnect or a re-authorization during an in-flight refresh wins, and the late result's
new tokens are revoked at the provider; the provider call ends before the lease does.

Real threads, a real loopback provider that holds a refresh's answer after it has processed it (the refresh token
already rotated) until the test releases it, and committed transactions. No time window decides a result: the
test's own action happens while the answer is held, whatever the machine's speed.
"""

import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import pytest
from django.db import connections as db_connections

from connections import services
from connections.engine import lease, refresh
from connections.errors import ProviderError, TokenGone
from connections.models import AuditEvent, OAuthToken, TokenState
from providers.models import Provider
from tests.conftest import authorize_and_store_token, shared_token

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(1) as threads:
        yield threads


def refresh_held_at_its_answer(pool: ThreadPoolExecutor, authserver, token: OAuthToken) -> Future:
    """Start refreshing `token` in another thread; return once the provider has processed the refresh (rotated
    its refresh token, or decided to refuse it) and holds its answer until authserver.release(). The future's
    result is the refreshed token, or raises what the refresh raised."""
    authserver.hold(["refresh_token"], stage="answer")

    def run() -> OAuthToken:
        try:
            leased = OAuthToken.objects.select_related("connection__provider", "user").get(pk=token.pk)
            return refresh.token_refresh(token=leased, actor_label="slow refresher")
        finally:
            db_connections.close_all()

    future = pool.submit(run)
    authserver.wait_held(1)
    return future


def answered(future: Future, authserver) -> OAuthToken | BaseException:
    """Release the held answer; what the refresh returned or raised."""
    authserver.release()
    return future.exception(timeout=30) or future.result()


def test_a_disconnect_during_a_refresh_stays_disconnected_and_the_late_tokens_are_revoked(
    bot_connection, authserver, manager, pool
):
    # a provider type whose revocation ends a token alone, so what nobody holds is revoked (revoke_replaced_grant)
    Provider.objects.filter(pk=bot_connection.provider_id).update(revoke_replaced_grant=True)
    # given a refresh the provider has processed but not yet answered
    in_flight = refresh_held_at_its_answer(pool, authserver, shared_token(bot_connection))
    # when an administrator disconnects meanwhile, and then the answer comes
    services.connection_disconnect(connection=bot_connection, actor=manager)
    outcome = answered(in_flight, authserver)

    # then the refresher is told the token is gone
    assert isinstance(outcome, TokenGone), outcome
    # and the connection stays disconnected: no token for bots, nothing the provider still accepts
    assert not OAuthToken.objects.filter(connection=bot_connection).exists()
    assert authserver.live_grants(bot_connection.client_id) == {"refresh_tokens": 0, "access_tokens": 0}
    assert authserver.stats()["refresh_token_reuses"] == 0


def test_where_revoking_may_end_the_whole_grant_a_late_result_is_left_to_expire(
    bot_connection, authserver, manager, pool
):
    # given a provider type whose revocation may end the person's whole authorization (revoke_replaced_grant off),
    # and a refresh the provider has processed but not yet answered
    in_flight = refresh_held_at_its_answer(pool, authserver, shared_token(bot_connection))
    # when an administrator disconnects meanwhile, and then the answer comes
    services.connection_disconnect(connection=bot_connection, actor=manager)
    outcome = answered(in_flight, authserver)
    # then the refresher is told the token is gone, and the connection stays disconnected, but the late result is
    # not revoked: at such a provider that could end a grant someone holds (it expires on its own; the disconnect
    # revoked what was stored)
    assert isinstance(outcome, TokenGone), outcome
    assert not OAuthToken.objects.filter(connection=bot_connection).exists()
    assert authserver.live_grants(bot_connection.client_id) == {"refresh_tokens": 1, "access_tokens": 1}


def test_a_reauthorization_during_a_refresh_is_not_undone_by_the_late_result(
    bot_connection, authserver, manager_client, pool
):
    # a provider type whose revocation ends a token alone, so what nobody holds is revoked (revoke_replaced_grant)
    Provider.objects.filter(pk=bot_connection.provider_id).update(revoke_replaced_grant=True)
    # given a refresh the provider has processed but not yet answered
    before = shared_token(bot_connection)
    in_flight = refresh_held_at_its_answer(pool, authserver, before)
    # when the administrator authorizes the connection again meanwhile (a new grant), and then the answer comes
    authorize_and_store_token(manager_client, bot_connection, authserver)
    reauthorized = shared_token(bot_connection)
    assert reauthorized.authorized_at > before.authorized_at
    outcome = answered(in_flight, authserver)

    # then the refresher gets the new grant's token, not its own late result
    assert isinstance(outcome, OAuthToken), outcome
    assert (outcome.access_token, outcome.generation) == (reauthorized.access_token, reauthorized.generation)
    # and the new grant's tokens stay, and the late result of the old grant is revoked at the provider
    stored = shared_token(bot_connection)
    assert (stored.access_token, stored.refresh_token) == (reauthorized.access_token, reauthorized.refresh_token)
    assert stored.state == TokenState.ACTIVE and stored.lease_owner == ""
    assert authserver.whoami(stored.access_token).status_code == 200
    assert authserver.live_grants(bot_connection.client_id)["refresh_tokens"] == 1
    # and the new grant's refresh token is the live one
    assert refresh.token_refresh(token=stored, actor_label="test").generation == stored.generation + 1


def test_a_late_rejection_of_the_old_grant_does_not_mark_the_new_one_for_reauthorization(
    bot_connection, authserver, manager_client, manager, mailoutbox, pool
):
    manager.email = "ops@example.com"
    manager.save()
    # given a refresh the provider has decided to reject, but has not said so yet
    authserver.set_fault("invalid_grant", count=1, grant_types=["refresh_token"])
    in_flight = refresh_held_at_its_answer(pool, authserver, shared_token(bot_connection))
    # when the administrator authorizes the connection again meanwhile, and then the rejection comes
    authorize_and_store_token(manager_client, bot_connection, authserver)
    outcome = answered(in_flight, authserver)

    # then the refresher is told of the rejection
    assert isinstance(outcome, ProviderError) and not isinstance(outcome, TokenGone), outcome
    assert (outcome.error, outcome.permanent) == ("invalid_grant", True), outcome.message
    # and the new grant is connected, and nobody is told to authorize it again
    stored = shared_token(bot_connection)
    assert (stored.state, stored.last_error, stored.consecutive_failures) == (TokenState.ACTIVE, "", 0)
    assert mailoutbox == []
    assert not AuditEvent.objects.filter(action="token_refresh", outcome="failure", detail__startswith="Permanent")


def test_the_provider_call_ends_before_the_lease_so_nobody_else_presents_the_refresh_token(
    bot_connection, authserver, settings
):
    # given a provider that sends its answer a few bytes at a time, each well within the read timeout, for far
    # longer than the lease lasts
    settings.OUTBOUND_TIMEOUT = 1
    lease_length = lease.lease_seconds()
    authserver.set_fault("drip", delay=0.5, grant_types=["refresh_token"])
    token = shared_token(bot_connection)

    # when the token is refreshed
    started = time.monotonic()
    with pytest.raises(ProviderError) as failure:
        refresh.token_refresh(token=token, actor_label="test")
    took = time.monotonic() - started

    # then the call was cut at its deadline, before the lease could run out, and the lease is given back
    assert took < lease_length, f"the call took {took:.1f} s; the lease lasts {lease_length:.1f} s"
    assert failure.value.error == "timeout", failure.value.message
    assert shared_token(bot_connection).lease_owner == ""


def test_an_endless_answer_is_cut_at_a_bounded_size(bot_connection, authserver):
    authserver.set_fault("huge", grant_types=["refresh_token"])
    with pytest.raises(ProviderError) as failure:
        refresh.token_refresh(token=shared_token(bot_connection), actor_label="test")
    assert failure.value.error == "invalid_response" and "too large" in failure.value.message
    assert shared_token(bot_connection).state == TokenState.REFRESH_FAILING
