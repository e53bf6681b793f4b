"""The checks behind /healthz (connections.ops.health), one by one: what each counts and how it reports a failure.
The endpoints themselves, and outages of real processes, are in tests/controlroom/test_healthz.py."""

import re
from collections.abc import Iterator
from datetime import timedelta

import pytest
from celery import Celery
from django.db import OperationalError
from django.utils import timezone

from connections import tasks
from connections.engine import batch, sweep
from connections.models import BeatHeartbeat, OAuthToken, TokenState
from connections.ops import health, metrics
from tests.support.processes import closed_port

pytestmark = pytest.mark.django_db


def test_the_refresh_backlog_counts_only_tokens_a_worker_should_have_refreshed(make_connection, settings):
    # given a 30-second beat, and tokens of every kind
    settings.BEAT_INTERVAL = 30
    now = timezone.now()

    def token(expires_in: float | None, **fields: object) -> OAuthToken:
        connection = make_connection(register=False, is_enabled=fields.pop("is_enabled", True))
        expires_at = None if expires_in is None else now + timedelta(seconds=expires_in)
        return OAuthToken.objects.create(connection=connection, access_token="a", expires_at=expires_at, **fields)

    oldest = token(-3600)  # expired an hour ago, unrefreshed
    token(5)  # expires before the next sweep
    token(3600)  # refreshed in good time later
    token(None)  # no expiry: nothing to refresh
    token(-60, state=TokenState.REAUTHORIZATION_REQUIRED)  # waits for a person, not a worker
    token(-60, is_enabled=False)  # a disabled connection is not refreshed

    # when
    backlog = health.check_refresh_backlog()

    # then only the two a working engine would have refreshed count, and the oldest is named
    assert backlog == {
        "ok": False,
        "late_tokens": 2,
        "overdue_tokens": 0,
        "oldest_overdue_seconds": 0,
        "oldest_expires_at": oldest.expires_at.isoformat(),
        "error": "2 token(s) expire within one beat interval, or have expired, unrefreshed",
    }


def test_an_empty_refresh_backlog_is_ok(make_connection):
    connection = make_connection(register=False)
    OAuthToken.objects.create(connection=connection, access_token="a", expires_at=timezone.now() + timedelta(hours=1))
    assert health.check_refresh_backlog() == {
        "ok": True,
        "late_tokens": 0,
        "overdue_tokens": 0,
        "oldest_overdue_seconds": 0,
    }


def test_tokens_past_their_refresh_time_warn_before_they_expire(make_connection, settings):
    # given a 30-second beat, and valid tokens whose refresh time has passed by more or less than an interval
    settings.BEAT_INTERVAL = 30
    now = timezone.now()

    def token(due_seconds_ago: float, **fields: object) -> None:
        connection = make_connection(register=False, is_enabled=fields.pop("is_enabled", True))
        OAuthToken.objects.create(
            connection=connection,
            access_token="a",
            expires_at=now + timedelta(minutes=5),
            refresh_due_at=now - timedelta(seconds=due_seconds_ago),
            # the sweep's claim moves the schedule on; the refresh time stays what the engine set
            next_refresh_at=now + timedelta(minutes=1),
            **fields,
        )

    token(600)  # ten minutes behind
    token(45)
    token(10)  # claimed a moment ago: a worker is on it
    token(600, state=TokenState.REAUTHORIZATION_REQUIRED)  # waits for a person, not a worker
    token(600, is_enabled=False)

    # when
    backlog = health.check_refresh_backlog()

    # then it is still ok (nothing expires yet) but warns, with the count and the age of the oldest
    assert backlog | {"oldest_overdue_seconds": 600} == {
        "ok": True,
        "late_tokens": 0,
        "overdue_tokens": 2,
        "oldest_overdue_seconds": 600,
        "warning": backlog["warning"],
    }
    assert 600 <= backlog["oldest_overdue_seconds"] <= 605
    assert re.match(r"2 token\(s\) are past their refresh time, the oldest by 60\d s", backlog["warning"])


def _ran(name: str, seconds_ago: float) -> None:
    BeatHeartbeat.objects.update_or_create(
        name=name, defaults={"last_run_at": timezone.now() - timedelta(seconds=seconds_ago)}
    )


