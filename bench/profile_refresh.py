"""Where a refresh's CPU goes: this process's (the worker's share), PostgreSQL's and Redis's per refresh, the SQL
statements of one refresh, and a cProfile of many.

    .venv/bin/python bench/profile_refresh.py [--tokens 2000] [--profile 500]

Same synthetic rows and provider stub as bench/capacity.py, but the refreshes run in this one process, through
connections.engine.batch.tokens_refresh as a worker's task calls it (its thread pool, REFRESH_CONCURRENCY), in
batches of REFRESH_TASK_SIZE; no Celery, no beat. The profile section runs the same batches with the thread pool
replaced by this thread (cProfile sees one thread), so its figures hold the work of a refresh, not of waiting or
of threads taking turns.
"""

import argparse
import cProfile
import io
import os
import pstats
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.capacity import cpu_seconds, redis_pid, seed, start, tear_down
from bench.common import app_environment, create_database, postgres_directory, run_main, run_step
from tests.support import servers

DATABASE_NAME = "controlroom_refresh_profile"
LIFETIME = 3600


def due_pairs(count: int) -> list[tuple[int, int]]:
    from connections.models import OAuthToken

    return list(OAuthToken.objects.order_by("?").values_list("id", "generation")[:count])


def counted_statements(work) -> int:
    """Statements sent by `work` in any thread: Django's execute wrappers are per connection, so count at the
    cursor."""
    from django.db.backends import utils

    count, originals = [0], (utils.CursorWrapper.execute, utils.CursorWrapper.executemany)

    def execute(self, *args, **kwargs):
        count[0] += 1
        return originals[0](self, *args, **kwargs)

    def executemany(self, *args, **kwargs):
        count[0] += 1
        return originals[1](self, *args, **kwargs)

    utils.CursorWrapper.execute, utils.CursorWrapper.executemany = execute, executemany
    try:
        work()
    finally:
        utils.CursorWrapper.execute, utils.CursorWrapper.executemany = originals
    return count[0]


def measure_batches(pairs: list[tuple[int, int]], pids: dict[str, int]) -> None:
    from django.conf import settings

    from connections.engine.batch import tokens_refresh

    size = settings.REFRESH_TASK_SIZE
    batches = [pairs[first : first + size] for first in range(0, len(pairs), size)]
    before = {role: cpu_seconds(pid) for role, pid in pids.items()}
    here, started = time.process_time(), time.perf_counter()
    for batch in batches:
        tokens_refresh(batch, None)
    wall, here = time.perf_counter() - started, time.process_time() - here
    after = {role: cpu_seconds(pid) for role, pid in pids.items()}
    print(f"\n{len(pairs)} refreshes in batches of {size}, {settings.REFRESH_CONCURRENCY} threads: {wall:.1f} s")
    print(f"  {len(pairs) / wall:8.1f} refreshes a second (one process)")
    cpu = {"this process": here} | {role: after[role] - before[role] for role in pids}
    for role, seconds in cpu.items():
        print(f"  CPU {role:<14}{1000 * seconds / len(pairs):7.2f} ms a refresh")
    print(f"  CPU in all        {1000 * sum(cpu.values()) / len(pairs):7.2f} ms a refresh")


def mean_us(step: Callable[[], object], times: int) -> float:
    started = time.process_time()
    for _ in range(times):
        step()
    return (time.process_time() - started) / times * 1e6


