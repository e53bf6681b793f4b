"""Fenced refresh writes (connections.engine.refresh): a refresh result is written only while the row is still what the
refresher leased. A disconnect or a re-authorization during an in-flight refresh wins, and the late result's
new tokens are revoked at the provider; the provider call ends before the lease does.

Real threads, a real loopback provider that answers a refresh only after it has processed it (the refresh
token already rotated), and committed transactions.
"""

import time
from concurrent.futures import Future, ThreadPoolExecutor

import pytest
from django.db import connections as db_connections

from connections import services
from connections.engine import lease, refresh
from connections.errors import ProviderError
from connections.models import AuditEvent, OAuthToken, TokenState
from providers.models import Provider
from tests.conftest import authorize, shared_token, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

LATE = 2.0  # seconds the provider holds a processed refresh's answer


def refresh_in_a_thread(pool: ThreadPoolExecutor, authserver, token: OAuthToken, *, rotates: bool = True) -> Future:
    """Start refreshing `token` in another thread; return once the provider has received the refresh and (when
    `rotates`) processed it (its old access token refused), LATE seconds before it answers."""
    arrived = authserver.stats()["token_requests"]["refresh_token"]

    def run():
        try:
            leased = OAuthToken.objects.select_related("connection__provider", "user").get(pk=token.pk)
            return refresh.token_refresh(token=leased, actor_label="slow refresher")
        except Exception as exc:  # noqa: BLE001 - the outcome is the test's to judge, whatever it is
            return exc
        finally:
            db_connections.close_all()

    future = pool.submit(run)
    wait_for(lambda: authserver.stats()["token_requests"]["refresh_token"] > arrived, 10, "the refresh at the provider")
    if rotates:
        wait_for(lambda: authserver.whoami(token.access_token).status_code != 200, 10, "the provider to process it")
    return future


def test_a_disconnect_during_a_refresh_stays_disconnected_and_the_late_tokens_are_revoked(
    connected, authserver, manager
):
    # a provider type whose revocation ends a token alone, so what nobody holds is revoked (revoke_replaced_grant)
    Provider.objects.filter(pk=connected.provider_id).update(revoke_replaced_grant=True)
    # given a refresh the provider has processed but not yet answered
    authserver.set_token_options(response_delay=LATE)
    with ThreadPoolExecutor(1) as pool:
        in_flight = refresh_in_a_thread(pool, authserver, shared_token(connected))
        # when an administrator disconnects meanwhile
        services.connection_disconnect(connection=connected, actor=manager)
        outcome = in_flight.result(timeout=30)

    # then the connection stays disconnected: no token for bots, nothing the provider still accepts
    assert not OAuthToken.objects.filter(connection=connected).exists(), outcome
    assert authserver.live_grants(connected.client_id) == {"refresh_tokens": 0, "access_tokens": 0}
    assert not isinstance(outcome, OAuthToken)
    assert authserver.stats()["refresh_token_reuses"] == 0


def test_where_revoking_may_end_the_whole_grant_a_late_result_is_left_to_expire(connected, authserver, manager):
    # given a provider type whose revocation may end the person's whole authorization (revoke_replaced_grant off),
    # and a refresh the provider has processed but not yet answered
    authserver.set_token_options(response_delay=LATE)
    with ThreadPoolExecutor(1) as pool:
        in_flight = refresh_in_a_thread(pool, authserver, shared_token(connected))
        # when an administrator disconnects meanwhile
        services.connection_disconnect(connection=connected, actor=manager)
        outcome = in_flight.result(timeout=30)
    # then the connection stays disconnected, but the late result is not revoked: at such a provider that could
    # end a grant someone holds (it expires on its own; the disconnect revoked what was stored)
    assert not OAuthToken.objects.filter(connection=connected).exists(), outcome
    assert authserver.live_grants(connected.client_id) == {"refresh_tokens": 1, "access_tokens": 1}


