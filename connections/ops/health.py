"""Health, three ways, each for its reader:

- liveness (/livez, the container's health check): the process serves requests; no I/O at all.
- readiness (/readyz, the load balancer's probe): the database and the cache answer, checked at most every few
  seconds per process. Beat and the workers are not asked: web serves tokens without them for a while.
- freshness (/healthz, for alerting): the database, the broker, beat's heartbeat, the workers that ran it, the
  refresh sweep and the refresh tasks (each with its last failure), and the refresh backlog.
"""

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from celery import Celery
from django.conf import settings
from django.core.cache import cache
from django.db import DatabaseError, close_old_connections
from django.db import connection as db_connection
from django.db.models import Count, F, Min
from django.utils import timezone

from connections.models import BeatHeartbeat, OAuthToken, TokenState

logger = logging.getLogger(__name__)

READINESS_SECONDS = 3  # how long a readiness answer is reused: a busy balancer's probes cost one check
WORKER_PREFIX = "worker:"  # heartbeat rows of the workers that ran beat's heartbeat, by their host name
BEAT = "beat"  # beat's heartbeat's row: when a worker last ran it, and the last period it was claimed for
SWEEP = "sweep"  # the refresh sweep's row: its last success and its last failure
REFRESH_TASKS = "refresh-tasks"  # the refresh tasks' row: their last failure (a success writes nothing)


def _failure(what: str, exc: Exception) -> dict[str, Any]:
    # Reported by type only: a message could quote a URL with its password.
    return {"ok": False, "error": f"{what} unreachable ({type(exc).__name__})"}


def check_database() -> dict[str, Any]:
    try:
        with db_connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return {"ok": True}
    except Exception as exc:  # noqa: BLE001 - any failure means "not healthy"
        return _failure("database", exc)


def check_cache() -> dict[str, Any]:
    try:
        cache.set("readiness-probe", 1, timeout=60)
        return {"ok": cache.get("readiness-probe") == 1}
    except Exception as exc:  # noqa: BLE001
        return _failure("cache", exc)


def check_broker(app: Celery) -> dict[str, Any]:
    try:
        # Socket timeouts too: a broker that accepts the connection and then stays silent must not hang us.
        options = {"socket_timeout": 2, "socket_connect_timeout": 2}
        with app.connection_for_write(transport_options=options) as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        return {"ok": True}
    except Exception as exc:  # noqa: BLE001
        return _failure("broker", exc)


def beat_heartbeat_record(*, worker: str = "") -> None:
    """Run by a worker for each beat heartbeat: proves beat, the broker and that worker all work."""
    now = timezone.now()
    BeatHeartbeat.objects.update_or_create(name=BEAT, defaults={"last_run_at": now})
    if worker:
        BeatHeartbeat.objects.update_or_create(name=f"{WORKER_PREFIX}{worker}"[:40], defaults={"last_run_at": now})


# Failures this process could not write (the database was what failed): written with its next success, so that
# /healthz can say afterwards what happened meanwhile. Name -> (error, when, how many).
_unwritten: dict[str, tuple[str, datetime, int]] = {}


def periodic_success_record(name: str) -> None:
    """A scheduled job (the sweep) did its work: its row says when, and that its failures in a row are over."""
    if name in _unwritten:
        error, failed_at, count = _unwritten.pop(name)
        _failure_write(name, f"{error} ({count} time(s) while the database could not be written)", failed_at)
    now = timezone.now()
    if not BeatHeartbeat.objects.filter(name=name).update(last_run_at=now, failures_in_a_row=0):
        BeatHeartbeat.objects.get_or_create(name=name, defaults={"last_run_at": now})


def periodic_failure_record(name: str, exc: BaseException) -> None:
    """A scheduled job failed: its row says when and how (the error's type and first line: what a database or
    broker says of itself, never a value of ours), on a database connection opened afresh if the failure broke
    this one. When the database itself is down, nothing can be written: /healthz says so in its own way."""
    first_line = (str(exc).strip().splitlines() or [""])[0][:200]
    error, now = f"{type(exc).__name__}: {first_line}".rstrip(": "), timezone.now()
    if not db_connection.in_atomic_block:
        close_old_connections()
    try:
        _failure_write(name, error, now)
    except DatabaseError:
        count = _unwritten.get(name, ("", now, 0))[2] + 1
        _unwritten[name] = (error, now, count)
        logger.warning("Could not record that %s failed: the database does not answer.", name)


