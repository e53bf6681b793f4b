"""Refresh capacity: how many refreshes a second beat and the workers sustain on this machine, and the CPU each
costs, against a provider stub that answers as fast as a Python server can.

    .venv/bin/python bench/capacity.py [--connections 200000] [--rate 300] [--minutes 10] [--baseline-minutes 2]
    .venv/bin/python bench/capacity.py --find-ceiling [--connections 1000000] [--start-rate 300] [--rate-step 150]
        [--max-rate 1500] [--step-minutes 2]

What it runs, all thrown away afterwards:
- PostgreSQL and Redis (tests/support/servers.py), a fresh database, `manage.py migrate`;
- --connections synthetic connections with one token each, written with COPY; every secret encrypted per row
  by the model field itself. Each token's lifetime is chosen so that keeping them all fresh takes --rate
  refreshes a second (lifetime = connections / rate + the refresh margin), and the first refreshes are spread
  evenly over one cycle, as in an installation that has been running for a while;
- bench/provider_stub.py on loopback: the token URL of every connection (rotation on; it counts a refresh token
  presented twice);
- beat, and one Celery worker with --workers processes. First for --baseline-minutes as the engine was before
  (one token a task, one refresh at a time: REFRESH_TASK_SIZE=1, REFRESH_CONCURRENCY=1), then for --minutes with
  the current defaults; each phase starts from the same evenly spread schedule and empty queues (not from the
  backlog the one before left), and is measured after 30 s of warm-up.

Every 15 s it samples the refreshes the stub answered, the tokens late (past their latest refresh time by more
than a beat interval) and those expired. At the end of each phase: the sustained rate, the backlog over time,
tokens seen expired (must be 0), refresh tokens presented twice (must be 0), and the CPU of each process
(worker, PostgreSQL, Redis, beat; the stub apart) per refresh. The last line reads
`capacity: <R> refreshes/s sustained, <E> expired, <C> ms CPU per refresh` for the current engine.

--find-ceiling looks for the highest rate the machine sustains instead, in a table of --connections tokens (a
million by default) whose refreshes the stub makes last a day. All tokens start days ahead; each step brings
forward just enough never-refreshed ones to need its rate (--start-rate, then --rate-step more each step) for the
warm-up, --step-minutes and a minute beyond, on a fresh worker with empty queues. A step holds when no token
expired, none is late (past its latest refresh time) or overdue (a beat interval past its refresh time) at its end
and the refreshes kept up (90 % of the demand); the search stops at the first step that does not. The last line reads
`ceiling: <R> refreshes/s sustained at <N> connections, <E> expired, <C> ms CPU per refresh`: the last step that
held, its CPU (worker, PostgreSQL, Redis, beat) per refresh. Exit status 1 when no step held or a refresh token
was presented twice.
"""

import argparse
import json
import math
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

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

DATABASE_NAME = "controlroom_capacity_bench"
SAMPLE_SECONDS = 15
WARM_UP_SECONDS = 30
BEAT_INTERVAL = 30  # the production default
MARGIN = 300  # TOKEN_REFRESH_MARGIN's default
JITTER = 0.1  # REFRESH_JITTER's default
TICK = os.sysconf("SC_CLK_TCK")
OUT_OF_THE_WAY = 2 * 86400  # seconds ahead: where the ceiling search keeps the tokens no step needs
CEILING_LIFETIME = 86400  # the stub's token lifetime in the ceiling search: a token refreshed is not due again


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, help="default 200,000; 1,000,000 with --find-ceiling")
    parser.add_argument("--find-ceiling", action="store_true", help="raise the demand until tokens go late")
    parser.add_argument("--start-rate", type=float, default=300.0, help="--find-ceiling: the first step's demand")
    parser.add_argument("--rate-step", type=float, default=150.0, help="--find-ceiling: the demand added a step")
    parser.add_argument("--max-rate", type=float, default=1500.0, help="--find-ceiling: the last step's at most")
    parser.add_argument("--step-minutes", type=float, default=2.0, help="--find-ceiling: a step, after warm-up")
    parser.add_argument("--rate", type=float, default=300.0, help="refreshes a second the lifetimes require")
    parser.add_argument("--minutes", type=float, default=10.0, help="the current engine's phase")
    parser.add_argument("--baseline-minutes", type=float, default=2.0, help="the one-at-a-time phase (0: none)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (--concurrency of the worker)")
    parser.add_argument("--batch", type=int, default=5000, help="rows a COPY")
    args = parser.parse_args()
    if args.connections is None:
        args.connections = 1_000_000 if args.find_ceiling else 200_000
    return args


