"""The admin at scale: every page an administrator opens, and every audit export, timed against the volumes of a
large installation, on PostgreSQL.

    .venv/bin/python bench/admin_scale.py [--audit-rows 50000000] [--connections 1000000] [--keys 100000]
        [--invited 10000] [--loads 5] [--answers 1000000]

What it runs, all thrown away afterwards:
- PostgreSQL and Redis (tests/support/servers.py), a fresh database, `manage.py migrate` and collectstatic;
- the volumes, written by PostgreSQL itself (bench/admin_scale_seed.py, generate_series): --audit-rows audit
  events over 400 days (mostly rolled-up token answers and proxied calls, refreshes, failures, other events),
  --connections connections with one-hour tokens in every state, --keys bot keys of 1,000 bot users, and a person
  whose role is invited to --invited user-specific connections (authorized for half of them);
- each page with a signed-in client (the test client, in this process: no network, the whole Django stack): one
  load to warm it, then --loads loads; the table gives the median, the slowest and the queries of each;
- each export: the CSV download of the audit list (one connection, one day) and `manage.py audit_export` (one
  hour, one day), read to the end; and the dashboard's summary, which a scheduled task makes every two minutes;
- --answers token answers written through the audit's real write path (connections.audit.rows) as one web process
  reporting every 50 ms at 2,000 answers a second, from 20 keys to 5 connections each: the rows and bytes they
  add under the rollup, against one row per answer before it.

Exit codes: 0 measured, 1 a page answered other than 200, 2 could not set up, 130 interrupted.
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

# Run as a file, Python puts bench/ on sys.path, not the root that holds the bench and tests packages.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.admin_scale_seed import BOTS, KEY_IDS, NOW_AT, Volumes, seed
from bench.common import app_environment, create_database, postgres_directory, run_main, run_step
from tests.support import servers

DATABASE_NAME = "controlroom_admin_scale_bench"
PAGE_LIMIT_MS = 1000.0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--audit-rows", type=int, default=50_000_000)
    parser.add_argument("--connections", type=int, default=1_000_000)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--invited", type=int, default=10_000)
    parser.add_argument("--loads", type=int, default=5, help="timed loads of each page, after one to warm it")
    parser.add_argument("--answers", type=int, default=1_000_000, help="answers written through the rollup")
    parser.add_argument("--show-queries", type=float, default=0, help="a page slower than this (ms): its slowest SQL")
    return parser.parse_args()


@dataclass
class Timing:
    name: str
    url: str
    times_ms: list[float]
    queries: int
    status: int
    slowest: list[tuple[float, str]]  # the warm-up load's slowest queries: (ms, SQL)

    @property
    def p50(self) -> float:
        return statistics.median(self.times_ms)


def pages(volumes: Volumes) -> list[tuple[str, str, str]]:
    """(name, URL, who): the admin's pages as its administrator opens them, My connections as the person."""
    from django.utils import timezone

    some_connection = f"scale-{volumes.connections // 3:07d}"
    some_key = f"scale-bot-{7 % BOTS} (key {KEY_IDS}{7 % volumes.keys:08d})"
    day = timezone.localtime(NOW_AT - timedelta(days=100))
    audit, connections, keys = (f"/admin/connections/{name}/" for name in ("auditevent", "connection", "botkey"))
    return [
        ("admin index", "/admin/", "admin"),
        ("audit list", audit, "admin"),
        ("audit: one action", f"{audit}?action__exact=connection_update", "admin"),
        ("audit: one connection", f"{audit}?connection_label={some_connection}", "admin"),
        ("audit: one key", f"{audit}?actor_label={some_key}", "admin"),
        ("audit: failures", f"{audit}?outcome__exact=failure", "admin"),
        ("audit: proxied calls", f"{audit}?kind__exact=proxy", "admin"),
        ("audit: search", f"{audit}?q={some_connection}", "admin"),
        (
            "audit: one day",
            f"{audit}?created_at__year={day.year}&created_at__month={day.month}&created_at__day={day.day}",
            "admin",
        ),
        ("audit: one month", f"{audit}?created_at__year={day.year}&created_at__month={day.month}", "admin"),
        ("audit: page 50", f"{audit}?p=50", "admin"),
        ("connection list", connections, "admin"),
        ("connections: refresh failing", f"{connections}?status=refresh_failing", "admin"),
        ("connections: search", f"{connections}?q=Scale 00123", "admin"),
        ("connections: page 50", f"{connections}?p=50", "admin"),
        ("dashboard", f"{connections}dashboard/", "admin"),
        ("bot key list", keys, "admin"),
        ("bot keys: search", f"{keys}?q={KEY_IDS}0009", "admin"),
        ("bot keys: expiring in 7 days", f"{keys}?expiry=7d", "admin"),
        ("My connections", "/connections/mine/", "person"),
        ("My connections: search", "/connections/mine/?q=scale-09", "person"),
        ("My connections: page 20", "/connections/mine/?p=20", "person"),
    ]


