"""The beat heartbeat end to end: a real beat process schedules it, a real worker runs it, /healthz sees it.

Both processes (make_stack) use the test run's PostgreSQL test database and a Redis database of their own, so
the test is transactional: the worker must see, and write, committed rows.
"""

from datetime import datetime

import pytest

from connections.models import BeatHeartbeat

BEAT_INTERVAL = 2

pytestmark = pytest.mark.django_db(transaction=True)


def _last_run() -> datetime | None:
    heartbeat = BeatHeartbeat.objects.filter(name="beat").first()
    return heartbeat.last_run_at if heartbeat else None


def test_beat_and_a_worker_keep_the_heartbeat_fresh(make_stack, client):
    # given a worker and beat, both real processes, beating every 2 seconds
    stack = make_stack(BEAT_INTERVAL=BEAT_INTERVAL)
    stack.worker()
    stack.beat()

    # when the heartbeat appears, and then advances
    first = stack.wait_until(_last_run, 30, "the first beat heartbeat")
    later = stack.wait_until(lambda: (last := _last_run()) and last > first and last, 30, "the heartbeat to advance")

    # then
    assert later > first
    response = client.get("/healthz")
    body = response.json()
    assert response.status_code == 200, f"{body}\n{stack.logs()}"
    assert body["checks"]["beat"]["ok"] is True
    assert body["checks"]["beat"]["age_seconds"] <= 3 * BEAT_INTERVAL
    # and the worker that ran it is named
    assert body["checks"]["workers"]["ok"] is True
    assert [worker["name"].split("@")[0] for worker in body["checks"]["workers"]["seen"]] == ["worker"]
