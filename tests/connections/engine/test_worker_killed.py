"""A worker killed (SIGKILL, pool children and all) in the middle of a refresh: its lease runs out, the next
attempt succeeds, and nothing is lost.

The kill lands while the refresh request is in flight but *before* the provider has processed it: the
connection's token URL points at a relay (tests/support/relay.py) that holds each request before forwarding
it, and forwards nothing for a client that went away. A kill after the provider processed a rotating refresh
would lose the refresh token for real (the answer carrying its successor dies with the worker): that is the
OAuth rotation hazard, not what this test is about.
"""

from datetime import timedelta

import pytest
from django.utils import timezone

from connections.models import AuditEvent, OAuthToken
from tests.conftest import authorize_and_store_token, get_token, shared_token
from tests.support.relay import Relay
from tests.support.stack import refresh_requests

pytestmark = pytest.mark.django_db(transaction=True)

OUTBOUND_TIMEOUT = 3  # the lease is 2 x this + 5 = 11 s (services._lease_seconds)
HOLD = 60  # the relay holds the first worker's request far longer than it lives


@pytest.fixture
def relay(authserver):
    with Relay("127.0.0.1", authserver.port) as started:
        yield started


def assert_refreshed_once(authserver, connection, before, refreshed, logs: str) -> None:
    assert refreshed.generation == before.generation + 1
    assert refreshed.access_token != before.access_token
    assert refreshed.refresh_token and refreshed.refresh_token != before.refresh_token
    assert (refreshed.state, refreshed.consecutive_failures, refreshed.last_error) == ("active", 0, "")
    assert (refreshed.lease_owner, refreshed.lease_expires_at) == ("", None)
    assert refreshed.expires_at > timezone.now() + timedelta(minutes=50)
    assert authserver.whoami(refreshed.access_token).json()["username"] == "alice"
    refreshes = AuditEvent.objects.filter(connection=connection, action="token_refresh")
    assert list(refreshes.values_list("outcome", "actor_label")) == [("success", "refresh worker")], logs


def assert_a_forced_refresh_works(authserver, bot, connection, old: tuple[str, str]) -> None:
    response = get_token(bot.raw_key, connection.slug, force_refresh="true")
    assert response.status_code == 200, response.content
    assert response.json()["access_token"] not in old
    assert authserver.whoami(response.json()["access_token"]).status_code == 200
    assert refresh_requests(authserver) == 2


def test_a_killed_workers_lease_expires_and_the_next_attempt_succeeds(
    make_stack, make_connection, manager_client, authserver, bot, relay
):
    # given a connection whose token URL goes through the relay, connected, and one worker and beat
    connection = make_connection(token_url=relay.url("/o/token/"))
    authorize_and_store_token(manager_client, connection, authserver)
    bot.invite(connection)
    before = shared_token(connection)
    assert before is not None and before.refresh_token
    before_values = (before.access_token, before.refresh_token)
    forwarded_before = relay.snapshot().forwarded  # the code exchange
    stack = make_stack(BEAT_INTERVAL=2, OUTBOUND_TIMEOUT=OUTBOUND_TIMEOUT)
    stack.worker("worker-1", pool="prefork", concurrency=1)
    stack.beat()

    # when the token is due, and the worker is killed while its refresh request waits at the relay
    relay.delay = HOLD
    OAuthToken.objects.filter(pk=before.pk).update(next_refresh_at=timezone.now() - timedelta(seconds=1))

    leased = stack.wait_until(
        lambda: relay.snapshot().holding == 1 and (token := OAuthToken.objects.get(pk=before.pk)).lease_owner and token,
        20,
        "worker-1 to take the lease and send its refresh",
    )
    stack.kill("worker-1")
    stack.wait_until(lambda: relay.snapshot().dropped == 1, 10, "the relay to see the killed worker's socket close")

    # then the provider saw nothing, and the dead worker's lease is still there, with the old token intact
    assert refresh_requests(authserver) == 0, stack.logs()
    assert relay.snapshot().forwarded == forwarded_before
    stuck = OAuthToken.objects.get(pk=before.pk)
    assert stuck.lease_owner == leased.lease_owner and stuck.lease_expires_at > timezone.now()
    assert (stuck.generation, stuck.access_token, stuck.refresh_token) == (before.generation, *before_values)
    # and bots are still served the current token meanwhile
    response = get_token(bot.raw_key, connection.slug, min_validity="0")
    assert response.status_code == 200 and response.json()["access_token"] == before.access_token

    # when the lease has run out and a new worker starts (the provider answers at once now)
    relay.delay = 0
    stack.wait_until(
        lambda: timezone.now() > stuck.lease_expires_at + timedelta(seconds=0.5), 30, "the dead worker's lease to end"
    )
    assert refresh_requests(authserver) == 0, "someone refreshed while a lease was held\n" + stack.logs()
    stack.worker("worker-2", pool="prefork", concurrency=1)
    refreshed = stack.wait_until(
        lambda: (token := OAuthToken.objects.get(pk=before.pk)).generation > before.generation and token,
        40,
        "the next attempt (a sweep re-queues the lost task) to refresh the token",
    )

    # then one refresh succeeded, by worker-2: new access token, refresh token rotated once, lease released
    logs = stack.logs()
    assert refresh_requests(authserver) == 1, logs
    assert "connections.tasks.refresh_token" in stack.log("worker-1"), logs  # it was worker-1's task that died
    assert stack.count_in_log("worker-2", "succeeded") >= 1, logs
    assert relay.snapshot().forwarded == forwarded_before + 1
    assert_refreshed_once(authserver, connection, before, refreshed, logs)

    # and nothing is lost: the stored refresh token is the live one (a forced refresh through it works)
    assert_a_forced_refresh_works(authserver, bot, connection, old=(before.access_token, refreshed.access_token))