# --- processes and their CPU --------------------------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def cpu_seconds(root: int) -> float:
    """CPU time of `root` and every process below it, including children it has already reaped."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))):
            parents[int(entry.name)] = int(fields[1])
    tree, grew = {root}, True
    while grew:
        below = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree |= below
        grew = bool(below)
    total = 0
    for pid in tree:
        if fields := _stat(pid):
            total += sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
    return total / TICK


def redis_pid(redis_url: str) -> int:
    port = redis_url.rsplit(":", 1)[1].split("/")[0]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if command.startswith(("redis-server", "/usr/bin/redis-server")) and port in command:
                return int(entry.name)
    raise SetupError("the Redis server's process was not found")


@dataclass
class Roles:
    """The root process of each role whose CPU is counted (the stub's apart)."""

    pids: dict[str, int]

    def cpu(self) -> dict[str, float]:
        return {role: cpu_seconds(pid) for role, pid in self.pids.items()}


def start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("ab") as out:
        return subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def stop(process: subprocess.Popen | None) -> None:
    if process is not None and process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


# --- the synthetic installation -----------------------------------------------------------------------------------


def lifetime_for(connections: int, rate: float) -> int:
    """A token lifetime with which `connections` tokens need `rate` refreshes a second: one refresh a cycle,
    the cycle being the lifetime less the refresh margin (its average, with the jitter)."""
    return math.ceil(connections / rate + MARGIN * (1 - JITTER / 2))


def seed(count: int, stub_url: str, lifetime: int, batch: int, out_of_the_way: bool = False) -> None:
    """`count` connections with a token each, written with COPY. Only each token's refresh token is encrypted row by
    row (it must be unique: the stub counts one presented twice); the client secret and the access token, which no
    refresh reads back as a value to check, are one ciphertext for every row, so a million rows take minutes, not
    tens. The first refreshes are spread over one cycle, or, with `out_of_the_way`, all put days ahead (the ceiling
    search brings forward the ones each step needs)."""
    from django.db import connection as db
    from django.utils import timezone

    from connections.models import Connection, OAuthToken
    from providers.models import GrantType, Provider

    now, rng = timezone.now(), random.Random(20261129)
    cycle = lifetime - MARGIN
    fixed = {"provider_id": Provider.objects.get(slug="custom").pk, "grant_type": GrantType.AUTHORIZATION_CODE}
    fixed |= {"authorization_url": f"{stub_url}/authorize", "token_url": f"{stub_url}/token", "scopes": "api"}
    fixed |= {"created_at": now, "updated_at": now, "client_secret": secrets.token_urlsafe(32)}
    connections = Copier(Connection, ["id", "name", "slug", "client_id"], fixed)
    tokens = Copier(
        OAuthToken,
        ["connection_id", "refresh_token", "expires_at", "next_refresh_at", "obtained_at"],
        {"scope": "api", "extra": {}, "authorized_at": now - timedelta(days=1), "generation": 1, "updated_at": now}
        | {"access_token": "at-" + secrets.token_urlsafe(24)},
    )
    for first in range(1, count + 1, batch):
        numbers = range(first, min(first + batch, count + 1))
        connections.write([(n, f"Capacity {n:07d}", f"capacity-{n:07d}", f"client-{n}") for n in numbers])
        token_rows = []
        for n in numbers:
            if out_of_the_way:
                refresh_at = now + timedelta(seconds=OUT_OF_THE_WAY + rng.uniform(0, 3600))
            else:
                refresh_at = now + timedelta(seconds=rng.uniform(5, cycle))  # one cycle's refreshes, evenly spread
            expires_at = refresh_at + timedelta(seconds=MARGIN)
            obtained = expires_at - timedelta(seconds=lifetime)
            token_rows.append((n, f"seed-{n}", expires_at, refresh_at, obtained))
        tokens.write(token_rows)
        if numbers[-1] % 100_000 == 0 or numbers[-1] == count:
            print(f"  {numbers[-1]:,} / {count:,}", flush=True)
    with db.cursor() as cursor:
        for model in (Connection, OAuthToken):
            table = model._meta.db_table
            sql = f"SELECT setval(pg_get_serial_sequence(%s, 'id'), (SELECT max(id) FROM {table}))"  # noqa: S608
            cursor.execute(sql, [table])
            cursor.execute(f"VACUUM ANALYZE {table}")


# --- one phase ----------------------------------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    seconds: float
    refreshes: int = 0
    cpu: dict[str, float] = field(default_factory=dict)  # seconds, by role
    stub_cpu: float = 0.0
    reuses: int = 0
    backlog: list[tuple[float, int, float]] = field(default_factory=list)  # (t, late tokens, oldest lateness s)
    expired: set[int] = field(default_factory=set)

    @property
    def rate(self) -> float:
        return self.refreshes / self.seconds

    @property
    def cpu_ms(self) -> float:
        return 1000 * sum(self.cpu.values()) / max(1, self.refreshes)


def stub_stats(stub_url: str) -> dict[str, int]:
    with urllib.request.urlopen(f"{stub_url}/stats", timeout=10) as answer:  # noqa: S310 - our loopback stub
        return json.loads(answer.read())


def sample(phase: Phase, started: float) -> None:
    from django.db import connection as db

    latest = MARGIN * (1 - JITTER) - BEAT_INTERVAL  # seconds before expiry by which a token is late
    with db.cursor() as cursor:
        cursor.execute(
            "SELECT count(*), extract(epoch FROM now() - min(expires_at) + %s * interval '1 second') "
            "FROM connections_oauthtoken WHERE expires_at < now() + %s * interval '1 second'",
            [latest, latest],
        )
        late, oldest = cursor.fetchone()
        cursor.execute("SELECT id FROM connections_oauthtoken WHERE expires_at < now() LIMIT 10000")
        phase.expired |= {row[0] for row in cursor.fetchall()}
    phase.backlog.append((time.monotonic() - started, late, float(oldest or 0)))


def spread_the_schedule(lifetime: int) -> None:
    """Every token due once in the next cycle, evenly, as if the installation had been running for a while: each
    phase starts from the same state, not from the backlog the one before left."""
    from django.db import connection as db

    with db.cursor() as cursor:
        cursor.execute(
            "UPDATE connections_oauthtoken SET next_refresh_at = now() + (5 + random() * %s) * interval '1 second', "
            "lease_owner = '', lease_expires_at = NULL",
            [lifetime - MARGIN - 5],
        )
        expiry = "UPDATE connections_oauthtoken SET expires_at = next_refresh_at + %s * interval '1 second'"
        cursor.execute(expiry, [MARGIN])
        cursor.execute("VACUUM ANALYZE connections_oauthtoken")


def run_phase(
    phase: Phase, roles: Roles, stub: subprocess.Popen, stub_url: str, warm_up: float = WARM_UP_SECONDS
) -> Phase:
    time.sleep(warm_up)
    cpu_before, stub_before, stats_before = roles.cpu(), cpu_seconds(stub.pid), stub_stats(stub_url)
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < phase.seconds:
        sample(phase, started)
        time.sleep(min(SAMPLE_SECONDS, phase.seconds - elapsed))
    stats, cpu_after = stub_stats(stub_url), roles.cpu()
    phase.seconds = time.monotonic() - started
    phase.refreshes = stats["refreshes"] - stats_before["refreshes"]
    phase.reuses = stats["reuses"] - stats_before["reuses"]
    phase.cpu = {role: cpu_after[role] - cpu_before[role] for role in cpu_after}
    phase.stub_cpu = cpu_seconds(stub.pid) - stub_before
    return phase


def report(phase: Phase, required: float) -> None:
    print(f"\n{phase.name}: {phase.seconds / 60:.1f} min")
    print(f"  refreshes           {phase.refreshes:,} ({phase.rate:.1f} a second; required: {required:.1f})")
    print(f"  tokens seen expired {len(phase.expired):,}    refresh tokens presented twice {phase.reuses:,}")
    for role, seconds in phase.cpu.items():
        print(f"  CPU {role:<16}{seconds:8.1f} s  {1000 * seconds / max(1, phase.refreshes):6.2f} ms a refresh")
    print(f"  CPU in all          {sum(phase.cpu.values()):8.1f} s  {phase.cpu_ms:6.2f} ms a refresh")
    print(f"  CPU of the stub     {phase.stub_cpu:8.1f} s  (apart: the provider's, not ours)")
    worst = max(phase.backlog, key=lambda point: point[1], default=(0.0, 0, 0.0))
    over_time = ", ".join(f"{late}" for _, late, _ in phase.backlog)
    print(f"  late tokens every {SAMPLE_SECONDS} s: {over_time}")
    print(f"  most late: {worst[1]:,} at {worst[0]:.0f} s, the oldest {worst[2]:.0f} s past its latest refresh time")


# --- the ceiling ----------------------------------------------------------------------------------------------------


def schedule_step(rate: float, seconds: float) -> int:
    """Make the next `seconds` need `rate` refreshes a second: that many tokens never refreshed yet fall due evenly
    over them (each expiring MARGIN after its refresh time), and whatever the step before left unrefreshed goes
    back out of the way. The rest of the table stays days ahead: it is the size the engine works in, not demand."""
    from django.db import connection as db

    count = round(rate * seconds)
    table = "connections_oauthtoken"
    with db.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET next_refresh_at = now() + %s * interval '1 second', "  # noqa: S608 - our own table
            "expires_at = now() + %s * interval '1 second', refresh_due_at = NULL, lease_owner = '', "
            "lease_expires_at = NULL "
            "WHERE next_refresh_at < now() + interval '1 hour' OR expires_at < now() + interval '1 hour'",
            [OUT_OF_THE_WAY, OUT_OF_THE_WAY + MARGIN],
        )
        cursor.execute(
            f"UPDATE {table} t SET next_refresh_at = due.at, refresh_due_at = due.at, "  # noqa: S608 - our own table
            "expires_at = due.at + %s * interval '1 second' "
            f"FROM (SELECT id, now() + (5 + random() * %s) * interval '1 second' AS at FROM {table} "
            "WHERE generation = 1 AND next_refresh_at > now() + interval '1 day' LIMIT %s) due WHERE t.id = due.id",
            [MARGIN, seconds - 5, count],
        )
        scheduled = cursor.rowcount
        cursor.execute(f"VACUUM ANALYZE {table}")
    return scheduled


