"""The refresh engine gets back to work by itself when PostgreSQL restarts (pg_ctl restart -m fast, as a minor
upgrade or a managed database's maintenance does), when it is unreachable for 30 s, and when Redis restarts with
its data lost: real workers (one of them prefork, two children) and beat, the loopback authorization server, the
run's own PostgreSQL and Redis. After each, the next sweeps claim and refresh every due token exactly once (a refresh
token presented twice would be refused by the server), and /healthz says what happened meanwhile."""

import time
from datetime import timedelta

import pytest
from django.db import DatabaseError, close_old_connections
from django.db import connection as db_connection
from django.utils import timezone

from connections.engine.refresh import app_token_obtain
from connections.models import Connection, OAuthToken, TokenState
from connections.ops import health
from tests.conftest import authorize_and_store_token, refresh_shared_token
from tests.support.servers import server_control
from tests.support.stack import Stack

pytestmark = pytest.mark.django_db(transaction=True)

SETTINGS = {"BEAT_INTERVAL": 1, "OUTBOUND_TIMEOUT": 2}  # a claim lost with its task is claimed again after 11 s
OUTAGE_SECONDS = 30


@pytest.fixture
def fleet(make_connection, manager_client, authserver) -> list[Connection]:
    """Client-credentials connections with a token, and authorization-code ones whose refresh tokens rotate."""
    app = [make_connection(grant_type="client_credentials", scopes="read") for _ in range(6)]
    for connection in app:
        app_token_obtain(connection=connection)
    code = [make_connection() for _ in range(3)]
    for connection in code:
        authorize_and_store_token(manager_client, connection, authserver)
    return app + code


def _quietly(read):
    """A read of the test's own: its connection to a restarted database is opened afresh; None while the
    database does not answer."""
    try:
        return read()
    except DatabaseError:
        db_connection.close()
        return None


def _generations() -> dict[int, int] | None:
    return _quietly(lambda: dict(OAuthToken.objects.values_list("pk", "generation")))


def _fall_due() -> dict[int, int]:
    """Every token due now; the generations they have before their refresh."""
    due = timezone.now() - timedelta(seconds=1)
    OAuthToken.objects.update(next_refresh_at=due, refresh_due_at=due)
    return _generations() or {}


def _each_refreshed_once(stack: Stack, before: dict[int, int], what: str, seconds: float = 60) -> None:
    stack.wait_until(
        lambda: (
            (now := _generations()) is not None and all(now[pk] >= generation + 1 for pk, generation in before.items())
        ),
        seconds,
        what,
    )
    # Two more sweeps, and every refresh they queued ended: a token refreshed twice would have been by then.
    stack.wait_for_sweeps(2)
    after = _generations()
    assert after == {pk: generation + 1 for pk, generation in before.items()}, stack.logs()
    tokens = OAuthToken.objects.all()
    assert {(token.state, token.consecutive_failures) for token in tokens} == {(TokenState.ACTIVE, 0)}, stack.logs()


def _warm_stack(make_stack) -> Stack:
    """Beat, a worker for its scheduled jobs (heartbeat, sweep) and one for the refreshes alone (prefork, two
    children), each with database connections it has used. A worker whose tasks never open a transaction of
    their own is the one a broken connection used to stay broken in (Django drops a connection whose rollback
    fails, nothing else did)."""
    stack = make_stack(**SETTINGS)
    stack.worker("scheduled", queues="celery")
    stack.worker("refresher", pool="prefork", concurrency=2, queues="refresh")
    stack.beat()
    _each_refreshed_once(stack, _fall_due(), "the first refreshes, before anything restarts")
    return stack


def _refresh_tokens_still_live(fleet: list[Connection]) -> None:
    """No rotated refresh token was lost or presented twice: each connection's stored one still refreshes."""
    for connection in fleet:
        if connection.uses_authorization_code:
            assert refresh_shared_token(connection).state == TokenState.ACTIVE


def test_after_postgresql_restarts_or_is_down_for_30_s_every_due_token_is_refreshed_once(make_stack, fleet):
    # given a worker and beat that have refreshed the fleet once
    stack = _warm_stack(make_stack)

    # when PostgreSQL restarts (its connections are cut), and the tokens fall due
    server_control("postgres", "restart")
    db_connection.close()
    # A sweep ran after the restart (the scheduled worker's tasks run one at a time, so what the restart interrupted
    # has raised and been logged by then), and every refresh task queued so far ended.
    stack.wait_for_sweeps(1)
    failed = {task: stack.tasks(task, "raised") for task in ("refresh_sweep", "refresh_tokens")}
    before = _fall_due()
    # then the next sweeps claim them, and each is refreshed once; no task failed once it was back: each worker
    # process found its connection broken before using it, and opened another
    _each_refreshed_once(stack, before, "the refreshes after PostgreSQL restarted")
    assert {task: stack.tasks(task, "raised") for task in failed} == failed, stack.logs()
    assert health.check_sweep()["ok"] is True

    # when PostgreSQL is unreachable for 30 s, with the tokens due
    before = _fall_due()
    server_control("postgres", "stop")
    db_connection.close()
    time.sleep(OUTAGE_SECONDS)
    server_control("postgres", "start")
    # then the backlog drains: each token is refreshed once, and nothing refreshed before is lost
    _each_refreshed_once(stack, before, "the backlog to drain after the database came back", seconds=90)
    _refresh_tokens_still_live(fleet)
    # and /healthz, green again, says what happened meanwhile: the sweeps that failed while it was down
    sweep = stack.wait_until(
        lambda: (check := _quietly(health.check_sweep)) and "last_error" in check and check, 20, "the sweep's record"
    )
    assert sweep["ok"] is True and sweep["last_error"].startswith("OperationalError"), sweep
    assert "while the database could not be written" in sweep["last_error"], sweep
    assert stack.tasks("refresh_sweep", "raised") >= 1, stack.logs()


def test_after_redis_restarts_with_its_data_lost_every_due_token_is_refreshed_once(make_stack, fleet):
    # given a worker and beat that have refreshed the fleet once
    stack = _warm_stack(make_stack)

    # when Redis (the broker) restarts empty: queued tasks and beat's connection are gone
    server_control("redis", "restart")
    close_old_connections()
    before = _fall_due()
    # then each due token is refreshed once all the same
    _each_refreshed_once(stack, before, "the refreshes after Redis restarted")
    _refresh_tokens_still_live(fleet)
    assert health.check_sweep()["ok"] is True