def test_a_reauthorization_during_a_refresh_is_not_undone_by_the_late_result(connected, authserver, manager_client):
    # a provider type whose revocation ends a token alone, so what nobody holds is revoked (revoke_replaced_grant)
    Provider.objects.filter(pk=connected.provider_id).update(revoke_replaced_grant=True)
    # given a refresh the provider has processed but not yet answered
    authserver.set_token_options(response_delay=LATE)
    before = shared_token(connected)
    with ThreadPoolExecutor(1) as pool:
        in_flight = refresh_in_a_thread(pool, authserver, before)
        # when the administrator authorizes the connection again meanwhile (a new grant)
        authorize(manager_client, connected, authserver)
        reauthorized = shared_token(connected)
        assert reauthorized.authorized_at > before.authorized_at
        outcome = in_flight.result(timeout=30)

    # then the new grant's tokens stay, and the late result of the old grant is revoked at the provider
    stored = shared_token(connected)
    assert (stored.access_token, stored.refresh_token) == (reauthorized.access_token, reauthorized.refresh_token)
    assert stored.state == TokenState.ACTIVE and stored.lease_owner == ""
    assert authserver.whoami(stored.access_token).status_code == 200
    assert authserver.live_grants(connected.client_id)["refresh_tokens"] == 1, outcome
    # and the new grant's refresh token is the live one
    assert refresh.token_refresh(token=stored, actor_label="test").generation == stored.generation + 1


def test_a_late_rejection_of_the_old_grant_does_not_mark_the_new_one_for_reauthorization(
    connected, authserver, manager_client, manager, mailoutbox
):
    manager.email = "ops@example.com"
    manager.save()
    # given a refresh the provider rejects, but only says so late
    authserver.set_token_options(response_delay=LATE)
    authserver.set_fault("invalid_grant", count=1, grant_types=["refresh_token"])
    with ThreadPoolExecutor(1) as pool:
        in_flight = refresh_in_a_thread(pool, authserver, shared_token(connected), rotates=False)
        # when the administrator authorizes the connection again meanwhile
        authorize(manager_client, connected, authserver)
        outcome = in_flight.result(timeout=30)

    # then the new grant is connected, and nobody is told to authorize it again
    stored = shared_token(connected)
    assert (stored.state, stored.last_error, stored.consecutive_failures) == (TokenState.ACTIVE, "", 0), outcome
    assert mailoutbox == []
    assert not AuditEvent.objects.filter(action="token_refresh", outcome="failure", detail__startswith="Permanent")


def test_the_provider_call_ends_before_the_lease_so_nobody_else_presents_the_refresh_token(
    connected, authserver, settings
):
    # given a provider that sends its answer a few bytes at a time, each well within the read timeout, for far
    # longer than the lease lasts
    settings.OUTBOUND_TIMEOUT = 1
    lease_length = lease.lease_seconds()
    authserver.set_fault("drip", delay=0.5, grant_types=["refresh_token"])
    token = shared_token(connected)

    # when the token is refreshed
    started = time.monotonic()
    with pytest.raises(ProviderError) as failure:
        refresh.token_refresh(token=token, actor_label="test")
    took = time.monotonic() - started

    # then the call was cut at its deadline, before the lease could run out, and the lease is given back
    assert took < lease_length, f"the call took {took:.1f} s; the lease lasts {lease_length:.1f} s"
    assert failure.value.error == "timeout", failure.value.message
    assert shared_token(connected).lease_owner == ""


def test_an_endless_answer_is_cut_at_a_bounded_size(connected, authserver):
    authserver.set_fault("huge", grant_types=["refresh_token"])
    with pytest.raises(ProviderError) as failure:
        refresh.token_refresh(token=shared_token(connected), actor_label="test")
    assert failure.value.error == "invalid_response" and "too large" in failure.value.message
    assert shared_token(connected).state == TokenState.REFRESH_FAILING