def overdue() -> int:
    """Tokens more than a beat interval past the refresh time the engine set them (the claim does not move it): a
    backlog that grows long before tokens are late by the margin's measure."""
    from django.db import connection as db

    with db.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM connections_oauthtoken WHERE refresh_due_at < now() - %s * interval '1 second'",
            [BEAT_INTERVAL],
        )
        return cursor.fetchone()[0]


def holds(phase: Phase, rate: float, overdue_at_end: int) -> bool:
    """A step holds when no token expired, none is late or overdue at its end, and the refreshes kept up with the
    demand (90 %: the sweep hands work out a beat interval at a time, so a window's count is lumpy)."""
    late_at_end = phase.backlog[-1][1] if phase.backlog else 0
    return not phase.expired and late_at_end == 0 and overdue_at_end == 0 and phase.rate >= 0.9 * rate


def find_ceiling(args, env, processes, postmaster: int, redis: int, stub_url: str) -> int:
    """Raise the demand step by step (--start-rate, + --rate-step, up to --max-rate) until tokens go late; each
    step from no backlog (a fresh worker, empty queues), measured for --step-minutes after the warm-up."""
    celery = [sys.executable, "-m", "celery", "--app", "controlroom"]
    worker = [*celery, "worker", "--pool", "prefork", "--concurrency", str(args.workers), "-Q", "refresh,celery"]
    worker_env = {**env, "REFRESH_PROVIDER_CONCURRENCY": "1000"}
    best: Phase | None = None
    steps: list[tuple[float, Phase]] = []
    rate = args.start_rate
    while rate <= args.max_rate:
        run_step("purge the queues", [*celery, "purge", "-f", "-Q", "refresh,celery"], env)
        # Warm-up: two sweeps, so the first one's catching up (it claims what is due a whole interval ahead) is
        # over; demand runs to the step's end and an interval beyond.
        warm_up = 2 * BEAT_INTERVAL
        seconds = warm_up + args.step_minutes * 60 + 2 * BEAT_INTERVAL
        scheduled = schedule_step(rate, seconds)
        print(f"Step {rate:g} refreshes/s: {scheduled:,} tokens due over {seconds:.0f} s ...", flush=True)
        processes["worker"] = start(worker, worker_env, Path(env["VAR_DIR"]).parent / "worker.log")
        pids = {"worker": processes["worker"].pid, "PostgreSQL": postmaster, "Redis": redis}
        roles = Roles(pids | {"beat": processes["beat"].pid})
        step = Phase(f"step {rate:g}/s", args.step_minutes * 60)
        phase = run_phase(step, roles, processes["stub"], stub_url, warm_up)
        behind = overdue()
        stop(processes.pop("worker"))
        steps.append((rate, phase))
        held = holds(phase, rate, behind)
        late = phase.backlog[-1][1] if phase.backlog else 0
        print(
            f"  {phase.rate:.1f} refreshes/s, {len(phase.expired)} expired, {late:,} late and {behind:,} overdue "
            "at the end, "
            f"{phase.reuses} presented twice, {phase.cpu_ms:.2f} ms CPU a refresh: "
            f"{'held' if held else 'did not hold'}",
            flush=True,
        )
        if not held:
            break
        best, rate = phase, rate + args.rate_step
    for rate, phase in steps:
        report(phase, rate)
    reuses = sum(phase.reuses for _, phase in steps)
    print(f"\nrefresh tokens presented twice, all steps: {reuses}")
    shown = best or steps[0][1]
    if best is None:
        print(f"No step held: the line below is the first step's ({args.start_rate:g} refreshes/s).")
    print(
        f"ceiling: {shown.rate:.0f} refreshes/s sustained at {args.connections:,} connections, "
        f"{len(shown.expired)} expired, {shown.cpu_ms:.2f} ms CPU per refresh"
    )
    return 0 if best is not None and not reuses else 1


