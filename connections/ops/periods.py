"""Periodic jobs that any number of beats may queue, each run once per period.

Celery beat has no failover of its own (celery/celery#1495), so every beat queues every job, and the job itself
makes that safe: before doing anything, its task claims the current period (wall-clock time cut into slices of the
job's interval) in its BeatHeartbeat row with one conditional UPDATE ("the last period claimed is older than this
one"). The database lets one of two concurrent UPDATEs match (PostgreSQL re-checks the condition once the first
commits; SQLite writes one at a time), so of the copies the beats queued for a period exactly one runs; the others
find it taken and return at once. A beat that dies leaves nothing behind: the next period goes to whichever copy
comes first.

Periods are kept as their start time, not a number, so a changed interval never makes a job wait for its new
numbers to catch up with the old ones.

Wrap a task's function with @once_per_period("job-name") (under @shared_task), giving its schedule's interval when
it is not BEAT_INTERVAL.
"""

import functools
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import ParamSpec, TypeVar

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from connections.models import BeatHeartbeat

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")


def period_start(seconds: float, *, now: datetime | None = None) -> datetime:
    """The start of the period of `seconds` that `now` falls in, counted from the Unix epoch (every process on
    every machine cuts time alike, given clocks kept by NTP)."""
    moment = (now or timezone.now()).timestamp()
    return datetime.fromtimestamp(moment - moment % seconds, tz=UTC)


def period_claim(job: str, *, seconds: float | None = None, now: datetime | None = None) -> datetime | None:
    """Claim the current period of `job` (its interval: `seconds`, default BEAT_INTERVAL): its start when this
    caller got it, None when another copy of the job already ran in it."""
    start = period_start(seconds or settings.BEAT_INTERVAL, now=now)
    unclaimed = Q(period_start__isnull=True) | Q(period_start__lt=start)
    if BeatHeartbeat.objects.filter(unclaimed, name=job).update(period_start=start):
        return start
    # No row yet (the job's first run anywhere), or the period is taken. Of two first runs at once, one creates the
    # row; the other's get_or_create finds it, and the period taken.
    _, created = BeatHeartbeat.objects.get_or_create(name=job, defaults={"period_start": start})
    return start if created else None


def once_per_period(job: str, *, seconds: float | None = None) -> Callable[[Callable[P, R]], Callable[P, R | None]]:
    """Run the wrapped task body only when it claims the current period of `job` (period_claim); a copy that finds
    the period taken returns None without doing anything. Both are logged at INFO, with the period, so that the
    workers' logs tell which copy ran each period."""

    def decorate(run: Callable[P, R]) -> Callable[P, R | None]:
        @functools.wraps(run)
        def claimed(*args: P.args, **kwargs: P.kwargs) -> R | None:
            start = period_claim(job, seconds=seconds)
            if start is None:
                logger.info("Periodic job %s: this period was already run, skipped.", job)
                return None
            logger.info("Periodic job %s: claimed the period starting %s.", job, start.isoformat())
            return run(*args, **kwargs)

        return claimed

    return decorate
