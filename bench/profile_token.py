"""Where a token request's time goes: its SQL, each step's cost, and a cProfile of many calls.

    .venv/bin/python bench/profile_token.py [--requests 500] [--rate-limit N]

Same database, data and settings as bench/token_endpoint.py, but in this one process through Django's test
client (full middleware, no gunicorn), so the figures hold only the app's work. "token" is the endpoint as bots
meet it (repeated requests are answered from memory, connections.cache.token_cache); "token-full-path" forgets what
was kept before each request, so every one goes through the database. The step timings call
connections.endpoint.issuing's private steps one by one; if they are renamed, that section says so and is skipped.
"""

import argparse
import cProfile
import io
import os
import pstats
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.token_endpoint import BARE_PATH, UNREACHABLE_RATE_LIMIT, prepared_app


def mean_us(step: Callable[[], object], times: int) -> float:
    started = time.perf_counter()
    for _ in range(times):
        step()
    return (time.perf_counter() - started) / times * 1e6


def step_timings(slug: str, authorization: str, times: int) -> None:
    """Each step of issuing.token_request's full path on its own, plus what the old four-query read cost."""
    from django.db import connection

    from connections.audit import events as audit
    from connections.endpoint import issuing
    from connections.endpoint.bot_keys import bot_key_check, presented_key
    from connections.endpoint.read import token_request_read
    from connections.models import BotKey, Connection, OAuthToken

    presented = presented_key(authorization)
    try:
        read = token_request_read(presented.key_id, slug)
        key, conn = read.key, read.connection
        steps: dict[str, Callable[[], object]] = {
            "token_request_read (1 SELECT)": lambda: token_request_read(presented.key_id, slug),
            "bot_key_check": lambda: bot_key_check(presented, key),
            "_check_rate (counted here, reported later)": lambda: issuing._check_rate(key),
            "audit_record (1 INSERT)": lambda: audit.audit_record(
                action=audit.Action.TOKEN_REQUEST,
                outcome=audit.Outcome.SUCCESS,
                connection=conn,
                actor=key.user,
                detail="bench",
            ),
        }
    except AttributeError as exc:
        print(f"\nStep timings skipped: connections.endpoint.issuing changed ({exc}).")
        return

    def cursor_select_1() -> None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")

    steps["  a SELECT 1 round trip, for scale"] = cursor_select_1
    # What the full path read with the ORM before token_request_read: four queries, each compiled every time.
    invited = Connection.roles.through.objects.filter(connection=conn.pk, group__user=key.user_id)
    steps["  before: key and user (ORM)"] = lambda: (
        BotKey.objects.select_related("user").filter(key_id=key.key_id).first()
    )
    steps["  before: connection (ORM)"] = lambda: (
        Connection.objects.only("id", "slug", "is_enabled", "grant_type", "token_type").filter(slug=slug).first()
    )
    steps["  before: invitation EXISTS (ORM)"] = lambda: invited.exists()
    steps["  before: token (ORM)"] = lambda: (
        OAuthToken.objects.filter(connection=conn, user__isnull=True).defer("refresh_token", "id_token").first()
    )

    print(f"\nSteps of one token request, mean of {times} calls each (µs, wall):")
    for name, step in steps.items():
        print(f"  {mean_us(step, times):8.0f}  {name}")


