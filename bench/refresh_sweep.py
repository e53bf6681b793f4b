"""The refresh engine at scale: the beat sweep's due-token query over 100,000 tokens, and refreshes per second
of one Celery worker against a real authorization server.

    .venv/bin/python bench/refresh_sweep.py [--connections 100000] [--refresh-seconds 20] [--refresh-tokens 200]

What it runs, all thrown away afterwards (also on Ctrl-C or SIGTERM):
- PostgreSQL and Redis from tests/support/servers.py, a fresh database, `manage.py migrate` (DEBUG=true);
- in this process, Django against that database (DEBUG off, loopback http allowed for the auth server):
  --connections shared connections with one token each, written with COPY in batches. Every encrypted field
  (client secret, access, refresh and ID token) is encrypted per row by the model field's own
  get_db_prep_save, as the ORM writes it: no ciphertext is reused. next_refresh_at: --due-fraction of them
  overdue by up to 10 minutes (a backlog), 1% awaiting re-authorization (no refresh time), the rest spread
  over the next 24 hours; 1% of the connections are disabled. Then VACUUM ANALYZE.
- The due-token query: connections.engine.sweep.token_refresh_claim_due is called once under
  CaptureQueriesContext (in a transaction rolled back afterwards) to get the SELECT exactly as the sweep sends
  it; that SQL is then timed --runs times as is, and again with enable_indexscan and enable_bitmapscan off
  (the baseline: the same query with no index to use), with EXPLAIN ANALYZE of both. The whole claim
  (SELECT + UPDATE) is timed too, each call rolled back.
- One refresh taken apart: an extra connection refreshed 20 times straight at the provider (oauth_client),
  then 20 times through the worker's task body in this process (refresh.token_refresh_scheduled), and the
  SQL statements of one refresh.
- Refreshes per second: the loopback AuthServer (tests/support/authserver.py) with --latency on its token
  endpoint; --refresh-tokens connections registered there and authorized through the real authorization-code
  flow (login and consent by HTTP), so the worker uses the refresh_token grant with rotation, as in
  production. The synthetic tokens are moved out of the sweep's reach (they point at no server), the bench
  tokens are made due, one real `celery --app controlroom worker` is started, connections.tasks.refresh_sweep
  is sent, and the tokens whose generation went up are counted until all are done or --refresh-seconds pass.
  Once with --pool solo --concurrency 1, then with --pool prefork --concurrency 4.

Prints a table; exits 1 if any refresh failed (or the provider got more refresh calls than tokens were
refreshed: single flight broken), 2 if the set-up failed.
"""

import argparse
import os
import random
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

# Run as a file, Python puts bench/ on sys.path, not the root that holds the bench and tests packages.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from bench.common import (
    REPO_ROOT,
    Copier,
    SetupError,
    app_environment,
    create_database,
    postgres_directory,
    run_main,
    run_step,
)
from tests.support import servers
from tests.support.authserver import AuthServer

TARGET_MS = 50.0
DATABASE_NAME = "controlroom_refresh_bench"
PROVIDER_USER = ("bench-owner", "bench-owner-password")
POOLS = (("solo", 1), ("prefork", 4))
POLL_SECONDS = 0.05
ID_LIST = re.compile(r"ANY \('\{[0-9,]*\}'::bigint\[\]\)")
SYNTHETIC_PROVIDER = "https://login.example.invalid/oauth2"  # never called: these tokens are moved out of reach


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=100_000, help="synthetic connections (default 100000)")
    parser.add_argument(
        "--due-fraction", type=float, default=0.005, help="share of them overdue at the sweep (default 0.005)"
    )
    parser.add_argument("--runs", type=int, default=50, help="timed runs of each query (default 50)")
    parser.add_argument("--batch", type=int, default=5000, help="rows per COPY (default 5000)")
    parser.add_argument("--refresh-tokens", type=int, default=200, help="tokens refreshed per worker (default 200)")
    parser.add_argument("--refresh-seconds", type=float, default=20, help="time allowed per worker (default 20)")
    parser.add_argument("--latency", type=float, default=0.05, help="auth server token latency, s (default 0.05)")
    return parser.parse_args()


