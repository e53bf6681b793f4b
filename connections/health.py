"""Checks behind /healthz: the database, the Celery broker, and how long ago beat last ran (its heartbeat)."""

from typing import Any

from celery import Celery
from django.conf import settings
from django.db import connection as db_connection
from django.utils import timezone

from connections.models import BeatHeartbeat


def check_database() -> dict[str, Any]:
    try:
        with db_connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return {"ok": True}
    except Exception as exc:  # noqa: BLE001 - any failure means "not healthy", reported by type only
        return {"ok": False, "error": f"database unreachable ({type(exc).__name__})"}


def beat_heartbeat_record() -> None:
    """Run by a worker for each beat heartbeat: proves beat, the broker and a worker all work."""
    BeatHeartbeat.objects.update_or_create(name="beat", defaults={"last_run_at": timezone.now()})


def check_broker(app: Celery) -> dict[str, Any]:
    try:
        # Socket timeouts too: a broker that accepts the connection and then stays silent must not hang us.
        options = {"socket_timeout": 2, "socket_connect_timeout": 2}
        with app.connection_for_write(transport_options=options) as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        return {"ok": True}
    except Exception as exc:  # noqa: BLE001
        return {"ok": False, "error": f"broker unreachable ({type(exc).__name__})"}


def check_beat() -> dict[str, Any]:
    # Beat is healthy when its heartbeat task ran within three intervals (it also needs the broker and a worker).
    try:
        heartbeat = BeatHeartbeat.objects.filter(name="beat").first()
    except Exception as exc:  # noqa: BLE001
        return {"ok": False, "error": f"cannot read the heartbeat ({type(exc).__name__})", "last_run": None}
    if heartbeat is None:
        return {"ok": False, "error": "beat has not run yet", "last_run": None}
    age = (timezone.now() - heartbeat.last_run_at).total_seconds()
    ok = age <= 3 * settings.BEAT_INTERVAL
    result: dict[str, Any] = {"ok": ok, "last_run": heartbeat.last_run_at.isoformat(), "age_seconds": int(age)}
    if not ok:
        result["error"] = f"beat last ran {int(age)} seconds ago (interval {settings.BEAT_INTERVAL} s)"
    return result


def health_report(celery_app: Celery) -> dict[str, Any]:
    checks = {"database": check_database(), "broker": check_broker(celery_app)}
    checks["beat"] = check_beat() if checks["database"]["ok"] else {"ok": False, "error": "database unreachable"}
    return {"status": "ok" if all(check["ok"] for check in checks.values()) else "error", "checks": checks}