def explain_queries(statements: list[str], times: int) -> None:
    """For each SELECT: the server's planning and execution time, and a round trip of the finished SQL."""
    from django.db import connection

    def run(sql: str) -> list:
        with connection.cursor() as cursor:
            cursor.execute(sql)
            return cursor.fetchall()

    print("\nEach SELECT of the request, already compiled to SQL (µs):")
    print(f"  {'planning':>9}{'execution':>10}{'round trip':>11}{'its CPU here':>13}  table")
    for sql in statements:
        summary = dict(
            line[0].split(": ", 1) for line in run(f"EXPLAIN (ANALYZE, SUMMARY) {sql}") if "Time:" in line[0]
        )
        cpu_started = time.process_time()
        trip = mean_us(lambda sql=sql: run(sql), times)
        cpu = (time.process_time() - cpu_started) / times * 1e6
        table = sql.split('"', 2)[1]  # of the first selected column
        plan, execute = (float(summary[name].split()[0]) * 1e3 for name in ("Planning Time", "Execution Time"))
        print(f"  {plan:9.0f}{execute:10.0f}{trip:11.0f}{cpu:13.0f}  {table}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=500, help="requests timed per URL (default 500)")
    parser.add_argument("--rate-limit", type=int, default=UNREACHABLE_RATE_LIMIT)
    parser.add_argument("--database-options", default="", help="JSON merged into the database OPTIONS")
    parser.add_argument(
        "--profile",
        choices=("token", "token-full-path", "bare"),
        default="token",
        help="the URL to run under cProfile (default token)",
    )
    args = parser.parse_args()
    with prepared_app(rate_limit=args.rate_limit, database_options=args.database_options) as app:
        # Settings are read from the environment when Django starts, so it starts only now.
        os.environ.update(app.env)
        import django

        django.setup()
        from django.db import connection
        from django.test import Client
        from django.test.utils import CaptureQueriesContext

        from connections.cache import token_cache

        client = Client(SERVER_NAME="127.0.0.1", HTTP_AUTHORIZATION=app.authorization)
        token_path = f"/api/v1/connections/{app.slug}/token"
        paths = {"bare": BARE_PATH, "token": token_path, "token-full-path": token_path}

        def get(name: str) -> None:
            if name == "token-full-path":
                token_cache._process().answers.clear()  # nothing kept: this request goes through the database
            response = client.get(paths[name])
            if response.status_code != 200:
                raise SystemExit(f"{name} answered {response.status_code}: {response.content[:300]!r}")

        for _ in range(20):  # connections opened, caches filled, last-used written
            get("token-full-path")
            get("bare")

        with CaptureQueriesContext(connection) as queries:
            get("token-full-path")
        print(f"\nSQL of one token request through the database ({len(queries)} queries; CONN_HEALTH_CHECKS adds an")
        print("uncounted SELECT 1):")
        for query in queries:
            print(f"  {query['sql'][:160]}")
        explain_queries([query["sql"] for query in queries if query["sql"].startswith("SELECT")], args.requests)

        print(f"\nMean per request over {args.requests} requests, test client, one process:")
        for name in paths:
            with CaptureQueriesContext(connection) as queries:
                get(name)
            statements = len(queries)  # now: the next request's request_started signal empties the log
            started, cpu_started = time.perf_counter(), time.process_time()
            for _ in range(args.requests):
                get(name)
            wall = (time.perf_counter() - started) / args.requests
            cpu = (time.process_time() - cpu_started) / args.requests
            print(f"  {name:20} {wall * 1e3:6.2f} ms wall, {cpu * 1e3:6.2f} ms CPU here, {statements} SQL statements")

        step_timings(app.slug, app.authorization, args.requests)

        # CPU time, not wall time: what this process itself spends, waiting for PostgreSQL and Redis excluded.
        profile = cProfile.Profile(time.process_time)
        profile.enable()
        for _ in range(args.requests):
            get(args.profile)
        profile.disable()
        stats = pstats.Stats(profile)
        print(f"\nCPU of this process per {args.profile} request, by step of the app's code (cProfile, µs):")
        for (filename, _, function), row in sorted(stats.stats.items(), key=lambda item: -item[1][3]):
            ours = "/connections/" in filename
            if ours and "/site-packages/" not in filename and row[3] / args.requests > 20e-6:
                print(f"  {row[3] / args.requests * 1e6:8.0f}  {function} ({Path(filename).name})")
        for order, title in (("cumulative", "with what they call"), ("tottime", "of their own")):
            out = io.StringIO()
            stats.stream = out
            stats.strip_dirs().sort_stats(order).print_stats(25)
            print(f"\nThe functions with the most CPU {title} (profiling inflates small calls):")
            print(out.getvalue().split("\n", 6)[-1].rstrip())
        connection.close()


if __name__ == "__main__":
    main()
