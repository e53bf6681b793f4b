"""Periodic jobs claim their period in the database (connections.ops.periods): of the copies any number of beats
queue for one period, exactly one runs."""

import threading
from datetime import UTC, datetime, timedelta

import pytest

from connections.models import BeatHeartbeat
from connections.ops.periods import once_per_period, period_claim, period_start
from tests.support.stack import in_threads

NOON = datetime(2026, 12, 7, 12, 0, 0, tzinfo=UTC)


def test_a_period_starts_where_the_epoch_cut_into_intervals_puts_it():
    assert period_start(30, now=NOON + timedelta(seconds=44)) == NOON + timedelta(seconds=30)
    assert period_start(30, now=NOON) == NOON
    assert period_start(3600, now=NOON + timedelta(minutes=59)) == NOON


@pytest.mark.django_db
def test_a_period_is_claimed_once_and_the_next_one_again():
    # when two copies of a job ask for the same period, and one asks in the next
    first = period_claim("sweep", seconds=30, now=NOON + timedelta(seconds=1))
    second = period_claim("sweep", seconds=30, now=NOON + timedelta(seconds=20))
    later = period_claim("sweep", seconds=30, now=NOON + timedelta(seconds=31))

    # then the first copy and the next period's get it, the second copy does not
    assert (first, second, later) == (NOON, None, NOON + timedelta(seconds=30))
    assert BeatHeartbeat.objects.get(name="sweep").period_start == NOON + timedelta(seconds=30)
    # and another job's period is its own
    assert period_claim("beat", seconds=30, now=NOON + timedelta(seconds=21)) == NOON


@pytest.mark.django_db
def test_an_earlier_period_is_never_claimed_after_a_later_one():
    # a copy delayed in the queue runs after the next period was claimed: it must not run the old one again
    assert period_claim("sweep", seconds=30, now=NOON + timedelta(seconds=31))
    assert period_claim("sweep", seconds=30, now=NOON + timedelta(seconds=29)) is None


@pytest.mark.django_db
def test_a_changed_interval_takes_effect_at_once():
    # given a job claimed in an hourly period
    assert period_claim("prune", seconds=3600, now=NOON + timedelta(minutes=10)) == NOON
    # when its interval becomes 60 s: its next minute is claimed (periods are times, not numbers)
    assert period_claim("prune", seconds=60, now=NOON + timedelta(minutes=11)) == NOON + timedelta(minutes=11)


@pytest.mark.django_db
def test_a_job_that_was_recorded_before_it_claimed_periods_claims_one():
    # a row the sweep's success wrote before periods existed: no period yet
    BeatHeartbeat.objects.create(name="sweep", last_run_at=NOON)
    assert period_claim("sweep", seconds=30, now=NOON) == NOON


@pytest.mark.django_db(transaction=True)
def test_of_many_copies_at_once_exactly_one_claims_the_period():
    # given eight copies of a job released together, for a period claimed before and for a job never run before
    period_claim("sweep", seconds=30, now=NOON - timedelta(seconds=30))
    for job in ("sweep", "never-run"):
        start = threading.Barrier(8)

        def claim(job: str = job, start: threading.Barrier = start) -> datetime | None:
            start.wait(timeout=10)
            return period_claim(job, seconds=30, now=NOON)

        # when they all claim the same period
        claims = in_threads([claim] * 8, workers=8)

        # then one got it
        assert sorted(claims, key=lambda claimed: claimed is None) == [NOON] + [None] * 7, job


@pytest.mark.django_db
def test_a_wrapped_task_body_runs_once_a_period(settings, time_machine):
    # given a job body wrapped to run once per period of the beat interval
    settings.BEAT_INTERVAL = 30
    runs: list[str] = []

    @once_per_period("summary")
    def summarize(label: str) -> int:
        runs.append(label)
        return len(runs)

    # when two beats' copies run in one period, and one in the next
    time_machine.move_to(NOON + timedelta(seconds=5), tick=False)
    first, second = summarize("beat-1"), summarize("beat-2")
    time_machine.move_to(NOON + timedelta(seconds=35), tick=False)
    third = summarize("beat-2")

    # then the body ran for the first copy of each period only, and the skipped copy returned None
    assert (first, second, third) == (1, None, 2)
    assert runs == ["beat-1", "beat-2"]
