"""The refresh engine (connections.engine.refresh): single flight, the sweep, failure classes, backoff,
notifications."""

import base64
import json
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

import pytest
import redis
from django.db import connections as db_connections
from django.utils import timezone

from connections import tasks
from connections.engine import lease, outcomes, refresh, sweep
from connections.errors import ProviderError
from connections.models import OAuthToken
from tests.conftest import authorize_and_store_token, refresh_shared_token, shared_token
from tests.support.waiting import wait_for

CALLERS = 10
# The failed call's ProviderError.error, by the fault that failed it.
FAILED_AS = {"status_500": "temporarily_unavailable", "invalid_grant": "invalid_grant"}

pytestmark = pytest.mark.django_db


@pytest.fixture
def manager_with_email(manager):
    manager.email = "ops@example.com"
    manager.save()
    return manager


def test_the_sweep_claims_due_tokens_once(bot_connection, make_connection, manager_client, authserver, settings):
    disabled = make_connection()
    authorize_and_store_token(manager_client, disabled, authserver)
    disabled.is_enabled = False
    disabled.save()
    OAuthToken.objects.update(next_refresh_at=timezone.now() - timedelta(seconds=1))

    due = sweep.token_refresh_claim_due()

    token = shared_token(bot_connection)
    assert due == [(token.pk, token.generation)]
    assert token.next_refresh_at > timezone.now()  # claimed: the next sweep leaves it alone
    assert sweep.token_refresh_claim_due() == []
    # A token due within the next sweep interval is taken now rather than one interval late.
    OAuthToken.objects.filter(pk=token.pk).update(
        next_refresh_at=timezone.now() + timedelta(seconds=settings.BEAT_INTERVAL - 2)
    )
    assert sweep.token_refresh_claim_due() == [(token.pk, token.generation)]


def test_a_queued_refresh_that_someone_else_already_did_calls_nobody(bot_connection, authserver):
    token = shared_token(bot_connection)
    refresh_shared_token(bot_connection)
    refresh.token_refresh_scheduled(token_id=token.pk, generation=token.generation)
    assert authserver.stats()["token_requests"]["refresh_token"] == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_refreshes_in_one_process_call_the_provider_once(bot_connection, authserver, waiting_callers):
    # given a provider that holds every refresh request until the test lets it go
    authserver.hold(["refresh_token"])
    token = shared_token(bot_connection)

    def refresh_in_a_thread(_: int) -> str:
        try:
            mine = OAuthToken.objects.select_related("connection__provider").get(pk=token.pk)
            return refresh.token_refresh(token=mine, actor_label="thread", min_generation=token.generation).access_token
        finally:
            db_connections.close_all()

    # when ten threads refresh the token at once
    with ThreadPoolExecutor(CALLERS) as pool:
        results = pool.map(refresh_in_a_thread, range(CALLERS))
        # then one call reaches the provider, and the nine others wait for it (they found the lease taken)
        authserver.wait_held(1)
        wait_for(lambda: waiting_callers.count() == CALLERS - 1, 30, "nine callers waiting for the one refresh")
        assert authserver.held() == {"held_now": 1, "held_since_armed": 1}
        authserver.release()
        results = set(results)
    # and everyone gets the token that one call returned
    assert results == {shared_token(bot_connection).access_token}
    assert authserver.stats()["token_requests"]["refresh_token"] == 1


# Notifications go out when the failure is committed, so these tests commit for real.
@pytest.mark.django_db(transaction=True)
def test_invalid_grant_notifies_the_managers_once(bot_connection, authserver, manager_with_email, mailoutbox):
    authserver.set_fault("invalid_grant", grant_types=["refresh_token"])
    for _ in range(3):
        with pytest.raises(ProviderError):
            refresh_shared_token(bot_connection)
    token = shared_token(bot_connection)
    assert token.state == "reauthorization_required" and token.next_refresh_at is None
    assert len(mailoutbox) == 1
    assert mailoutbox[0].to == ["ops@example.com"]
    assert "needs to be authorized again" in mailoutbox[0].subject
    assert token.refresh_token not in mailoutbox[0].body


# Notifications go out when the failure is committed, so these tests commit for real.
@pytest.mark.django_db(transaction=True)
def test_sustained_failure_and_recovery_notices(bot_connection, authserver, manager_with_email, mailoutbox, settings):
    settings.REFRESH_FAILURE_NOTIFY_THRESHOLD = 2
    authserver.set_fault("status_500")
    for expected_mails in (0, 1, 1):
        with pytest.raises(ProviderError):
            refresh_shared_token(bot_connection)
        assert len(mailoutbox) == expected_mails
    token = shared_token(bot_connection)
    assert token.state == "refresh_failing" and token.consecutive_failures == 3
    assert token.next_refresh_at > timezone.now()
    authserver.clear_fault()
    recovered = refresh_shared_token(bot_connection)
    assert recovered.state == "active" and recovered.consecutive_failures == 0
    assert [mail.subject for mail in mailoutbox] == [
        f"[Control Room] Refreshing {bot_connection} keeps failing",
        f"[Control Room] Refreshing {bot_connection} works again",
    ]


