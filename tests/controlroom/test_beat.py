"""The beat heartbeat end to end: a real beat process schedules it, a real worker runs it, /healthz sees it.

Both processes use the Redis the test run started and the test run's PostgreSQL test database, so the test is
transactional: the worker must see, and write, committed rows.
"""

import os
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

import pytest
from django.db import connection

from connections.models import BeatHeartbeat
from tests.controlroom.helpers import Processes

BEAT_INTERVAL = 2
T = TypeVar("T")


def _test_database_url() -> str:
    db = connection.settings_dict
    credentials = quote(db["USER"]) + (f":{quote(db['PASSWORD'])}" if db["PASSWORD"] else "")
    return f"postgres://{credentials}@{db['HOST']}:{db['PORT']}/{quote(db['NAME'])}"


def _own_redis_database(url: str) -> str:
    # Another database number of the same server: whatever other tests left queued in /0 is not run here.
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/9"))


def _last_run() -> datetime | None:
    heartbeat = BeatHeartbeat.objects.filter(name="beat").first()
    return heartbeat.last_run_at if heartbeat else None


def _wait_until(condition: Callable[[], T | None], seconds: float, processes: Processes, what: str) -> T:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        for name, (process, _) in processes.started.items():
            if process.poll() is not None:
                pytest.fail(
                    f"celery {name} exited with code {process.returncode} while waiting for {what}.\n{processes.logs()}"
                )
        time.sleep(0.25)
    pytest.fail(f"Waited {seconds:g} s for {what}.\n{processes.logs()}")


def test_beat_and_a_worker_keep_the_heartbeat_fresh(
    transactional_db, processes: Processes, tmp_path: Path, client, settings
):
    # given a worker and beat, both real processes, beating every 2 seconds
    settings.BEAT_INTERVAL = BEAT_INTERVAL
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "controlroom.settings",
        "DATABASE_URL": _test_database_url(),
        "REDIS_URL": _own_redis_database(os.environ["REDIS_URL"]),
        "BEAT_INTERVAL": str(BEAT_INTERVAL),
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("CELERY_BROKER_URL", None)
    celery = [sys.executable, "-m", "celery", "--app", "controlroom"]
    processes.start(
        "worker", [*celery, "worker", "--loglevel", "INFO", "--concurrency", "1", "--pool", "solo"], env=env
    )
    processes.start(
        "beat", [*celery, "beat", "--loglevel", "INFO", "--schedule", str(tmp_path / "celerybeat-schedule")], env=env
    )
    assert not BeatHeartbeat.objects.exists()

    # when the heartbeat appears, and then advances
    first = _wait_until(_last_run, 30, processes, "the first beat heartbeat")
    later = _wait_until(
        lambda: (last := _last_run()) and last > first and last, 30, processes, "the heartbeat to advance"
    )

    # then
    assert later > first
    response = client.get("/healthz")
    body = response.json()
    assert response.status_code == 200, f"{body}\n{processes.logs()}"
    assert body["checks"]["beat"]["ok"] is True
    assert body["checks"]["beat"]["age_seconds"] <= 3 * BEAT_INTERVAL
    # and the worker that ran it is named
    assert body["checks"]["workers"]["ok"] is True
    assert [worker["name"].split("@")[0] for worker in body["checks"]["workers"]["seen"]] == ["celery"]
