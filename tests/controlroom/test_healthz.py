"""/livez, /readyz and /healthz, each checked for real (the test run's PostgreSQL and Redis, closed ports).

Outages are real too: a gunicorn process is started with its database or broker pointed at a port where
nothing answers, and /healthz is asked over HTTP.
"""

import contextlib
import os
import socket
import sys
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.utils import timezone

from connections.models import BeatHeartbeat, OAuthToken
from connections.ops import health
from connections.ops.health import beat_heartbeat_record
from tests.support.processes import Answer, Processes, closed_port, http_get, minimal_env, start_gunicorn

pytestmark = pytest.mark.django_db


def _assert_never_cached(cache_control: str) -> None:
    directives = {part.strip() for part in cache_control.split(",")}
    assert {"no-cache", "no-store", "must-revalidate", "max-age=0"} <= directives, cache_control


@pytest.fixture(autouse=True)
def _no_reused_readiness():
    health.READINESS.checked_at = float("-inf")


def _heartbeat_aged(seconds: float) -> None:
    beat_heartbeat_record(worker="worker@test")
    BeatHeartbeat.objects.update(last_run_at=timezone.now() - timedelta(seconds=seconds))


def test_the_test_run_checks_a_real_broker():
    # The broker checks below mean something only against the Redis the test run started.
    assert django_settings.CELERY_BROKER_URL == os.environ["REDIS_URL"]
    assert django_settings.CELERY_BROKER_URL.startswith("redis://")


def test_healthz_is_ok_with_database_broker_and_a_fresh_heartbeat(client):
    # given a heartbeat a worker ran just now
    beat_heartbeat_record(worker="worker-1@host")

    # when
    response = client.get("/healthz")

    # then
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "ok"
    assert body["checks"]["database"]["ok"] is True
    assert body["checks"]["broker"]["ok"] is True
    assert body["checks"]["beat"]["ok"] is True
    assert body["checks"]["beat"]["last_run"]
    assert body["checks"]["workers"]["seen"][0] | {"age_seconds": 0} == {
        "name": "worker-1@host",
        "age_seconds": 0,
        "recent": True,
    }
    assert body["checks"]["refresh_backlog"] == {
        "ok": True,
        "late_tokens": 0,
        "overdue_tokens": 0,
        "oldest_overdue_seconds": 0,
    }
    _assert_never_cached(response["Cache-Control"])


def test_livez_answers_without_any_io(client, django_assert_num_queries):
    with django_assert_num_queries(0):
        response = client.get("/livez")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})
    _assert_never_cached(response["Cache-Control"])


def test_web_stays_ready_while_beat_and_the_workers_are_down(client):
    # given no heartbeat: beat, or every worker, has not run for a long time
    _heartbeat_aged(3600)
    # when / then: the load balancer keeps sending traffic, while alerting says what is wrong
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.content
    assert ready.json() == {"status": "ok", "checks": {"database": {"ok": True}, "cache": {"ok": True}}}
    health = client.get("/healthz").json()
    assert health["status"] == "error"
    assert health["checks"]["beat"]["ok"] is False and health["checks"]["workers"]["ok"] is False


def test_readyz_reuses_its_answer_for_a_few_seconds(client, django_assert_num_queries):
    client.get("/readyz")
    with django_assert_num_queries(0):
        assert client.get("/readyz").status_code == 200


def test_a_token_about_to_expire_unrefreshed_shows_in_the_refresh_backlog(client, make_connection):
    # given a connected token that expires in five seconds, which a working engine refreshes long before
    beat_heartbeat_record(worker="worker@test")
    connection = make_connection(register=False)
    OAuthToken.objects.create(connection=connection, access_token="a", expires_at=timezone.now() + timedelta(seconds=5))
    # when
    body = client.get("/healthz").json()
    # then
    assert body["status"] == "error"
    assert body["checks"]["refresh_backlog"]["ok"] is False and body["checks"]["refresh_backlog"]["late_tokens"] == 1


def test_healthz_is_503_when_beat_never_ran(client):
    # given no heartbeat at all
    assert not BeatHeartbeat.objects.exists()

    # when
    response = client.get("/healthz")

    # then
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "error"
    assert body["checks"]["beat"]["ok"] is False
    assert body["checks"]["database"]["ok"] is True
    assert body["checks"]["broker"]["ok"] is True
    _assert_never_cached(response["Cache-Control"])


