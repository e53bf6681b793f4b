"""Refresh capacity: the sweep claims every due token, in batches of one statement each on PostgreSQL, skipping a
row that is being written; a task's tokens are refreshed concurrently, at most REFRESH_PROVIDER_CONCURRENCY at a
time at one provider; and a provider's 429 slows its refreshes without counting against the token. The figures
(refreshes a second, CPU per refresh) are bench/'s."""

import re
import threading
import time
from collections import Counter
from concurrent import futures
from datetime import timedelta
from email.utils import format_datetime

import pytest
from celery.exceptions import SoftTimeLimitExceeded
from django.db import connection as db_connection
from django.db import transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from connections import tasks
from connections.audit.events import audit_event_row
from connections.engine import batch as refresh_batch
from connections.engine import lease, refresh, sweep
from connections.errors import ProviderError
from connections.models import AuditEvent, OAuthToken, TokenState
from connections.oauth import client as oauth_client
from connections.ops import health
from tests.conftest import authorize_and_store_token, get_token, refresh_shared_token, shared_token
from tests.support.waiting import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def fresh_refresh_threads(monkeypatch) -> None:
    """A thread pool and provider slots made for this test's settings (a process makes each once)."""
    monkeypatch.setattr(refresh_batch, "_pool", None)
    monkeypatch.setattr(refresh_batch, "_provider_slots", {})


def due_tokens(make_connection, count: int, **connection_fields: object) -> list[OAuthToken]:
    """Synthetic tokens (at no real provider) due a second ago."""
    now = timezone.now()
    return [
        OAuthToken.objects.create(
            connection=make_connection(register=False, **connection_fields),
            access_token="access",
            refresh_token="refresh",
            expires_at=now + timedelta(minutes=1),
            next_refresh_at=now - timedelta(seconds=1),
        )
        for _ in range(count)
    ]


def test_the_sweep_claims_every_due_token_in_batches_of_one_statement(make_connection, settings):
    # given eight due tokens and batches of three
    settings.REFRESH_SWEEP_BATCH = 3
    due = due_tokens(make_connection, 8)
    # when the sweep claims
    with CaptureQueriesContext(db_connection) as queries:
        batches = list(sweep.token_refresh_claims())
    # then it claimed them all, once each, in three batches of one UPDATE … RETURNING each
    assert [len(batch) for batch in batches] == [3, 3, 2]
    assert sorted(token_id for batch in batches for token_id, _ in batch) == sorted(token.pk for token in due)
    assert [query["sql"].split()[0] for query in queries] == ["UPDATE"] * 3
    # and the next sweep finds nothing due: they are claimed until their tasks have run or expired
    assert list(sweep.token_refresh_claims()) == []


def test_a_due_token_whose_row_is_being_written_is_left_for_the_next_sweep(make_connection):
    # given two due tokens, one of them locked by a write in progress elsewhere (a refresh storing its result)
    busy, free = due_tokens(make_connection, 2)
    locked, release = threading.Event(), threading.Event()

    def write_in_progress() -> None:
        with transaction.atomic():
            OAuthToken.objects.select_for_update().get(pk=busy.pk)
            locked.set()
            release.wait(10)  # without SKIP LOCKED the claim waits for this, then claims the row too
        db_connection.close()

    writer = threading.Thread(target=write_in_progress)
    writer.start()
    assert locked.wait(10)
    # when the sweep claims meanwhile
    try:
        claimed = sweep.token_refresh_claim_due()
    finally:
        release.set()
        writer.join(10)
    # then it took the free one without waiting, and the next sweep takes the other
    assert claimed == [(free.pk, free.generation)]
    assert sweep.token_refresh_claim_due() == [(busy.pk, busy.generation)]


