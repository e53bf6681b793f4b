"""Two real beats on a one-second schedule, one worker, real PostgreSQL and Redis, short-lived tokens at a real
authorization server: one beat is killed with SIGKILL, and the refreshes go on with no token late, while every
periodic job ran each period at most once (connections.ops.periods) before and after the kill."""

import re
import threading
import time
from collections import Counter
from datetime import timedelta

import pytest
from django.db import connection as db_connection
from django.db.models import Min
from django.utils import timezone

from connections.engine.refresh import app_token_obtain
from connections.models import OAuthToken, TokenState
from connections.ops import health
from tests.conftest import authorize_and_store_token
from tests.support.stack import every

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

LIFETIME = 12  # refreshed ~6 s after issue (the margin is capped at half the lifetime)
BEAT_INTERVAL = 1
BOTH_SECONDS, ONE_SECONDS = 7, 10
CLAIMED = re.compile(r"Periodic job (\S+): claimed the period starting (\S+)\.")
SKIPPED = re.compile(r"Periodic job (\S+): this period was already run, skipped\.")


def _least_validity_left() -> float:
    earliest = OAuthToken.objects.aggregate(earliest=Min("expires_at"))["earliest"]
    return (earliest - timezone.now()).total_seconds()


def _watch(stop: threading.Event, seen: list[float]) -> None:
    try:
        every(0.25, BOTH_SECONDS + ONE_SECONDS + 30, lambda: seen.append(_least_validity_left()), stop)
    finally:
        db_connection.close()


def test_two_beats_one_killed_every_job_once_a_period_and_no_token_late(
    make_stack, make_connection, manager_client, short_lived_authserver
):
    # given short-lived tokens, rotating (authorization code) and not (client credentials)
    short_lived_server = short_lived_authserver(LIFETIME)
    for _ in range(2):
        authorize_and_store_token(manager_client, make_connection(server=short_lived_server), short_lived_server)
    for _ in range(3):
        app_token_obtain(connection=make_connection(server=short_lived_server, grant_type="client_credentials"))
    tokens_before = dict(OAuthToken.objects.values_list("pk", "generation"))
    # and one worker and two beats
    stack = make_stack(BEAT_INTERVAL=BEAT_INTERVAL, OUTBOUND_TIMEOUT=2)
    stack.worker()
    stack.beat("beat-1")
    stack.beat("beat-2")
    stop, least_left = threading.Event(), []
    watcher = threading.Thread(target=_watch, args=(stop, least_left))
    watcher.start()
    try:
        # when both run a while, then one is killed and the other runs on alone
        time.sleep(BOTH_SECONDS)
        stack.check_alive("both beats ran")
        stack.kill("beat-1")
        claims_at_kill = len(CLAIMED.findall(stack.log("worker")))
        time.sleep(ONE_SECONDS)
        stack.check_alive("one beat ran")
        # /healthz judges beat by the periods being run: one beat of two is enough
        beat = stack.wait_until(lambda: (check := health.check_beat())["ok"] and check, 10, "beat to be healthy")
    finally:
        stop.set()
        watcher.join()

    # then no period of any job ran twice, though each period was queued twice while both beats ran
    worker_log = stack.log("worker")
    claims = CLAIMED.findall(worker_log)
    assert [claim for claim, count in Counter(claims).items() if count > 1] == [], stack.logs()
    assert set(SKIPPED.findall(worker_log)) >= {"sweep", "beat"}, stack.logs()
    # and the periods went on after the kill: the sweep, at least every other second
    sweeps_after_kill = [start for job, start in claims[claims_at_kill:] if job == "sweep"]
    assert len(sweeps_after_kill) >= ONE_SECONDS // 2, stack.logs()
    # and each job's last period was reported there
    assert set(beat["last_periods"]) >= {"beat", "sweep", "failed-authentications", "credential-expiry"}, beat
    # and no token was late: each was refreshed with at least one beat interval of validity left, over and over
    assert least_left and min(least_left) > BEAT_INTERVAL, (min(least_left), stack.logs())
    generations = dict(OAuthToken.objects.values_list("pk", "generation"))
    assert all(generations[pk] >= generation + 2 for pk, generation in tokens_before.items()), stack.logs()
    assert set(OAuthToken.objects.values_list("state", "consecutive_failures")) == {(TokenState.ACTIVE, 0)}
    assert (
        timezone.now() - timedelta(seconds=BOTH_SECONDS + ONE_SECONDS + 5)
        < OAuthToken.objects.earliest("expires_at").obtained_at
    )