def _failure_write(name: str, error: str, failed_at: datetime) -> None:
    counted = BeatHeartbeat.objects.filter(name=name).update(
        last_error=error, last_error_at=failed_at, failures_in_a_row=F("failures_in_a_row") + 1
    )
    if not counted:
        BeatHeartbeat.objects.get_or_create(
            name=name, defaults={"last_error": error, "last_error_at": failed_at, "failures_in_a_row": 1}
        )


def _fresh(moment: Any) -> tuple[bool, int]:
    age = int((timezone.now() - moment).total_seconds())
    return age <= 3 * settings.BEAT_INTERVAL, age


def check_beat() -> dict[str, Any]:
    """Beat, however many run, judged by the periods being run: beat's heartbeat is claimed once per period by
    whichever beat's copy comes first (connections.ops.periods), so it is healthy while the heartbeat ran within
    three intervals (which also needs the broker and a worker). One beat of two gone changes nothing here; all
    gone, the periods stop being run. Each periodic job's last period is reported beside it."""
    jobs = BeatHeartbeat.objects.filter(period_start__isnull=False).order_by("name")
    last_periods = {row.name: row.period_start.isoformat() for row in jobs if row.period_start}
    heartbeat = BeatHeartbeat.objects.filter(name=BEAT).first()
    if heartbeat is None or heartbeat.last_run_at is None:
        return {"ok": False, "error": "beat has not run yet", "last_run": None, "last_periods": last_periods}
    ok, age = _fresh(heartbeat.last_run_at)
    result: dict[str, Any] = {
        "ok": ok,
        "last_run": heartbeat.last_run_at.isoformat(),
        "age_seconds": age,
        "periods_missed": max(0, age // settings.BEAT_INTERVAL - 1),
        "last_periods": last_periods,
    }
    if not ok:
        result["error"] = (
            f"beat last ran {age} seconds ago (interval {settings.BEAT_INTERVAL} s): no beat queues the periodic jobs"
        )
    return result


def check_sweep() -> dict[str, Any]:
    """The refresh sweep: healthy while it succeeded within three beat intervals and has not failed since. A beat
    that sends its heartbeat but whose sweeps fail (a worker's broken database connection) refreshes nothing."""
    row = BeatHeartbeat.objects.filter(name=SWEEP).first()
    if row is None:
        return {"ok": True, "last_run": None}  # beat has not swept yet: the beat check says whether it runs
    fresh, age = _fresh(row.last_run_at) if row.last_run_at else (False, None)
    failing = row.last_error_at is not None and (row.last_run_at is None or row.last_error_at > row.last_run_at)
    result: dict[str, Any] = {
        "ok": fresh and not failing,
        "last_run": row.last_run_at.isoformat() if row.last_run_at else None,
        "age_seconds": age,
    }
    if row.last_error_at is not None:  # what happened, even once it has recovered
        result |= {"last_error": row.last_error, "last_error_at": row.last_error_at.isoformat()}
    if failing:
        result["error"] = f"the refresh sweep failed {row.failures_in_a_row} time(s) in a row: {row.last_error}"
    elif not fresh:
        result["error"] = f"the refresh sweep last succeeded {age} seconds ago (interval {settings.BEAT_INTERVAL} s)"
    return result


def check_refresh_tasks() -> dict[str, Any]:
    """The refresh tasks: unhealthy while one failed as a whole within the last two beat intervals (a token's own
    failure is the token's, shown on its connection)."""
    row = BeatHeartbeat.objects.filter(name=REFRESH_TASKS, last_error_at__isnull=False).first()
    failed_at = row.last_error_at if row is not None else None
    if row is None or failed_at is None:
        return {"ok": True}
    age = int((timezone.now() - failed_at).total_seconds())
    result = {
        "ok": age > 2 * settings.BEAT_INTERVAL,
        "last_error": row.last_error,
        "last_error_at": failed_at.isoformat(),
    }
    if not result["ok"]:
        result["error"] = f"a refresh task failed {age} seconds ago: {row.last_error}"
    return result


def check_workers() -> dict[str, Any]:
    """The workers that ran beat's heartbeat lately (each heartbeat goes to one of them)."""
    rows = BeatHeartbeat.objects.filter(name__startswith=WORKER_PREFIX).order_by("-last_run_at")
    seen = []
    for row in rows:
        ok, age = _fresh(row.last_run_at)
        seen.append({"name": row.name.removeprefix(WORKER_PREFIX), "age_seconds": age, "recent": ok})
    result: dict[str, Any] = {"ok": any(worker["recent"] for worker in seen), "seen": seen}
    if not result["ok"]:
        result["error"] = "no worker has run a heartbeat within three beat intervals"
    return result


@dataclass(frozen=True)
class RefreshBacklog:
    """How far behind the refresh engine is. Overdue: past the refresh time the engine set by more than a beat
    interval (a working engine refreshes each token before that: the sweep claims it up to one interval early).
    Expiring: about to expire, or expired, unrefreshed; bots are about to get no token, or get none."""

    overdue: int
    oldest_overdue_seconds: int
    expiring: int
    oldest_expires_at: datetime | None


def refresh_backlog() -> RefreshBacklog:
    """One pass over the tokens a worker should refresh (enabled connections, not waiting for a person)."""
    now, interval = timezone.now(), timedelta(seconds=settings.BEAT_INTERVAL)
    tokens = OAuthToken.objects.filter(connection__is_enabled=True).exclude(state=TokenState.REAUTHORIZATION_REQUIRED)
    # Two reads, each of the few tokens in its time range through that time's index (the admin's connection list
    # and dashboard show it on every load): one pass with filtered aggregates would read every token.
    found = tokens.filter(expires_at__lt=now + interval).aggregate(
        expiring=Count("id"), oldest_expires_at=Min("expires_at")
    ) | tokens.filter(refresh_due_at__lt=now - interval).aggregate(
        overdue=Count("id"), oldest_due_at=Min("refresh_due_at")
    )
    oldest_due_at = found["oldest_due_at"]
    return RefreshBacklog(
        overdue=found["overdue"],
        oldest_overdue_seconds=int((now - oldest_due_at).total_seconds()) if oldest_due_at else 0,
        expiring=found["expiring"],
        oldest_expires_at=found["oldest_expires_at"],
    )


def check_refresh_backlog() -> dict[str, Any]:
    """Fails when tokens expire unrefreshed; warns while tokens are overdue, before that happens."""
    backlog = refresh_backlog()
    result: dict[str, Any] = {"ok": backlog.expiring == 0, "late_tokens": backlog.expiring}
    result |= {"overdue_tokens": backlog.overdue, "oldest_overdue_seconds": backlog.oldest_overdue_seconds}
    if backlog.overdue:
        result["warning"] = refresh_backlog_warning(backlog)
    if backlog.oldest_expires_at is not None:
        result["oldest_expires_at"] = backlog.oldest_expires_at.isoformat()
        result["error"] = f"{backlog.expiring} token(s) expire within one beat interval, or have expired, unrefreshed"
    return result


def refresh_backlog_warning(backlog: RefreshBacklog) -> str:
    return (
        f"{backlog.overdue} token(s) are past their refresh time, the oldest by {backlog.oldest_overdue_seconds} s: "
        'the refresh workers do not keep up (docs/operations.md, "Scaling web and workers").'
    )


def _read(check: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """A check that reads tables: one the database cannot answer (not migrated yet, say) fails, in words."""
    try:
        return check()
    except Exception as exc:  # noqa: BLE001
        return {"ok": False, "error": f"cannot read it from the database ({type(exc).__name__})"}


def health_report(celery_app: Celery) -> dict[str, Any]:
    checks = {"database": check_database(), "broker": check_broker(celery_app)}
    if checks["database"]["ok"]:
        checks.update(
            beat=_read(check_beat),
            workers=_read(check_workers),
            sweep=_read(check_sweep),
            refresh_tasks=_read(check_refresh_tasks),
            refresh_backlog=_read(check_refresh_backlog),
        )
    else:
        unread = {"ok": False, "error": "database unreachable"}
        checks.update(beat=unread, workers=unread, sweep=unread, refresh_tasks=unread, refresh_backlog=unread)
    return _report(checks)


def _report(checks: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {"status": "ok" if all(check["ok"] for check in checks.values()) else "error", "checks": checks}


class _Readiness:
    """The last readiness answer of this process, reused for READINESS_SECONDS."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.checked_at = float("-inf")
        self.report: dict[str, Any] = {}

    def get(self) -> dict[str, Any]:
        with self.lock:
            if time.monotonic() - self.checked_at >= READINESS_SECONDS:
                self.report = _report({"database": check_database(), "cache": check_cache()})
                self.checked_at = time.monotonic()
            return self.report


READINESS = _Readiness()
readiness_report = READINESS.get