def test_the_sweep_queues_its_tokens_a_task_size_at_a_time(make_connection, settings, monkeypatch):
    settings.REFRESH_TASK_SIZE = 2
    due = due_tokens(make_connection, 5)
    queued: list[list[tuple[int, int]]] = []
    monkeypatch.setattr(tasks.refresh_tokens, "apply_async", lambda args, **options: queued.append(args[0]))
    assert tasks.refresh_sweep() == 5
    assert [len(pairs) for pairs in queued] == [2, 2, 1]
    assert sorted(token_id for pairs in queued for token_id, _ in pairs) == sorted(token.pk for token in due)


def test_a_task_refreshes_its_tokens_each_once_at_the_provider(make_connection, manager_client, authserver, settings):
    # given six connected tokens at a provider that takes a moment to answer, and a task of all six
    settings.REFRESH_CONCURRENCY, settings.REFRESH_PROVIDER_CONCURRENCY = 4, 4
    connections = [make_connection() for _ in range(6)]
    for connection in connections:
        authorize_and_store_token(manager_client, connection, authserver)
    before = {connection.pk: shared_token(connection) for connection in connections}
    authserver.set_token_options(latency=0.3)
    # when a worker runs the task (twice, as a redelivered message would be)
    pairs = [[token.pk, token.generation] for token in before.values()]
    with CaptureQueriesContext(db_connection) as queries:  # the task's own; each refresh writes in its thread
        tasks.refresh_tokens(pairs)
    tasks.refresh_tokens(pairs)
    # then the batch's leases were taken, and its audit events written, with one statement each
    found = (re.match(r'(?:\d+ times: )?(\w+)\D*?"(connections_\w+)"', query["sql"]) for query in queries)
    statements = Counter(statement.groups() for statement in found if statement)  # (verb, first table named)
    assert statements[("UPDATE", "connections_oauthtoken")] == 1
    assert statements[("SELECT", "connections_oauthtoken")] == 1
    assert statements[("INSERT", "connections_auditevent")] == 1
    # and each token was refreshed once, its new token works, and each refresh is audited as the worker's
    assert authserver.stats()["token_requests"]["refresh_token"] == 6
    assert authserver.stats()["refresh_token_reuses"] == 0
    for connection in connections:
        after = shared_token(connection)
        assert after.generation == before[connection.pk].generation + 1
        assert authserver.whoami(after.access_token).status_code == 200
    events = AuditEvent.objects.filter(action="token_refresh")
    assert sorted(events.values_list("outcome", "actor_label")) == [("success", "refresh worker")] * 6


def test_a_lease_held_while_a_batch_waited_is_renewed_before_the_call_or_given_up(make_connection, settings):
    # given two tokens of a batch whose leases were taken a call's time ago (they waited behind a slow provider)
    kept, lost = due_tokens(make_connection, 2)
    leased = {fence.token_id: fence for fence, _ in lease.tokens_lease_take([kept.pk, lost.pk], "batch")}
    taken_at = time.monotonic() - settings.OUTBOUND_TIMEOUT
    # and one of them was taken over meanwhile (its lease ran out and a bot's refresh took it)
    OAuthToken.objects.filter(pk=lost.pk).update(lease_owner="a-bot", lease_expires_at=timezone.now())
    # when each is about to be refreshed
    renewed_from = timezone.now()
    # then the lease still held is renewed for a whole call and the write after it; the lost one is not called
    assert lease.token_lease_keep(leased[kept.pk], taken_at) is True
    assert OAuthToken.objects.get(pk=kept.pk).lease_expires_at >= renewed_from + timedelta(
        seconds=lease.lease_seconds()
    )
    assert lease.token_lease_keep(leased[lost.pk], taken_at) is False
    assert OAuthToken.objects.get(pk=lost.pk).lease_owner == "a-bot"
    # and a lease taken a moment ago is used as it is, with no statement
    with CaptureQueriesContext(db_connection) as queries:
        assert lease.token_lease_keep(leased[kept.pk], time.monotonic()) is True
    assert len(queries) == 0