def test_backoff_grows_with_jitter():
    delays = [outcomes.backoff_seconds(failures) for failures in (1, 2, 3, 4, 10, 20)]
    assert 7.5 <= delays[0] <= 15 and 15 <= delays[1] <= 30 and 30 <= delays[2] <= 60
    assert all(delay <= 30 * 60 for delay in delays)
    assert len({outcomes.backoff_seconds(3) for _ in range(20)}) > 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("fault", ["status_500", "invalid_grant"])
def test_concurrent_callers_share_a_failed_refresh(bot_connection, authserver, fault, waiting_callers):
    # given a provider that fails the refresh, and holds it until the test lets it go
    authserver.hold(["refresh_token"])
    authserver.set_fault(fault, grant_types=["refresh_token"])
    token = shared_token(bot_connection)

    def refresh_in_a_thread(_: int) -> str:
        try:
            mine = OAuthToken.objects.select_related("connection__provider").get(pk=token.pk)
            refresh.token_refresh(token=mine, actor_label="thread", min_generation=token.generation)
        except ProviderError as exc:
            return exc.error
        finally:
            db_connections.close_all()
        return "refreshed"

    # when eight threads refresh the token at once, and the one call that went out fails
    with ThreadPoolExecutor(8) as pool:
        results = pool.map(refresh_in_a_thread, range(8))
        authserver.wait_held(1)
        wait_for(lambda: waiting_callers.count() == 7, 30, "seven callers waiting for the one refresh")
        authserver.release()
        outcomes = sorted(results)
    # then everyone else read its result instead of presenting the token again
    assert outcomes == sorted([FAILED_AS[fault]] + ["shared_failure"] * 7), str(outcomes)
    assert authserver.stats()["token_requests"]["refresh_token"] == 1
    assert shared_token(bot_connection).consecutive_failures == 1


def test_a_queued_refresh_is_not_queued_again_by_the_sweeps_that_follow(bot_connection, settings):
    # given a due token, claimed by a sweep
    token = shared_token(bot_connection)
    OAuthToken.objects.filter(pk=token.pk).update(next_refresh_at=timezone.now() - timedelta(seconds=1))
    start = timezone.now()
    assert sweep.token_refresh_claim_due(now=start) == [(token.pk, token.generation)]
    # when its task waits in the queue and the next sweeps run, every BEAT_INTERVAL, until the claim lapses
    interval, claim = settings.BEAT_INTERVAL, sweep.claim_seconds()
    later = [start + timedelta(seconds=k * interval) for k in range(1, int(claim // interval))]
    assert later and all(sweep.token_refresh_claim_due(now=moment) == [] for moment in later)
    # then the queued task expires before the token can be claimed again, and a lost one is replaced after that
    assert sweep.claim_expiry_seconds() < claim - interval
    assert sweep.token_refresh_claim_due(now=start + timedelta(seconds=claim)) == [(token.pk, token.generation)]


def test_the_sweep_queues_refreshes_that_expire(bot_connection, settings):
    OAuthToken.objects.update(next_refresh_at=timezone.now() - timedelta(seconds=1))
    assert tasks.refresh_sweep() == 1
    (message,) = redis.Redis.from_url(settings.CELERY_BROKER_URL).lrange("refresh", 0, -1)
    headers, body = json.loads(message)["headers"], json.loads(message)["body"]
    expires = datetime.fromisoformat(headers["expires"])
    (pairs, _queued_at), _, _ = json.loads(base64.b64decode(body))
    token = shared_token(bot_connection)
    assert (headers["task"], pairs) == ("connections.tasks.refresh_tokens", [[token.pk, token.generation]])
    assert expires <= timezone.now() + timedelta(seconds=sweep.claim_expiry_seconds())


def test_a_queued_refresh_leaves_a_token_that_failed_since_to_its_backoff(bot_connection, authserver):
    # given a refresh queued a moment ago, then a failed refresh by someone else (a bot, Refresh now)
    queued_at = timezone.now()
    authserver.set_fault("status_500", count=1, grant_types=["refresh_token"])
    with pytest.raises(ProviderError):
        refresh_shared_token(bot_connection)
    # when the queued one runs, it does not ask the provider again inside the backoff
    token = shared_token(bot_connection)
    refresh.token_refresh_scheduled(token_id=token.pk, generation=token.generation, queued_at=queued_at)
    assert authserver.stats()["token_requests"]["refresh_token"] == 1
    assert shared_token(bot_connection).state == "refresh_failing"


def test_the_refresh_task_ends_before_its_lease_could(settings):
    assert tasks.refresh_token.soft_time_limit < tasks.refresh_token.time_limit < lease.lease_seconds()
    assert settings.CELERY_WORKER_MAX_TASKS_PER_CHILD and settings.CELERY_BROKER_TRANSPORT_OPTIONS["visibility_timeout"]