def step_timings(pairs: list[tuple[int, int]]) -> None:
    """Each step of a refresh on its own, one at a time in this thread: the CPU of this process (µs)."""
    import requests
    from django.db import connection

    from connections.audit.events import Action, Outcome, audit_record
    from connections.cache import invalidation as signals
    from connections.engine import lease
    from connections.engine import store as tokens
    from connections.oauth import client as oauth_client

    token = lease.token_rows().get(pk=pairs[0][0])
    config = tokens.connection_client_config(token.connection)
    fence, row = lease.tokens_lease_take([token.pk], "bench")[0]
    response = oauth_client.refresh(config, refresh_token=row.refresh_token)
    lease.tokens_lease_give_back("bench", [token.pk])
    bare = requests.Session()
    bare.trust_env = False
    field = type(token)._meta.get_field("refresh_token")
    stored = field._dump("rt-" + "x" * 32)  # what the column holds
    batches = iter([[pk for pk, _ in pairs[first : first + 50]] for first in range(0, len(pairs), 50)] * 50)
    steps: dict[str, Callable[[], object]] = {
        "lease a batch of 50 and read it (2 statements), a token's share": lambda: lease.tokens_lease_give_back(
            "bench", [fence.token_id for fence, _ in lease.tokens_lease_take(next(batches), "bench")]
        ),
        "provider call: oauth_client.refresh, kept alive": lambda: oauth_client.refresh(
            config,
            refresh_token="bench",  # noqa: S106
        ),
        "provider call: bare requests, kept alive": lambda: bare.post(
            config.token_url, data={"grant_type": "refresh_token", "refresh_token": "bench"}
        ).json(),
        "encrypt a value": lambda: field.get_db_prep_save("rt-" + "x" * 32, connection),
        "decrypt a value": lambda: field.from_db_value(stored, None, connection),
        "fenced UPDATE (no row matches)": lambda: tokens.token_store_refreshed(
            fence=fence, token=row, response=response
        ),
        "audit_record (one INSERT)": lambda: audit_record(
            action=Action.TOKEN_REFRESH, outcome=Outcome.SUCCESS, connection=token.connection, actor_label="bench"
        ),
        "token_rows_changed (Redis)": lambda: signals.token_rows_changed(token.connection.slug),
    }
    print(f"\nEach step on its own, {len(pairs)} times, CPU of this process (µs):")
    for name, step in steps.items():
        times = len(pairs) // 50 if name.startswith("lease") else len(pairs)
        print(f"  {mean_us(step, times) / (50 if name.startswith('lease') else 1):8.0f}  {name}")


class _InThisThread(Executor):
    """What refresh_batch's thread pool does, done at once in the calling thread: cProfile sees one thread."""

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        future.set_result(fn(*args, **kwargs))
        return future


def profile(pairs: list[tuple[int, int]]) -> None:
    from django.conf import settings

    from connections.engine import batch as refresh_batch

    size = settings.REFRESH_TASK_SIZE
    threads, refresh_batch._threads = refresh_batch._threads, _InThisThread
    run = cProfile.Profile(time.process_time)
    try:
        run.enable()
        for first in range(0, len(pairs), size):
            refresh_batch.tokens_refresh(pairs[first : first + size], None)
        run.disable()
    finally:
        refresh_batch._threads = threads
    stats = pstats.Stats(run)
    for order, title in (("cumulative", "with what they call"), ("tottime", "of their own")):
        out = io.StringIO()
        stats.stream = out
        stats.strip_dirs().sort_stats(order).print_stats(30)
        print(f"\nThe functions with the most CPU {title}, {len(pairs)} refreshes through the batch path in this")
        print("thread (cProfile inflates small calls):")
        print(out.getvalue().split("\n", 6)[-1].rstrip())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=2000, help="refreshes measured through the batch path")
    parser.add_argument("--profile", type=int, default=500, help="refreshes run under cProfile")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="controlroom-refresh-profile-"))
    postgres_dir, stub = None, None
    try:
        postgres_url = servers.start_postgres()
        postgres_dir = postgres_directory(postgres_url)
        database_url, redis_url = create_database(postgres_url, DATABASE_NAME), servers.start_redis()
        port = servers.free_port()
        stub = start(
            [sys.executable, "bench/provider_stub.py", str(port), str(LIFETIME)], dict(os.environ), workdir / "stub.log"
        )
        env = app_environment(
            database_url=database_url,
            redis_url=redis_url,
            workdir=workdir,
            OUTBOUND_HTTP_ALLOWED_HOSTS="127.0.0.1",
            REFRESH_PROVIDER_CONCURRENCY="1000",
            LOG_LEVEL="WARNING",
        )
        run_step("migrate", [sys.executable, "manage.py", "migrate", "--no-input", "-v", "0"], {**env, "DEBUG": "true"})
        os.environ.update(env)
        import django

        django.setup()
        seed(args.tokens + args.profile + 200, f"http://127.0.0.1:{port}", LIFETIME, 5000)
        postmaster = int((postgres_dir / "data" / "postmaster.pid").read_text().split()[0]) if postgres_dir else 0
        pairs = due_pairs(args.tokens + args.profile + 200)
        warm, measured, profiled = pairs[:200], pairs[200 : 200 + args.tokens], pairs[200 + args.tokens :]
        measure_batches(warm, {})  # threads, connections and sessions made
        from connections.engine.batch import tokens_refresh

        statements = counted_statements(lambda: tokens_refresh(measured[:50], None))
        print(f"\nSQL statements: {statements} for a batch of 50 ({statements / 50:.1f} a refresh)")
        measure_batches(measured[50:], {"PostgreSQL": postmaster, "Redis": redis_pid(redis_url)})
        step_timings(profiled)
        profile(due_pairs(args.profile))
        return 0
    finally:
        tear_down([stub] if stub else [], postgres_dir, workdir)


if __name__ == "__main__":
    run_main(main)