def test_a_claimed_token_stays_overdue_until_a_worker_refreshes_it(bot_connection, authserver, settings):
    # given a token whose refresh time passed ten minutes ago (the workers fell behind)
    settings.BEAT_INTERVAL = 30
    due_at = timezone.now() - timedelta(minutes=10)
    OAuthToken.objects.filter(connection=bot_connection).update(next_refresh_at=due_at, refresh_due_at=due_at)
    # when the sweep claims it: its schedule moves on, but it is still overdue
    (pairs,) = sweep.token_refresh_claims()
    assert shared_token(bot_connection).next_refresh_at > timezone.now()
    assert (health.refresh_backlog().overdue, health.refresh_backlog().oldest_overdue_seconds >= 600) == (1, True)
    # and once a worker has refreshed it, it is not
    tasks.refresh_tokens(pairs)
    token = shared_token(bot_connection)
    assert token.refresh_due_at == token.next_refresh_at > timezone.now()
    assert health.refresh_backlog().overdue == 0


def test_a_task_stopped_by_its_time_limit_gives_back_what_it_did_not_begin_and_audits_what_it_did(
    make_connection, settings, monkeypatch
):
    # given one refresh thread and three due tokens, whose refreshes take a moment each
    settings.REFRESH_CONCURRENCY = 1
    tokens = due_tokens(make_connection, 3)

    def slow_refresh(*, token: OAuthToken, audit: list[dict], **_: object) -> None:
        time.sleep(0.3)
        audit.append(
            audit_event_row(action=AuditEvent.Action.TOKEN_REFRESH, outcome=AuditEvent.Outcome.SUCCESS, detail="done")
        )

    monkeypatch.setattr(refresh, "token_refresh_leased", slow_refresh)
    waits, wait = [], futures.wait

    def wait_stopped_by_the_time_limit(fs, timeout=None):
        waits.append(timeout)
        if len(waits) == 1:
            raise SoftTimeLimitExceeded()  # what Celery raises in the task when its soft time limit passes
        return wait(fs, timeout)

    monkeypatch.setattr(refresh_batch.futures, "wait", wait_stopped_by_the_time_limit)
    # when the task is stopped while the first refresh is under way
    with pytest.raises(SoftTimeLimitExceeded):
        refresh_batch.tokens_refresh([(token.pk, token.generation) for token in tokens], None)
    # then the refresh under way ended and was audited, and the two not begun gave their leases back
    assert list(AuditEvent.objects.values_list("detail", flat=True)) == ["done"]
    leases = dict(OAuthToken.objects.values_list("pk", "lease_owner"))
    assert [leases[token.pk] == "" for token in tokens] == [False, True, True]


def test_at_most_the_provider_limit_of_calls_are_in_flight_to_one_host(make_connection, settings, monkeypatch):
    # given eight free threads, at most two calls at a time to one token host, and four due tokens at each of
    # two hosts, whose refreshes wait until the test lets them end
    settings.REFRESH_CONCURRENCY, settings.REFRESH_PROVIDER_CONCURRENCY = 8, 2
    tokens = [
        *due_tokens(make_connection, 4, token_url="https://a.example/token"),
        *due_tokens(make_connection, 4, token_url="https://b.example/token"),
    ]
    lock, release = threading.Lock(), threading.Event()
    in_flight: Counter[str] = Counter()
    peak: Counter[str] = Counter()
    done: list[int] = []

    def refresh_that_waits(*, token: OAuthToken, **_: object) -> None:
        host = token.connection.effective_token_url.split("/")[2]
        with lock:
            in_flight[host] += 1
            peak[host] = max(peak[host], in_flight[host])
        release.wait(30)
        with lock:
            in_flight[host] -= 1
            done.append(token.pk)

    monkeypatch.setattr(refresh, "token_refresh_leased", refresh_that_waits)
    runner = threading.Thread(target=refresh_batch.tokens_refresh, args=([(t.pk, t.generation) for t in tokens], None))
    runner.start()
    try:
        # when the task runs: two calls are in flight at each host
        wait_for(lambda: sum(in_flight.values()) == 4, 10, "two calls in flight at each host")
        # then no third one started at either host, though six threads were free
        assert peak == {"a.example": 2, "b.example": 2}
    finally:
        release.set()
        runner.join(30)
    # and every token got its turn
    assert sorted(done) == sorted(token.pk for token in tokens)
    assert peak == {"a.example": 2, "b.example": 2}