# --- servers and processes ------------------------------------------------------------------------------------


def start_worker(env: dict[str, str], pool: str, concurrency: int, log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "celery", "--app", "controlroom", "worker"]
    command += ["--pool", pool, "--concurrency", str(concurrency), "--hostname", f"bench-{pool}@%h"]
    with open(log, "ab") as output:
        # Its own session: Ctrl-C reaches only this script, which then stops the worker (and its children).
        return subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop_worker(process: subprocess.Popen | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()  # warm shutdown: prefork stops its own children
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the group of the session started above, children included
        process.wait(timeout=10)


# --- seeding --------------------------------------------------------------------------------------------------


@dataclass
class Seeded:
    connections: int
    disabled: int
    unscheduled: int
    seconds: float


def seed_synthetic(count: int, due_fraction: float, batch: int) -> Seeded:
    from django.db import connection as db
    from django.utils import timezone

    from connections.models import Connection, OAuthToken, TokenState
    from providers.models import GrantType, Provider

    provider = Provider.objects.get(slug="custom")
    rng = random.Random(20240601)
    started = time.perf_counter()
    now = timezone.now()
    connections = Copier(
        Connection,
        ["id", "name", "slug", "client_id", "client_secret", "is_enabled"],
        {
            "provider_id": provider.pk,
            "grant_type": GrantType.AUTHORIZATION_CODE,
            "authorization_url": f"{SYNTHETIC_PROVIDER}/authorize",
            "token_url": f"{SYNTHETIC_PROVIDER}/token",
            "scopes": "api,refresh_token,offline_access",
            "created_at": now,
            "updated_at": now,
        },
    )
    tokens = Copier(
        OAuthToken,
        [
            "connection_id",
            "access_token",
            "refresh_token",
            "id_token",
            "state",
            "expires_at",
            "next_refresh_at",
            "obtained_at",
        ],
        {
            "scope": "api refresh_token offline_access",
            "extra": {"instance_url": "https://acme.my.salesforce.com"},
            "authorized_at": now - timedelta(days=30),
            "generation": 1,
            "updated_at": now,
        },
    )
    first_id = (Connection.objects.order_by("-pk").values_list("pk", flat=True).first() or 0) + 1
    disabled = unscheduled = 0
    for first in range(0, count, batch):
        connection_rows, token_rows = [], []
        for number in range(first, min(first + batch, count)):
            enabled = number % 100 != 50  # 1% disabled, spread over the id range
            disabled += not enabled
            connection_id = first_id + number
            connection_rows.append(
                (
                    connection_id,
                    f"Synthetic {number:06d}",
                    f"synthetic-{number:06d}",
                    f"3MVG9{number:06d}" + secrets.token_urlsafe(40),
                    secrets.token_urlsafe(48),
                    enabled,
                )
            )
            draw = rng.random()
            state, next_refresh_at = TokenState.ACTIVE, None
            if draw < due_fraction:  # overdue: the backlog a sweep finds
                next_refresh_at = now - timedelta(seconds=rng.uniform(0, 600))
            elif draw < due_fraction + 0.01:  # waiting for a person: never swept
                state = TokenState.REAUTHORIZATION_REQUIRED
                unscheduled += 1
            else:
                next_refresh_at = now + timedelta(seconds=rng.uniform(0, 24 * 3600))
            expires_at = (next_refresh_at or now) + timedelta(seconds=300)
            token_rows.append(
                (
                    connection_id,
                    "00D" + secrets.token_urlsafe(84),
                    "5Aep" + secrets.token_urlsafe(64),
                    "",
                    str(state),
                    expires_at,
                    next_refresh_at,
                    expires_at - timedelta(hours=1),
                )
            )
        connections.write(connection_rows)
        tokens.write(token_rows)
        if (first + batch) % (10 * batch) == 0 or first + batch >= count:
            print(f"  {min(first + batch, count):,} / {count:,} connections and tokens", flush=True)
    with db.cursor() as cursor:
        for model in (Connection, OAuthToken):
            table = model._meta.db_table
            # Rows written with explicit ids: move the identity sequence past them for the ORM's inserts.
            sql = f"SELECT setval(pg_get_serial_sequence(%s, 'id'), (SELECT max(id) FROM {table}))"  # noqa: S608 - our table
            cursor.execute(sql, [table])
            cursor.execute(f"VACUUM ANALYZE {table}")
    return Seeded(count, disabled, unscheduled, time.perf_counter() - started)


# --- the due-token query --------------------------------------------------------------------------------------


@dataclass
class Timing:
    label: str
    runs: list[float]  # milliseconds
    rows: int

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    @property
    def p95(self) -> float:
        ordered = sorted(self.runs)
        return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


@dataclass
class QueryFigures:
    indexed: Timing
    baseline: Timing
    claim: Timing
    index_name: str
    plan: list[str]
    baseline_plan: list[str]
    sql: str
    due: int  # all tokens due at the sweep; the SELECT returns at most REFRESH_SWEEP_BATCH of them
    batch: int
    update_plan: list[str]  # EXPLAIN ANALYZE of the claim's UPDATE, as the sweep sent it
    indexes: list[str]  # every index of the token table: what each claimed or refreshed row also rewrites


BASELINE_SETTINGS = ("SET LOCAL enable_indexscan = off", "SET LOCAL enable_bitmapscan = off")


def _time_sql(sql: str, runs: int, label: str, settings_sql: tuple[str, ...] = ()) -> tuple[Timing, list[str]]:
    from django.db import connection, transaction

    times, rows = [], 0
    with transaction.atomic(), connection.cursor() as cursor:
        for statement in settings_sql:
            cursor.execute(statement)
        for run in range(runs + 3):  # 3 warm-up runs
            started = time.perf_counter()
            cursor.execute(sql)
            rows = len(cursor.fetchall())
            if run >= 3:
                times.append((time.perf_counter() - started) * 1e3)
        cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS) {sql}")
        plan = [line for (line,) in cursor.fetchall()]
        transaction.set_rollback(True)
    return Timing(label, times, rows), plan