def time_page(client, name: str, url: str, loads: int) -> Timing:
    from django.db import connection

    queries: list[tuple[float, str]] = []

    def counted(execute, sql, params, many, context):
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            queries.append(((time.perf_counter() - started) * 1000, sql))

    with connection.execute_wrapper(counted):  # Django resets its own query log at each request
        warm = client.get(url)  # the warm-up load, its queries counted
        _read(warm)
    times = []
    for _ in range(loads):
        started = time.perf_counter()
        response = client.get(url)
        _read(response)
        times.append((time.perf_counter() - started) * 1000)
    return Timing(name, url, times, len(queries), warm.status_code, sorted(queries, reverse=True)[:2])


def _read(response) -> int:
    if getattr(response, "streaming", False):
        return sum(len(chunk) for chunk in response.streaming_content)
    return len(response.content)


def time_exports(client, volumes: Volumes, workdir: Path) -> list[tuple[str, int, float]]:
    """(what, bytes, seconds) of each export, read to its end."""
    from django.core.management import call_command
    from django.utils import timezone

    found = []
    day = timezone.localtime(NOW_AT - timedelta(days=100))
    export = "/admin/connections/auditevent/export.csv"
    downloads = [
        ("CSV: one connection", f"{export}?connection_label=scale-{volumes.connections // 3:07d}"),
        (
            "CSV: one day",
            f"{export}?created_at__year={day.year}&created_at__month={day.month}&created_at__day={day.day}",
        ),
    ]
    for what, url in downloads:
        started = time.perf_counter()
        size = _read(client.get(url))
        found.append((what, size, time.perf_counter() - started))
    since = (NOW_AT - timedelta(days=100)).replace(minute=0, second=0, microsecond=0)
    for what, span in (("audit_export: one hour", timedelta(hours=1)), ("audit_export: one day", timedelta(days=1))):
        output = workdir / "export.jsonl"
        started = time.perf_counter()
        arguments = ["--since", since.isoformat(), "--until", (since + span).isoformat(), "-o", str(output)]
        call_command("audit_export", *arguments, stderr=open(os.devnull, "w"))
        found.append((what, output.stat().st_size, time.perf_counter() - started))
    from connections.web.dashboard import dashboard_summarize

    started = time.perf_counter()
    dashboard_summarize()  # what the scheduled task does every two minutes, off the page loads
    found.append(("dashboard summary (task)", 0, time.perf_counter() - started))
    return found


def rollup_growth(answers: int) -> dict[str, float]:
    """Write `answers` token answers through connections.audit.rows as one web process reporting every 50 ms at
    2,000 a second (20 keys, 5 connections each; one answer a minute per pair by the full path, the rest from
    memory): the rows and bytes they add."""
    from django.db import connection

    from connections.audit.rows import audit_rows_insert, rollups_forget
    from connections.models import AuditEvent

    rate, interval, pairs = 2_000, 0.05, [(key, conn) for key in range(20) for conn in range(5)]
    table = AuditEvent._meta.db_table

    def size() -> tuple[int, int]:
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT pg_total_relation_size('{table}'), (SELECT count(*) FROM {table})")  # noqa: S608
            return cursor.fetchone()

    bytes_before, rows_before = size()
    rollups_forget()
    clock, written, full_at = NOW_AT + timedelta(days=1), 0, {}
    while written < answers:
        batch = []
        for n in range(min(int(rate * interval), answers - written)):
            key, conn = pairs[(written + n) % len(pairs)]
            at = clock + timedelta(seconds=n / rate)
            kind = (
                "full" if full_at.get((key, conn), at - timedelta(minutes=2)) <= at - timedelta(minutes=1) else "memory"
            )
            if kind == "full":
                full_at[(key, conn)] = at
            batch.append(_answer(key, conn, kind, at))
        audit_rows_insert(batch)
        written += len(batch)
        clock += timedelta(seconds=interval)
    with connection.cursor() as cursor:
        cursor.execute(f"VACUUM ANALYZE {table}")
    bytes_after, rows_after = size()
    return {"answers": answers, "rows": rows_after - rows_before, "bytes": bytes_after - bytes_before}


def _answer(key: int, conn: int, kind: str, at) -> dict:
    return {
        "created_at": at,
        "actor_id": None,
        "actor_label": f"rollup-bot-{key} (key rollupkey{key:07d})",
        "connection_id": None,
        "connection_label": f"scale-{conn + 1:07d}",
        "action": "token_request",
        "outcome": "success",
        "detail": "Token expiring 2026-12-01 10:00:00",
        "remote_addr": "10.1.0.7",
        "kind": kind,
    }