def test_workers_are_healthy_while_one_ran_a_heartbeat_within_three_intervals(settings):
    # given a 10-second beat, one worker that ran a heartbeat 5 s ago and one that stopped long ago
    settings.BEAT_INTERVAL = 10
    _ran(f"{health.WORKER_PREFIX}stopped@host", 3600)
    _ran(f"{health.WORKER_PREFIX}alive@host", 5)

    # when
    workers = health.check_workers()

    # then healthy, each listed newest first with whether it is recent
    assert workers["ok"] is True and "error" not in workers
    assert [(seen["name"], seen["recent"]) for seen in workers["seen"]] == [
        ("alive@host", True),
        ("stopped@host", False),
    ]

    # and when the last one stops too, unhealthy, in words
    _ran(f"{health.WORKER_PREFIX}alive@host", 31)
    workers = health.check_workers()
    assert workers["ok"] is False
    assert workers["error"] == "no worker has run a heartbeat within three beat intervals"


def test_a_heartbeat_records_beat_and_the_worker_that_ran_it_once_each():
    # when beat's heartbeat runs three times, twice on one worker and once with no worker name
    health.beat_heartbeat_record(worker="w1@host")
    health.beat_heartbeat_record(worker="w1@host")
    health.beat_heartbeat_record()

    # then one row for beat and one for the worker: rows are updated, not added per run
    assert sorted(BeatHeartbeat.objects.values_list("name", flat=True)) == ["beat", f"{health.WORKER_PREFIX}w1@host"]
    assert health.check_beat()["ok"] is True


def test_an_unreachable_broker_is_reported_by_type_without_its_url_or_password():
    # given a broker URL with a password, at a port where nothing listens
    password = "broker-pass-91ab"
    # Not made the current app: /healthz reports on the current one, in every later test of this process too.
    app = Celery("unreachable", broker=f"redis://:{password}@127.0.0.1:{closed_port()}/0", set_as_current=False)

    # when
    broker = health.check_broker(app)

    # then
    assert broker["ok"] is False
    assert broker["error"].startswith("broker unreachable ("), broker
    assert password not in broker["error"] and "127.0.0.1" not in broker["error"]


def _failures_counted(task: str) -> float:
    return metrics.TASK_FAILURES.labels(task=task)._value.get()


def _next_period() -> None:
    """As if the sweep's period had passed: the next copy beat queues runs (connections.ops.periods)."""
    BeatHeartbeat.objects.filter(name=health.SWEEP).update(period_start=None)


def test_a_failing_sweep_fails_healthz_says_why_and_is_counted_until_a_sweep_succeeds(monkeypatch, client):
    # given a sweep that succeeded, and then a database that refuses it
    tasks.refresh_sweep()
    counted = _failures_counted("refresh_sweep")

    def broken(**kwargs: object) -> Iterator[list[tuple[int, int]]]:
        raise OperationalError("the connection is closed")
        yield []

    monkeypatch.setattr(sweep, "token_refresh_claims", broken)
    # when the next sweeps run
    for _ in range(2):
        _next_period()
        with pytest.raises(OperationalError):
            tasks.refresh_sweep()
    # then /healthz fails with the error, and /metrics counts each failure
    check = health.check_sweep()
    assert check["ok"] is False, check
    assert check["error"] == "the refresh sweep failed 2 time(s) in a row: OperationalError: the connection is closed"
    body = client.get("/healthz").json()
    assert body["status"] == "error" and body["checks"]["sweep"] == check
    assert _failures_counted("refresh_sweep") == counted + 2

    # when a sweep succeeds again
    monkeypatch.undo()
    _next_period()
    tasks.refresh_sweep()
    # then the sweep is healthy, and its check still says what happened
    check = health.check_sweep()
    assert check["ok"] is True and "error" not in check
    assert check["last_error"] == "OperationalError: the connection is closed" and check["last_error_at"]


def test_a_failed_refresh_task_fails_healthz_for_two_intervals(monkeypatch, settings):
    settings.BEAT_INTERVAL = 10

    def broken(pairs: object, queued_at: object) -> None:
        raise OperationalError("server closed the connection unexpectedly\nThis probably means...")

    monkeypatch.setattr(batch, "tokens_refresh", broken)
    counted = _failures_counted("refresh_tokens")
    with pytest.raises(OperationalError):
        tasks.refresh_tokens([[1, 1]])
    check = health.check_refresh_tasks()
    assert check["ok"] is False and check["last_error"] == "OperationalError: server closed the connection unexpectedly"
    assert _failures_counted("refresh_tokens") == counted + 1
    BeatHeartbeat.objects.filter(name=health.REFRESH_TASKS).update(last_error_at=timezone.now() - timedelta(seconds=21))
    assert health.check_refresh_tasks()["ok"] is True