def time_due_query(runs: int) -> QueryFigures:
    from django.conf import settings
    from django.db import connection, transaction
    from django.test.utils import CaptureQueriesContext
    from django.utils import timezone

    from connections.engine import sweep
    from connections.models import OAuthToken

    now = timezone.now()
    due_count = OAuthToken.objects.filter(
        next_refresh_at__lte=now + timedelta(seconds=settings.BEAT_INTERVAL), connection__is_enabled=True
    ).count()
    with transaction.atomic(), CaptureQueriesContext(connection) as captured:
        sweep.token_refresh_claim_due(now=now)
        transaction.set_rollback(True)
    statements = [query["sql"] for query in captured.captured_queries]
    selects = [sql for sql in statements if sql.lstrip().upper().startswith("SELECT")]
    updates = [sql for sql in statements if sql.lstrip().upper().startswith("UPDATE")]
    if len(selects) != 1 or len(updates) > 1:
        raise SetupError(f"token_refresh_claim_due sent unexpected statements: {statements}")
    sql = selects[0]
    table = OAuthToken._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s ORDER BY indexname", [table])
        indexes = cursor.fetchall()
    index_name = next((name for name, definition in indexes if "next_refresh_at" in definition), "")

    update_plan = []
    if updates:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS, WAL) {updates[0]}")
            update_plan = [line for (line,) in cursor.fetchall()]
            transaction.set_rollback(True)
        with connection.cursor() as cursor:
            cursor.execute(f"VACUUM {table}")

    indexed, plan = _time_sql(sql, runs, "SELECT, next_refresh_at index")
    baseline, baseline_plan = _time_sql(sql, runs, "SELECT, indexscan+bitmapscan off", BASELINE_SETTINGS)

    claim_times = []
    for run in range(runs + 3):
        with transaction.atomic():
            started = time.perf_counter()
            due = sweep.token_refresh_claim_due()
            elapsed = (time.perf_counter() - started) * 1e3
            transaction.set_rollback(True)
        if run >= 3:
            claim_times.append(elapsed)
        # A rolled-back UPDATE leaves a dead version of every claimed row (and index entries) behind; without
        # this, each run would wade through the debris of all earlier runs, which no real sweep does.
        with connection.cursor() as cursor:
            cursor.execute(f"VACUUM {table}")
    claim = Timing("whole claim (SELECT + UPDATE), ORM", claim_times, len(due))
    with connection.cursor() as cursor:
        cursor.execute(f"VACUUM ANALYZE {table}")
    return QueryFigures(
        indexed=indexed,
        baseline=baseline,
        claim=claim,
        index_name=index_name,
        plan=plan,
        baseline_plan=baseline_plan,
        sql=sql,
        due=due_count,
        batch=settings.REFRESH_SWEEP_BATCH,
        update_plan=update_plan,
        indexes=[name for name, _ in indexes],
    )