def print_results(volumes: Volumes, seeded: dict[str, float], timings: list[Timing], exports, growth) -> None:
    print(
        f"\nVolumes: {volumes.audit_rows:,} audit rows, {volumes.connections:,} connections and tokens, "
        f"{volumes.keys:,} bot keys, a person invited to {volumes.invited:,} connections"
    )
    print("Seeded in: " + ", ".join(f"{what} {seconds:.0f} s" for what, seconds in seeded.items()))
    print(f"\n{'page':<32} {'p50 ms':>8} {'max ms':>8} {'queries':>8}  status")
    for timing in timings:
        verdict = "" if timing.p50 < PAGE_LIMIT_MS else "  OVER 1 s"
        print(
            f"{timing.name:<32} {timing.p50:>8.0f} {max(timing.times_ms):>8.0f} {timing.queries:>8}  "
            f"{timing.status}{verdict}"
        )
    print(f"\n{'export':<32} {'bytes':>12} {'seconds':>8}")
    for what, size, seconds in exports:
        print(f"{what:<32} {size:>12,} {seconds:>8.2f}")
    table_bytes, table_rows = growth["table_bytes"], growth["table_rows"]
    per_row = table_bytes / table_rows if table_rows else 0
    print(
        f"\nAudit table: {table_bytes / 2**30:.2f} GiB for {table_rows:,} rows (indexes included): "
        f"{per_row:.0f} bytes a row"
    )
    answers, rows = growth["answers"], growth["rows"]
    print(
        f"{answers:,} answers through the rollup (2,000/s, one web process, 20 keys x 5 connections): {rows:,} rows, "
        f"{answers / max(rows, 1):,.0f} answers a row"
    )
    million = 1_000_000 / answers
    print(
        f"  bytes per million answers: {rows * million * per_row / 2**20:,.2f} MiB with the rollup "
        f"(the relation grew {growth['bytes'] * million / 2**20:,.1f} MiB, dead row versions of the updates "
        f"included, which vacuum reuses); {per_row * 1_000_000 / 2**20:,.0f} MiB at one row an answer"
    )
    day = 2_000 * 86_400
    print(
        f"  a day at 2,000 answers/s ({day:,} answers): {rows / answers * day:,.0f} rows, "
        f"{rows / answers * day * per_row / 2**20:,.1f} MiB with the rollup; {day:,} rows, "
        f"{day * per_row / 2**30:,.1f} GiB at one row an answer"
    )


def main() -> int:
    args = parse_args()
    volumes = Volumes(args.audit_rows, args.connections, args.keys, args.invited)
    workdir = Path(tempfile.mkdtemp(prefix="controlroom-admin-scale-"))
    postgres_dir = None
    try:
        print("Starting PostgreSQL and Redis ...", flush=True)
        postgres_url = servers.start_postgres()
        postgres_dir = postgres_directory(postgres_url)
        database_url, redis_url = create_database(postgres_url, DATABASE_NAME), servers.start_redis()
        env = app_environment(
            database_url=database_url,
            redis_url=redis_url,
            workdir=workdir,
            LOG_LEVEL="ERROR",
            SECURE_SSL_REDIRECT="false",
            DATABASE_STATEMENT_TIMEOUT="0",  # seeding statements run for minutes; a slow page is timed anyway
        )
        run_step("migrate", [sys.executable, "manage.py", "migrate", "--no-input", "-v", "0"], env)
        run_step("collectstatic", [sys.executable, "manage.py", "collectstatic", "--no-input", "-v", "0"], env)
        os.environ.update(env)
        import django

        django.setup()
        from django.contrib.auth.models import User
        from django.db import connection
        from django.test import Client

        print(f"Seeding {volumes} ...", flush=True)
        seeded = seed(volumes)
        clients = {"admin": Client(HTTP_HOST="127.0.0.1")}
        clients["admin"].force_login(User.objects.create_superuser("scale-admin", password="scale-admin-password"))  # noqa: S106
        clients["person"] = Client(HTTP_HOST="127.0.0.1")
        clients["person"].force_login(User.objects.get(username="scale-person"))
        timings = []
        for name, url, who in pages(volumes):
            timings.append(time_page(clients[who], name, url, args.loads))
            print(f"  {name}: {timings[-1].p50:.0f} ms", flush=True)
            if args.show_queries and timings[-1].p50 > args.show_queries:
                for took, sql in timings[-1].slowest:
                    print(f"      {took:.0f} ms: {sql[:600]}", flush=True)
        exports = time_exports(clients["admin"], volumes, workdir)
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_total_relation_size('connections_auditevent'), reltuples::bigint "
                "FROM pg_class WHERE relname = 'connections_auditevent'"
            )
            table_bytes, table_rows = cursor.fetchone()
        growth = {**rollup_growth(args.answers), "table_bytes": table_bytes, "table_rows": table_rows}
        print_results(volumes, seeded, timings, exports, growth)
        return 0 if all(timing.status == 200 for timing in timings) else 1
    finally:
        if "django" in sys.modules:
            from django.db import connections

            connections.close_all()
        servers._stop_all()
        if postgres_dir is not None:
            shutil.rmtree(postgres_dir, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    run_main(main)