@pytest.mark.parametrize(("age", "healthy"), [(25, True), (31, False), (3600, False)])
def test_beat_is_healthy_only_within_three_intervals(client, settings, age: int, healthy: bool):
    # given a 10-second beat whose last heartbeat is `age` seconds old (limit: 3 x 10 s)
    settings.BEAT_INTERVAL = 10
    _heartbeat_aged(age)

    # when
    response = client.get("/healthz")

    # then
    body = response.json()
    assert body["checks"]["beat"]["ok"] is healthy, body
    assert response.status_code == (200 if healthy else 503)
    if not healthy:
        assert body["checks"]["beat"]["error"].startswith("beat last ran")


def _serve(processes: Processes, tmp_path: Path, **variables: str) -> int:
    """Start the web app (gunicorn, as in production) with these variables; return its port."""
    gunicorn = [sys.executable, "-m", "gunicorn", "controlroom.wsgi", "--workers", "1", "--timeout", "60"]
    gunicorn += ["--graceful-timeout", "2", "--no-control-socket"]
    # DEBUG=true on purpose: an unhandled error would render Django's debug page, traceback and settings.
    return start_gunicorn(processes, "gunicorn", gunicorn, env=minimal_env(tmp_path, DEBUG="true", **variables))


def _healthz(processes: Processes, port: int, timeout: float = 30) -> Answer:
    try:
        return http_get(port, "/healthz", timeout=timeout)
    except TimeoutError:
        pytest.fail(f"/healthz did not answer within {timeout:g} s.\n{processes.logs()}")


def test_healthz_is_503_when_the_database_is_unreachable(processes: Processes, tmp_path: Path):
    # given the web app pointed at a PostgreSQL port where nothing listens, with a password in the URL
    password = "db-pass-4f0c1"
    port = _serve(
        processes,
        tmp_path,
        DATABASE_URL=f"postgres://postgres:{password}@127.0.0.1:{closed_port()}/controlroom",
        REDIS_URL=os.environ["REDIS_URL"],
    )

    # when
    answer = _healthz(processes, port)
    live, ready = http_get(port, "/livez", timeout=10), http_get(port, "/readyz", timeout=10)

    # then the process is alive (no restart would help), not ready (no traffic), and alerting says why
    assert live.status == 200 and ready.status == 503, (live.text, ready.text)
    assert ready.json()["checks"]["database"]["ok"] is False and ready.json()["checks"]["cache"]["ok"] is True
    logs = processes.logs()
    assert answer.status == 503, f"{answer.text}\n{logs}"
    body = answer.json()
    assert body["status"] == "error"
    assert body["checks"]["database"]["ok"] is False
    assert body["checks"]["broker"]["ok"] is True
    assert body["checks"]["beat"]["ok"] is False
    assert "Traceback" not in answer.text
    assert password not in answer.text
    assert password not in logs
    _assert_never_cached(answer.headers["Cache-Control"])


def test_healthz_is_503_when_the_broker_port_is_closed(processes: Processes, tmp_path: Path):
    # given the web app with a working database and its broker at a Redis port where nothing listens
    port = _serve(
        processes,
        tmp_path,
        DATABASE_URL=f"sqlite:///{tmp_path / 'web.sqlite3'}",
        REDIS_URL=f"redis://127.0.0.1:{closed_port()}/0",
    )

    # when
    answer = _healthz(processes, port)

    # then
    assert answer.status == 503, f"{answer.text}\n{processes.logs()}"
    body = answer.json()
    assert body["checks"]["broker"]["ok"] is False
    assert body["checks"]["database"]["ok"] is True
    assert "Traceback" not in answer.text


class SilentServer:
    """Accepts TCP connections and never says a word, like a hung server; counts the connections."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):  # closed at the end of the test
            while True:
                self.held.append(self.sock.accept()[0])

    def close(self) -> None:
        for sock in [self.sock, *self.held]:
            sock.close()


@pytest.fixture
def silent_server() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.close()


def test_healthz_does_not_hang_on_a_broker_that_never_answers(
    processes: Processes, tmp_path: Path, silent_server: SilentServer
):
    # given the broker accepts the connection and then hangs
    port = _serve(
        processes,
        tmp_path,
        DATABASE_URL=f"sqlite:///{tmp_path / 'web.sqlite3'}",
        REDIS_URL=f"redis://127.0.0.1:{silent_server.port}/0",
    )

    # when a probe asks (_healthz fails the test if no answer comes within its timeout)
    answer = _healthz(processes, port)

    # then it gets an answer, which says the broker is down, after a bounded number of tries (each ends by its
    # socket timeout), not retries for as long as the broker stays silent
    assert answer.status == 503, answer.text
    assert answer.json()["checks"]["broker"]["ok"] is False
    assert 1 <= len(silent_server.held) <= 2, len(silent_server.held)