def test_a_providers_429_slows_its_refreshes_without_counting_against_the_token(
    bot_connection, bot, authserver, settings, mailoutbox, manager, time_machine
):
    # given a provider that answers every refresh 429 with Retry-After: 1, and a manager to notify
    manager.email = "ops@example.com"
    manager.save()
    settings.REFRESH_FAILURE_NOTIFY_THRESHOLD = 2
    authserver.set_fault("status_429", grant_types=["refresh_token"])
    before = shared_token(bot_connection)
    # when it is refreshed, more times than the notification threshold
    for _ in range(3):
        with pytest.raises(ProviderError) as caught:
            refresh_shared_token(bot_connection)
        assert (caught.value.error, caught.value.retry_after) == (oauth_client.RATE_LIMITED, 1)
    # then the token is kept, no failure is counted and nobody is told it is failing
    after = shared_token(bot_connection)
    assert (after.access_token, after.refresh_token, after.generation) == (
        before.access_token,
        before.refresh_token,
        before.generation,
    )
    assert (after.state, after.consecutive_failures) == (TokenState.REFRESH_FAILING, 0)
    assert mailoutbox == []
    # and the next try is when the provider said, no sooner
    assert after.next_refresh_at - after.last_error_at == timedelta(seconds=1)
    details = AuditEvent.objects.filter(action="token_refresh").values_list("detail", flat=True)
    assert all(detail.startswith("Rate limited: ") and "HTTP 429" in detail for detail in details), details
    # and once the token has expired, a bot is told to come back when the provider said, without a call to it (this
    # process's clock stopped at the last 429, so the second the provider asked for lasts as long as the test needs)
    time_machine.move_to(after.last_error_at, tick=False)
    OAuthToken.objects.filter(pk=after.pk).update(expires_at=timezone.now() - timedelta(minutes=1))
    calls = authserver.stats()["token_requests"]["refresh_token"]
    response = get_token(bot.raw_key, bot_connection.slug)
    assert (response.status_code, response.json()["error"]) == (424, "refresh_backoff")
    assert int(response["Retry-After"]) <= 1
    assert authserver.stats()["token_requests"]["refresh_token"] == calls
    # and one that insists (force_refresh) gets the provider's own Retry-After
    response = get_token(bot.raw_key, bot_connection.slug, force_refresh="true")
    assert (response.status_code, response["Retry-After"]) == (503, "1")


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("120", 120),
        ("0", 1),  # never a busy loop
        ("-5", 1),
        ("1.2", 2),
        ("999999", oauth_client.RETRY_AFTER_MAX),  # a token must not wait past its expiry for it
        ("", oauth_client.RETRY_AFTER_DEFAULT),
        ("soon", oauth_client.RETRY_AFTER_DEFAULT),
        ("nan", oauth_client.RETRY_AFTER_DEFAULT),
        ("Mon, 30 Nov 2026 00:00:00", oauth_client.RETRY_AFTER_DEFAULT),  # no zone: unreadable
    ],
)
def test_retry_after_is_read_as_seconds_within_bounds(header, seconds):
    assert oauth_client.retry_after_seconds(header) == seconds


def test_retry_after_may_be_an_http_date():
    in_two_minutes = format_datetime(timezone.now() + timedelta(seconds=120), usegmt=True)
    assert 118 <= oauth_client.retry_after_seconds(in_two_minutes) <= 121