# --- the run ------------------------------------------------------------------------------------------------------


def run_phases(args, env, processes, postmaster: int, redis: int, stub_url: str) -> list[Phase]:
    """The baseline phase (one token a task, one refresh at a time), then the current engine's; a worker of
    its own each, beat throughout."""
    celery = [sys.executable, "-m", "celery", "--app", "controlroom"]
    worker = [*celery, "worker", "--pool", "prefork", "--concurrency", str(args.workers), "-Q", "refresh,celery"]
    one_at_a_time = {"REFRESH_TASK_SIZE": "1", "REFRESH_CONCURRENCY": "1"}
    phases = [
        ("baseline: one token a task, one at a time", args.baseline_minutes, one_at_a_time),
        ("current engine", args.minutes, {}),
    ]
    results = []
    for name, minutes, overrides in phases:
        if minutes <= 0:
            continue
        # One provider host for every connection here: its cap would be the bench's limit, not the engine's.
        worker_env = {**env, "REFRESH_PROVIDER_CONCURRENCY": "1000", **overrides}
        print(f"Phase '{name}': {minutes:g} min after {WARM_UP_SECONDS} s of warm-up ...", flush=True)
        # The phase before may have left refresh tasks queued (a backlog): this phase starts from none.
        run_step("purge the queues", [*celery, "purge", "-f", "-Q", "refresh,celery"], env)
        spread_the_schedule(args.lifetime)
        processes["worker"] = start(worker, worker_env, Path(env["VAR_DIR"]).parent / "worker.log")
        pids = {"worker": processes["worker"].pid, "PostgreSQL": postmaster, "Redis": redis}
        roles = Roles(pids | {"beat": processes["beat"].pid})
        results.append(run_phase(Phase(name, minutes * 60), roles, processes["stub"], stub_url))
        stop(processes.pop("worker"))
    return results


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workdir = Path(tempfile.mkdtemp(prefix="controlroom-capacity-"))
    postgres_dir, processes = None, {}
    try:
        print("Starting PostgreSQL, Redis and the provider stub ...", flush=True)
        postgres_url = servers.start_postgres()
        postgres_dir = postgres_directory(postgres_url)
        database_url, redis_url = create_database(postgres_url, DATABASE_NAME), servers.start_redis()
        stub_port = servers.free_port()
        started = time.monotonic()
        lifetime = args.lifetime = CEILING_LIFETIME if args.find_ceiling else lifetime_for(args.connections, args.rate)
        stub_url = f"http://127.0.0.1:{stub_port}"
        stub_command = [sys.executable, "bench/provider_stub.py", str(stub_port), str(lifetime)]
        processes["stub"] = start(stub_command, dict(os.environ), workdir / "stub.log")
        env = app_environment(
            database_url=database_url,
            redis_url=redis_url,
            workdir=workdir,
            OUTBOUND_HTTP_ALLOWED_HOSTS="127.0.0.1",
            BEAT_INTERVAL=str(BEAT_INTERVAL),
            LOG_LEVEL="WARNING",
        )
        run_step("migrate", [sys.executable, "manage.py", "migrate", "--no-input", "-v", "0"], {**env, "DEBUG": "true"})
        os.environ.update(env)
        import django

        django.setup()
        print(f"Writing {args.connections:,} connections and tokens (lifetime {lifetime} s) ...", flush=True)
        seed(args.connections, stub_url, lifetime, args.batch, out_of_the_way=args.find_ceiling)
        print(f"  written in {(time.monotonic() - started) / 60:.1f} min from the start", flush=True)
        postmaster = int((postgres_dir / "data" / "postmaster.pid").read_text().split()[0]) if postgres_dir else 0
        beat = [sys.executable, "-m", "celery", "--app", "controlroom", "beat", "-s", str(workdir / "schedule")]
        processes["beat"] = start(beat, env, workdir / "beat.log")
        if args.find_ceiling:
            found = find_ceiling(args, env, processes, postmaster, redis_pid(redis_url), stub_url)
            print(f"(the whole run took {(time.monotonic() - started) / 60:.1f} min)")
            return found
        required = args.connections / (lifetime - MARGIN * (1 - JITTER / 2))
        results = run_phases(args, env, processes, postmaster, redis_pid(redis_url), stub_url)
        for phase in results:
            report(phase, required)
        current = results[-1]
        print(f"\none-hour connections per core: {1000 / current.cpu_ms * (3600 - MARGIN):,.0f}")
        print(
            f"capacity: {current.rate:.1f} refreshes/s sustained, {len(current.expired)} expired, "
            f"{current.cpu_ms:.2f} ms CPU per refresh"
        )
        return 0 if not current.expired and not current.reuses else 1
    finally:
        tear_down(list(processes.values()), postgres_dir, workdir)


def tear_down(processes: list[subprocess.Popen], postgres_dir: Path | None, workdir: Path) -> None:
    """Stop what a bench run started and remove what it wrote."""
    for process in processes:
        stop(process)
    if "django" in sys.modules:
        from django.db import connections

        connections.close_all()
    servers._stop_all()
    if postgres_dir is not None:
        shutil.rmtree(postgres_dir, ignore_errors=True)
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    run_main(main)