# --- refreshes per second -------------------------------------------------------------------------------------


@dataclass
class RefreshRun:
    pool: str
    concurrency: int
    tokens: int
    done: int = 0
    failed: int = 0
    seconds: float = 0.0  # from sending the sweep to the last refresh seen
    steady_rate: float = 0.0  # between 10% and 90% done, without start-up and tail
    provider_calls: int = 0
    database_sessions: int | None = None  # PostgreSQL sessions opened during the run (pg_stat_database)
    timeline: list[tuple[float, int]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    worker_died: bool = False

    @property
    def rate(self) -> float:
        return self.done / self.seconds if self.seconds else 0.0


def authorize_bench_connections(server: AuthServer, count: int) -> list[int]:
    """Connections registered at the auth server, each authorized through the real code flow; their token ids."""
    from django.conf import settings
    from django.contrib.auth.models import User

    from connections.flows import authorization
    from connections.models import Connection
    from providers.models import GrantType, Provider

    server.create_user(*PROVIDER_USER)
    admin = User.objects.create_superuser("bench-admin", "bench-admin@example.com", secrets.token_urlsafe(16))
    provider = Provider.objects.get(slug="custom")
    token_ids = []
    for number in range(count):
        client_id, client_secret = f"bench-client-{number}", secrets.token_urlsafe(32)
        server.create_client(client_id, client_secret, [settings.OAUTH_REDIRECT_URI])
        connection = Connection.objects.create(
            name=f"Bench {number:04d}",
            slug=f"bench-{number:04d}",
            provider=provider,
            grant_type=GrantType.AUTHORIZATION_CODE,
            client_id=client_id,
            client_secret=client_secret,
            authorization_url=server.authorize_url,
            token_url=server.token_url,
            revocation_url=server.revoke_url,
            scopes="read,write",
        )
        session_key = secrets.token_urlsafe(24)
        url = authorization.connection_authorize_start(
            connection=connection, user=admin, session_key=session_key, return_url="/"
        )
        location = server.authorize_with_requests(url, *PROVIDER_USER)
        result = authorization.connection_authorize_complete(
            params=dict(parse_qsl(urlsplit(location).query)), session_key=session_key, default_return_url="/"
        )
        token_ids.append(result.token.pk)
        if (number + 1) % 50 == 0 or number + 1 == count:
            print(f"  {number + 1} / {count} connections authorized", flush=True)
    return token_ids


def move_synthetic_tokens_away(bench_token_ids: list[int]) -> int:
    """The synthetic tokens point at no server: keep them in the table, out of the sweep's reach."""
    from django.db.models import F
    from django.utils import timezone

    from connections.models import OAuthToken

    soon = timezone.now() + timedelta(hours=1)
    return (
        OAuthToken.objects.exclude(pk__in=bench_token_ids)
        .filter(next_refresh_at__lte=soon)
        .update(next_refresh_at=F("next_refresh_at") + timedelta(days=1))
    )


@dataclass
class Probe:
    """One refresh taken apart, sequentially in this process, against the same auth server."""

    provider_zero_ms: float  # direct oauth_client.refresh calls with no added latency: the auth server's own work
    provider_ms: float  # the same with --latency: what a refresh costs the provider side
    in_process_ms: float  # refresh.token_refresh_scheduled: the worker's task body, without Celery
    duplicate_ms: float  # the same for a task queued for a generation already refreshed (a no-op)
    queries: list[str]  # the SQL statements of one refresh
    duplicate_queries: list[str]


def probe_one_refresh(server: AuthServer, connection_id: int, latency: float, times: int = 20) -> Probe:
    """Medians of `times` calls each; the probe connection is none of the ones the workers refresh."""
    from django.db import connection as db
    from django.test.utils import CaptureQueriesContext

    from connections.engine import refresh
    from connections.engine import store as tokens
    from connections.models import Connection, OAuthToken
    from connections.oauth import client as oauth_client

    connection = Connection.objects.select_related("provider").get(pk=connection_id)
    token = OAuthToken.objects.get(connection=connection, user__isnull=True)
    config = tokens.connection_client_config(connection)
    refresh_token, response = token.refresh_token, None

    def provider_calls() -> float:
        nonlocal refresh_token, response
        spent = []
        for _ in range(times):
            started = time.perf_counter()
            response = oauth_client.refresh(config, refresh_token=refresh_token)
            spent.append((time.perf_counter() - started) * 1e3)
            refresh_token = response.refresh_token or refresh_token  # the server rotates it
        return statistics.median(spent)

    server.set_token_options(latency=0)
    provider_zero = provider_calls()
    server.set_token_options(latency=latency)
    provider = provider_calls()
    tokens.token_store(connection=connection, user=None, response=response)

    def generation() -> int:
        return OAuthToken.objects.filter(pk=token.pk).values_list("generation", flat=True).get()

    def task_body(queued_generation: int) -> float:
        started = time.perf_counter()
        refresh.token_refresh_scheduled(token_id=token.pk, generation=queued_generation)
        return (time.perf_counter() - started) * 1e3

    in_process, duplicate = [], []
    for _ in range(times):
        before = generation()
        in_process.append(task_body(before))
        if generation() <= before:
            raise SetupError(f"the probe refresh of {connection.slug} did not refresh (see the auth server log)")
        duplicate.append(task_body(before))  # queued twice: the second finds the refresh done
        if generation() != before + 1:
            raise SetupError("a task queued for an already refreshed generation refreshed again")
    before = generation()
    with CaptureQueriesContext(db) as captured:
        refresh.token_refresh_scheduled(token_id=token.pk, generation=before)
    with CaptureQueriesContext(db) as captured_duplicate:
        refresh.token_refresh_scheduled(token_id=token.pk, generation=before)
    return Probe(
        provider_zero,
        provider,
        statistics.median(in_process),
        statistics.median(duplicate),
        [query["sql"] for query in captured.captured_queries],
        [query["sql"] for query in captured_duplicate.captured_queries],
    )


def wait_for_worker(app, process: subprocess.Popen, log: Path, seconds: float = 60) -> None:
    """Ready means it ran a task end to end: the heartbeat task writes its row through the database."""
    from django.utils import timezone

    from connections.models import BeatHeartbeat

    marker = timezone.now()
    app.send_task("connections.tasks.beat_heartbeat")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        if BeatHeartbeat.objects.filter(name="beat", last_run_at__gte=marker).exists():
            return
        time.sleep(0.1)
    tail = log.read_text(errors="replace")[-4000:] if log.exists() else ""
    raise SetupError(f"the Celery worker ran no task within {seconds:g} s:\n{tail}")


def measure_worker(
    *,
    app,
    env: dict[str, str],
    server: AuthServer,
    token_ids: list[int],
    pool: str,
    concurrency: int,
    limit: float,
    log: Path,
) -> RefreshRun:
    from django.utils import timezone

    from connections.models import AuditEvent, OAuthToken, TokenState

    run = RefreshRun(pool, concurrency, len(token_ids))
    tokens = OAuthToken.objects.filter(pk__in=token_ids)
    tokens.update(next_refresh_at=timezone.now() - timedelta(seconds=1))
    before = {
        pk: (generation, failures)
        for pk, generation, failures in tokens.values_list("pk", "generation", "consecutive_failures")
    }
    audit_failures = AuditEvent.objects.filter(action="token_refresh", outcome="failure")
    failures_before = audit_failures.count()
    calls_before = server.stats()["token_requests"]["refresh_token"]
    sessions_before = _database_sessions()
    app.control.purge()  # nothing left over from an earlier run

    worker = start_worker(env, pool, concurrency, log)
    try:
        wait_for_worker(app, worker, log)
        started = time.monotonic()
        app.send_task("connections.tasks.refresh_sweep")
        last_change = 0.0
        while (elapsed := time.monotonic() - started) < limit:
            done = failed = 0
            for pk, generation, state, failures in tokens.values_list(
                "pk", "generation", "state", "consecutive_failures"
            ):
                if generation > before[pk][0]:
                    done += 1
                elif state != TokenState.ACTIVE or failures > before[pk][1]:
                    failed += 1
            if done != run.done:
                last_change = elapsed
                run.timeline.append((elapsed, done))
            run.done, run.failed = done, failed
            if done + failed >= run.tokens:
                break
            if worker.poll() is not None:
                run.problems.append(f"the worker exited (code {worker.returncode}); see {log}")
                run.worker_died = True
                break
            time.sleep(POLL_SECONDS)
        run.seconds = last_change
    finally:
        stop_worker(worker)

    run.failed = max(run.failed, audit_failures.count() - failures_before)
    run.provider_calls = server.stats()["token_requests"]["refresh_token"] - calls_before
    sessions_after = _database_sessions()
    if sessions_before is not None and sessions_after is not None:
        run.database_sessions = sessions_after - sessions_before
    low, high = _first_reaching(run.timeline, 0.1 * run.tokens), _first_reaching(run.timeline, 0.9 * run.tokens)
    if low and high and high[0] > low[0]:
        run.steady_rate = (high[1] - low[1]) / (high[0] - low[0])
    if run.done + run.failed < run.tokens:
        run.problems.append(
            f"only {run.done + run.failed} of {run.tokens} tokens finished within {limit:g} s (--refresh-seconds)"
        )
    if run.provider_calls > run.done + run.failed:
        run.problems.append(
            f"the auth server received {run.provider_calls} refresh requests for {run.done} refreshed tokens"
        )
    return run


def _database_sessions() -> int | None:
    """Sessions ever opened to this database; None where the server cannot say (before PostgreSQL 15)."""
    from django.db import DatabaseError, connection

    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_stat_force_next_flush()")  # our own counters too, now
            cursor.execute("SELECT sessions FROM pg_stat_database WHERE datname = current_database()")
            return cursor.fetchone()[0]
    except DatabaseError:
        return None


def _verb(sql: str) -> str:
    """SELECT connections_oauthtoken / UPDATE ... : enough to see what one refresh asks of the database."""
    words = sql.replace('"', "").split()
    verb = words[0].upper() if words else "?"
    if verb in ("SELECT", "DELETE"):
        table = words[words.index("FROM") + 1] if "FROM" in words else "?"
        for_update = " FOR UPDATE" if "FOR UPDATE" in sql.upper() else ""
        return f"{verb} {table}{for_update}"
    if verb in ("UPDATE", "INSERT"):
        return f"{verb} {words[2] if verb == 'INSERT' else words[1]}"
    return verb


def _first_reaching(timeline: list[tuple[float, int]], count: float) -> tuple[float, int] | None:
    return next((point for point in timeline if point[1] >= count), None)


# --- report ---------------------------------------------------------------------------------------------------


def report(args: argparse.Namespace, seeded: Seeded, query: QueryFigures, probe: Probe, runs: list[RefreshRun]) -> int:
    cores, usable = os.cpu_count(), len(os.sched_getaffinity(0))
    print(f"\nMachine: {cores} cores ({usable} usable); PostgreSQL, Redis, the auth server, the worker and this")
    print("script share them. PostgreSQL runs with fsync off (tests' settings), so writes are cheaper than on a")
    print("real server.")
    print(
        f"Data: {seeded.connections:,} connections with one token each ({seeded.disabled:,} connections disabled, "
        f"{seeded.unscheduled:,} tokens awaiting re-authorization), written in {seeded.seconds:.1f} s with "
        "per-row encryption."
    )
    print(
        f"Due at the sweep: {query.due:,} tokens ({query.due / seeded.connections:.2%}); one sweep claims at most "
        f"{query.batch:,} (REFRESH_SWEEP_BATCH)."
    )

    print(f"\nDue-token query of token_refresh_claim_due ({args.runs} runs each)")
    print(f"  {'':44}{'median ms':>10}{'p95 ms':>10}{'rows':>8}")
    for timing in (query.indexed, query.baseline, query.claim):
        print(f"  {timing.label:44}{timing.median:10.2f}{timing.p95:10.2f}{timing.rows:8d}")
    speedup = query.baseline.median / query.indexed.median if query.indexed.median else 0.0
    verdict = "meets" if query.indexed.p95 < TARGET_MS else "MISSES"
    print(f"  index vs baseline: {speedup:.1f}x faster; p95 {query.indexed.p95:.2f} ms {verdict} the {TARGET_MS:g} ms")
    index_lines = [line.strip() for line in query.plan if query.index_name and query.index_name in line]
    index_line = index_lines[0] if index_lines else "NOT USED"
    print(f"  plan line for {query.index_name or 'the next_refresh_at index (not found)'}: {index_line}")
    print("  EXPLAIN ANALYZE (index):")
    for line in query.plan:
        print(f"    {line}")
    print("  EXPLAIN ANALYZE (baseline), top lines:")
    for line in query.baseline_plan[:6]:
        print(f"    {line}")
    if query.update_plan:
        print(f"  EXPLAIN ANALYZE of the claim's UPDATE ({query.claim.rows} rows; its id list elided):")
        for line in query.update_plan:
            print(f"    {ID_LIST.sub('ANY (<ids>)', line)}")
    print(f"  {len(query.indexes)} indexes on the token table, each rewritten for every claimed or refreshed row")
    print(f"  (next_refresh_at is indexed, so these updates are never HOT): {', '.join(query.indexes)}")

    print(f"\nRefreshes by one worker: {args.refresh_tokens} tokens due (refresh_token grant, rotation), auth server")
    print(f"token latency {args.latency * 1e3:g} ms; seconds = from sending the sweep to the last refresh seen")
    print(
        f"  {'pool':10}{'conc':>5}{'refreshed':>10}{'failed':>7}{'seconds':>9}{'refresh/s':>10}{'10-90% /s':>10}"
        f"{'ceiling/s':>10}{'provider calls':>15}{'DB sessions':>12}"
    )
    for run in runs:
        ceiling = run.concurrency / args.latency if args.latency else float("inf")
        print(
            f"  {run.pool:10}{run.concurrency:5d}{run.done:10d}{run.failed:7d}{run.seconds:9.2f}{run.rate:10.1f}"
            f"{run.steady_rate:10.1f}{ceiling:10.1f}{run.provider_calls:15d}"
            f"{'?' if run.database_sessions is None else run.database_sessions:>12}"
        )
    print(
        f"  ceiling = concurrency / latency: solo at {args.latency * 1e3:g} ms can do at most "
        f"{1 / args.latency if args.latency else float('inf'):.0f}/s; prefork's is also bounded by {usable} cores."
    )
    print("  DB sessions: PostgreSQL connections opened during the run. One per task run (refreshes, sweep, heartbeat)")
    print("  means the worker reconnects for every task: Celery's Django fixup closes connections around each task,")
    print("  so CONN_MAX_AGE does not hold in workers unless CELERY_DB_REUSE_MAX is set.")
    print(f"\nOne refresh taken apart (median of 20 sequential calls, ms; latency {args.latency * 1e3:g} ms):")
    print(f"  provider alone, no added latency (the auth server's own work)   {probe.provider_zero_ms:8.1f}")
    print(f"  provider alone (oauth_client.refresh)                           {probe.provider_ms:8.1f}")
    print(
        f"  task body in this process (token_refresh_scheduled)             {probe.in_process_ms:8.1f}"
        f"   {len(probe.queries)} SQL statements"
    )
    solo = next((run for run in runs if run.pool == "solo" and run.steady_rate), None)
    if solo is not None:
        print(f"  in the solo worker (1 / its 10-90% rate)                        {1e3 / solo.steady_rate:8.1f}")
    print(
        f"  a duplicate task (generation already refreshed: no provider call) {probe.duplicate_ms:6.1f}"
        f"   {len(probe.duplicate_queries)} SQL statements"
    )
    print(f"  the SQL of one refresh: {', '.join(_verb(sql) for sql in probe.queries)}")
    print(
        f"  solo ceiling with this provider's measured round trip: {1e3 / probe.provider_ms:.1f}/s "
        f"(nominal 1 / latency: {1 / args.latency if args.latency else float('inf'):.0f}/s)"
    )
    print(f"Load average (1, 5, 15 min) at the end: {', '.join(f'{load:.2f}' for load in os.getloadavg())}")

    failed = False
    for run in runs:
        for problem in run.problems:
            print(f"  {run.pool}: {problem}")
        failed = failed or run.failed > 0 or run.worker_died or run.provider_calls > run.done + run.failed
    if failed:
        print("FAILED: refreshes failed, were requested twice, or the worker died; see the worker logs.")
        return 1
    return 0


# --- main -----------------------------------------------------------------------------------------------------


def main() -> int:
    args = parse_args()
    # SIGTERM (a CI timeout) must run the clean-up below as Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workdir = Path(tempfile.mkdtemp(prefix="controlroom-refresh-bench-"))
    postgres_dir: Path | None = None
    server: AuthServer | None = None
    app = None
    code = 2
    try:
        print("Starting PostgreSQL and Redis ...", flush=True)
        postgres_url = servers.start_postgres()
        postgres_dir = postgres_directory(postgres_url)
        database_url = create_database(postgres_url, DATABASE_NAME)
        redis_url = servers.start_redis()
        # The loopback authorization server speaks plain http.
        env = app_environment(
            database_url=database_url, redis_url=redis_url, workdir=workdir, OUTBOUND_HTTP_ALLOWED_HOSTS="127.0.0.1"
        )
        print("Migrating ...", flush=True)
        run_step("migrate", [sys.executable, "manage.py", "migrate", "--no-input", "-v", "0"], {**env, "DEBUG": "true"})

        os.environ.update(env)
        import django

        django.setup()
        from controlroom.celery import app
        from providers.services import provider_catalog_sync

        provider_catalog_sync()
        print(f"Writing {args.connections:,} connections and tokens (COPY, batches of {args.batch}) ...", flush=True)
        seeded = seed_synthetic(args.connections, args.due_fraction, args.batch)
        print(f"Timing the due-token query ({args.runs} runs each) ...", flush=True)
        query = time_due_query(args.runs)

        print("Starting the auth server; authorizing the bench connections through the code flow ...", flush=True)
        (workdir / "authserver").mkdir()
        server = AuthServer(log_dir=str(workdir / "authserver"))
        server.start()
        *token_ids, probe_id = authorize_bench_connections(server, args.refresh_tokens + 1)
        moved = move_synthetic_tokens_away(token_ids)
        print(f"  {moved:,} synthetic tokens due within the hour moved a day ahead (they point at no server)")
        print("Taking one refresh apart: provider alone, then the task body in this process ...", flush=True)
        probe = probe_one_refresh(server, probe_id, args.latency)
        runs = []
        for pool, concurrency in POOLS:
            print(f"Worker --pool {pool} --concurrency {concurrency}: sweep, then refreshes ...", flush=True)
            run = measure_worker(
                app=app,
                env=env,
                server=server,
                token_ids=token_ids,
                pool=pool,
                concurrency=concurrency,
                limit=args.refresh_seconds,
                log=workdir / f"worker-{pool}.log",
            )
            print(f"  {run.done} refreshed, {run.failed} failed in {run.seconds:.2f} s", flush=True)
            runs.append(run)
        code = report(args, seeded, query, probe, runs)
        return code
    finally:
        if app is not None:
            app.close()
        if server is not None:
            server.stop()
        if "django" in sys.modules:
            from django.db import connections

            connections.close_all()
        servers._stop_all()  # the servers start_postgres()/start_redis() registered; no public stop exists
        if postgres_dir is not None:
            shutil.rmtree(postgres_dir, ignore_errors=True)
        if code == 1:
            print(f"Logs kept in {workdir} (worker-*.log, authserver/).", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    run_main(main)
