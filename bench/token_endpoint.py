"""Throughput of GET /api/v1/connections/<slug>/token against a bare Django JSON view, on this machine.

    .venv/bin/python bench/token_endpoint.py [--database postgresql|sqlite] [--redis on|off] [--seconds 15]
        [--workers 4] [--concurrency 8] [--database-options JSON] [--rate-limit N] [--client auto|wrk|python]
        [--pairs N [--warm-up 65]]

--pairs N cycles N (key, connection) pairs instead of one, at 8 and 64 connections: bench/token_pairs.py.

What it runs, all thrown away afterwards (also on Ctrl-C):
- the database: PostgreSQL from tests/support/servers.py, as the scaled-out deployment uses, or a SQLite file,
  the embedded default; and Redis (the Django cache, where the rate-limit counters live) unless --redis off,
  when the cache is the default file cache;
- `manage.py migrate`, then bench/seed.py: a shared Salesforce-style connection holding a token valid for
  30 days (so nothing is refreshed while measuring), a role invited to it, a bot in the role and its key,
  plus 30 neighbouring connections, roles and bots;
- two gunicorns (sync workers, no access log) serving bench.settings: the production settings with DEBUG off,
  plus /bench/bare, a view answering {"ok": true} without touching the database or the cache. One answers as
  production does (repeated requests from memory), the other with TOKEN_CACHE_ENABLED=false, so that every
  request takes the full path through the database. Every URL goes through the same gunicorn, middleware and
  settings, so the ratios are the cost of the endpoint's own work. Each web process writes the audit events of
  its answers itself (connections.cache.token_cache), so that work is in the figures, and the run checks that every
  answer got its event;
- wrk on loopback (a multi-process Python client when wrk is missing): a warm-up, then the same duration and
  concurrency for each URL.

Static files are not collected: STATIC_ROOT is an empty directory, which is fine because neither view
renders a template. TOKEN_RATE_LIMIT_PER_MINUTE is set far above what the run can reach, so the limiter's
counting is paid as in production without ever answering 429; --rate-limit 0 switches it off.
PostgreSQL runs with fsync off (tests' settings), so commits are cheaper here than on a real server.

Prints requests per second, p50 and p99 for each URL, and each one's ratio to bare with its target; then the
CPU each request cost gunicorn, the database, Redis and the client, read from /proc, and what other processes
used meanwhile. On a shared machine another job lowers throughput, not this run's CPU per request, so the
ratio is printed by CPU too. --database-options tries database OPTIONS (e.g. server-side binding) without
touching the app. Exits 1 if any response was not a 200 (or a connection failed) or an answer has no audit
event, 2 if the set-up failed.
"""

import argparse
import http.client
import json
import multiprocessing
import os
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

# Run as a file, Python puts bench/ on sys.path, not the root that holds the bench and tests packages.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from bench.common import (
    REPO_ROOT,
    SetupError,
    app_environment,
    create_database,
    postgres_directory,
    run_main,
    run_step,
)
from tests.support import servers

# token / bare, by URL and database (issue 17): answers from memory nearly as cheap as an empty view, the full
# path no worse than a third of it (on PostgreSQL; no target is set for SQLite's).
TARGETS = {("token", "postgresql"): 0.85, ("token", "sqlite"): 0.8, ("token-full-path", "postgresql"): 0.3}
WARM_UP_SECONDS = 3
BARE_PATH = "/bench/bare"
# The rate limiter's counting is part of every production request; this limit is never reached.
UNREACHABLE_RATE_LIMIT = 1_000_000_000

# wrk prints its own summary, which counts 3xx as success; this script counts every status but 200 as a
# failure (an https redirect or a 429 would otherwise pass as throughput) and prints one parseable line.
WRK_SCRIPT = """
wrk.headers["Authorization"] = os.getenv("BENCH_AUTHORIZATION")
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) not_ok = 0 end
function response(status, headers, body) if status ~= 200 then not_ok = not_ok + 1 end end
function done(summary, latency, requests)
  local not_ok = 0
  for _, thread in ipairs(threads) do not_ok = not_ok + thread:get("not_ok") end
  local e = summary.errors
  io.write(string.format("BENCH %d %d %d %d %d\\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99),
    not_ok + e.connect + e.read + e.write + e.timeout))
end
"""


@dataclass
class Result:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    failures: int  # responses other than 200, plus connect/read/write errors and timeouts
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds used during the run, by process group

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument("--redis", choices=("on", "off"), default="on", help="Redis as the Django cache")
    parser.add_argument("--seconds", type=float, default=15, help="measured duration per URL (default 15)")
    parser.add_argument("--workers", type=int, default=4, help="gunicorn sync workers (default 4)")
    parser.add_argument("--concurrency", type=int, default=8, help="open connections of the client (default 8)")
    parser.add_argument(
        "--rate-limit",
        type=int,
        default=UNREACHABLE_RATE_LIMIT,
        help="TOKEN_RATE_LIMIT_PER_MINUTE (default: counted but never reached; 0: limiter off)",
    )
    parser.add_argument(
        "--database-options",
        default="",
        help='JSON merged into the database OPTIONS, e.g. \'{"server_side_binding": true, "prepare_threshold": 5}\'',
    )
    parser.add_argument("--client", choices=("auto", "wrk", "python"), default="auto", help="load generator")
    parser.add_argument("--pairs", type=int, default=0, help="cycle N (key, connection) pairs: bench/token_pairs.py")
    parser.add_argument("--warm-up", type=float, default=65, help="--pairs: seconds before measuring (default 65)")
    return parser.parse_args()


def start_gunicorn(*, env: dict, port: int, workers: int, log: Path) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "controlroom.wsgi:application",  # reads DJANGO_SETTINGS_MODULE=bench.settings from env
        f"--bind=127.0.0.1:{port}",
        f"--workers={workers}",
        "--worker-class=sync",
        "--no-control-socket",  # gunicorn 27 otherwise shares ~/.gunicorn/gunicorn.ctl with other instances
        "--graceful-timeout=3",
        "--log-level=warning",
        f"--error-logfile={log}",
        # No --access-logfile: gunicorn writes none by default, and a log line per request would be measured.
    ]
    # Its own session: Ctrl-C reaches only this script, which then stops gunicorn in order.
    return subprocess.Popen(command, cwd=REPO_ROOT, env=env, start_new_session=True)


def audit_events(database_url: str, action: str = "token_request") -> tuple[int, int]:
    """The answers of that action (token_request, or proxy_request) the audit table accounts for (its rows roll
    answers up: the sum of their counts), and its rows."""
    query = f"SELECT coalesce(sum(count), 0), count(*) FROM connections_auditevent WHERE action = '{action}'"  # noqa: S608
    if database_url.startswith("sqlite:"):
        with closing(sqlite3.connect(database_url.removeprefix("sqlite:///"), timeout=20)) as connection:
            return tuple(connection.execute(query).fetchone())
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as connection:
        return tuple(connection.execute(query).fetchone())


def wait_for_audit_events(
    database_url: str, *, at_least: int, seconds: float = 60, action: str = "token_request"
) -> tuple[int, int]:
    """audit_events(), once the answers accounted reach at_least or stop growing for 5 s."""
    deadline, last, unchanged_since = time.monotonic() + seconds, -1, time.monotonic()
    while True:
        count, rows = audit_events(database_url, action)
        if count != last:
            last, unchanged_since = count, time.monotonic()
        if count >= at_least or time.monotonic() - unchanged_since > 5 or time.monotonic() > deadline:
            return count, rows
        time.sleep(0.5)


def wait_until_serving(url: str, process: subprocess.Popen, log: Path, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            with urllib.request.urlopen(url, timeout=2):  # noqa: S310 - our own loopback URL
                return
        except OSError:  # refused, reset, or a first answer slower than the timeout while workers warm up
            time.sleep(0.2)
    tail = log.read_text(errors="replace")[-4000:] if log.exists() else ""
    raise SetupError(f"gunicorn did not serve {url} within {seconds:g} s:\n{tail}")


def check_answer(url: str, authorization: str, access_token: str) -> dict:
    """One request by hand first: a benchmark of wrong answers is worthless even if they are fast."""
    request = urllib.request.Request(url, headers={"Authorization": authorization})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            body = json.load(response)
    except urllib.error.HTTPError as exc:
        raise SetupError(f"{url} answered {exc.code}: {exc.read()[:500]!r}") from None
    if body.get("access_token") != access_token:
        raise SetupError(f"{url} did not answer with the seeded token: {sorted(body)}")
    return body


def load_wrk(url: str, authorization: str, seconds: float, concurrency: int, script: Path) -> Result:
    # One wrk thread drives a few thousand requests a second, and leaves the other core to the server.
    command = ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--timeout", "10s", "-s", str(script)]
    done = subprocess.run(
        [*command, url],
        env={**os.environ, "BENCH_AUTHORIZATION": authorization},
        capture_output=True,
        text=True,
        check=True,
    )
    line = next((line for line in done.stdout.splitlines() if line.startswith("BENCH ")), None)
    if line is None:
        raise SetupError(f"wrk printed no result:\n{done.stdout}\n{done.stderr}")
    requests, duration_us, p50_us, p99_us, failures = (int(part) for part in line.split()[1:])
    return Result(requests, duration_us / 1e6, p50_us / 1e3, p99_us / 1e3, failures)


def _python_client(port: int, path: str, authorization: str, seconds: float) -> tuple[list[float], int]:
    latencies, failures = [], 0
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    deadline = time.monotonic() + seconds
    while (started := time.monotonic()) < deadline:
        try:
            connection.request("GET", path, headers={"Authorization": authorization})
            response = connection.getresponse()
            response.read()
            failures += response.status != 200
        except (OSError, http.client.HTTPException):
            failures += 1
            connection.close()
        latencies.append(time.monotonic() - started)
    connection.close()
    return latencies, failures


def load_python(port: int, path: str, authorization: str, seconds: float, concurrency: int) -> Result:
    # Processes, not threads: in one process the GIL would make the client the bottleneck.
    with multiprocessing.Pool(concurrency) as pool:
        results = pool.starmap(_python_client, [(port, path, authorization, seconds)] * concurrency)
    latencies = sorted(latency for part, _ in results for latency in part)
    failures = sum(failed for _, failed in results)
    if not latencies:
        return Result(0, seconds, 0, 0, failures or 1)

    def percentile(fraction: float) -> float:
        return latencies[min(len(latencies) - 1, int(fraction * len(latencies)))] * 1e3

    return Result(len(latencies), seconds, percentile(0.50), percentile(0.99), failures)


# CPU accounting: where the machine's time went during a run, so the figures say which process is the
# bottleneck, and whether something else on the machine (another test run) disturbed them.
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _process_table() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds of the process plus those of the children it has reaped)."""
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # exited meanwhile
            continue
        # After the command name: state, ppid, ... utime (11), stime, cutime, cstime (14); see proc(5).
        table[int(stat.parent.name)] = (int(fields[1]), sum(int(value) for value in fields[11:15]) / CLOCK_TICKS)
    return table


def _tree_cpu(table: dict[int, tuple[int, float]], root: int) -> float:
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in table.items():
        children.setdefault(parent, []).append(pid)
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += table.get(pid, (0, 0.0))[1]
        todo.extend(children.get(pid, []))
    return total


def _machine_busy_seconds() -> float:
    with open("/proc/stat") as stat:
        ticks = [int(value) for value in stat.readline().split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / CLOCK_TICKS  # minus idle and iowait


def cpu_snapshot(roots: dict[str, int]) -> dict[str, float]:
    table = _process_table()
    snapshot = {name: _tree_cpu(table, pid) for name, pid in roots.items()}
    # The load generator is the only child this script reaps while it runs.
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    snapshot["client"] = usage.ru_utime + usage.ru_stime
    snapshot["machine"] = _machine_busy_seconds()
    return snapshot


def server_pids(database_url: str, redis_url: str) -> dict[str, int]:
    """The PostgreSQL postmaster and the Redis server that tests.support.servers started for us, if any."""
    pids = {}
    directory = postgres_directory(database_url) if database_url.startswith("postgres") else None
    if directory is not None:
        pids["database"] = int((directory / "data" / "postmaster.pid").read_text().split()[0])
    if not redis_url:
        return pids
    redis_port = redis_url.rsplit(":", 1)[1].split("/", 1)[0].encode()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            arguments = cmdline.read_bytes()
        except OSError:
            continue
        if b"redis-server" in arguments and redis_port in arguments:
            pids["redis"] = int(cmdline.parent.name)
    return pids


def stop(process: subprocess.Popen | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


@dataclass
class PreparedApp:
    env: dict  # the environment the app's processes run with
    port: int  # free for gunicorn
    slug: str
    authorization: str  # "Bearer <bot key>"
    access_token: str  # what the token endpoint must answer
    workdir: Path
    pids: dict[str, int]  # "database" (PostgreSQL's), "redis": the servers' main processes
    seed: dict = field(default_factory=dict)  # what bench/seed.py printed (with --pairs: the pairs' keys and slugs)


@contextmanager
def prepared_app(
    *, rate_limit: int, database_options: str = "", database: str = "postgresql", redis: bool = True, pairs: int = 0
) -> Iterator[PreparedApp]:
    """The database (and Redis) running, migrated and seeded; all of it gone on leaving."""
    workdir = Path(tempfile.mkdtemp(prefix="controlroom-bench-"))
    postgres_dir = None
    try:
        print(f"Starting {database}{' and Redis' if redis else ''} ...", flush=True)
        if database == "postgresql":
            server_url = servers.start_postgres()
            postgres_dir = postgres_directory(server_url)
            database_url = create_database(server_url, "controlroom_bench")
        else:
            database_url = f"sqlite:///{workdir / 'controlroom.sqlite3'}"
        redis_url = servers.start_redis() if redis else ""
        port = servers.free_port()
        env = app_environment(
            database_url=database_url,
            redis_url=redis_url,
            workdir=workdir,
            DJANGO_SETTINGS_MODULE="bench.settings",  # adds the bare view to the real app
            SECURE_SSL_REDIRECT="false",  # plain http on loopback; a redirect would be measured as a failure
            ALLOWED_HOSTS="127.0.0.1",
            PUBLIC_URL=f"http://127.0.0.1:{port}",
            TOKEN_RATE_LIMIT_PER_MINUTE=str(rate_limit),
            BENCH_DATABASE_OPTIONS=database_options,
            BENCH_PAIRS=str(pairs),
        )
        print("Migrating and seeding ...", flush=True)
        run_step("migrate", [sys.executable, "manage.py", "migrate", "--no-input", "-v", "0"], env)
        seed = json.loads(run_step("seeding", [sys.executable, "-m", "bench.seed"], env).strip().splitlines()[-1])
        pids = server_pids(database_url, redis_url)
        yield PreparedApp(env, port, seed["slug"], f"Bearer {seed['key']}", seed["access_token"], workdir, pids, seed)
    finally:
        servers._stop_all()  # the servers start_postgres()/start_redis() registered; no public stop exists
        # start_postgres() leaves its data directory behind; the socket is gone once the server stopped,
        # so the directory was found while it ran.
        if postgres_dir is not None:
            shutil.rmtree(postgres_dir, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)


CPU_PARTS = ("app", "database", "redis", "client")


def cpu_cost(result: Result) -> float:
    """CPU seconds per request of this run's own processes: unlike throughput, not lowered by other jobs."""
    return sum(result.cpu.get(part, 0.0) for part in CPU_PARTS) / max(1, result.requests)


def print_cpu(results: dict[str, Result], cores: int, load_average: float) -> None:
    """CPU milliseconds per request by process, and what the rest of the machine used meanwhile."""
    parts = list(CPU_PARTS)
    print(f"\nCPU ms per request{'':2}" + "".join(f"{part:>10}" for part in [*parts, "other"]) + "   machine busy")
    for name in results:
        cpu, requests = results[name].cpu, max(1, results[name].requests)
        other = cpu["machine"] - sum(cpu.get(part, 0.0) for part in parts)
        figures = "".join(f"{cpu.get(part, 0.0) / requests * 1e3:10.3f}" for part in parts)
        busy = cpu["machine"] / (cpu["wall"] * cores)
        print(f"{name:20}{figures}{other / requests * 1e3:10.3f}   {busy:6.0%}")
    print("  app: gunicorn master and workers (SQLite's work is theirs); other: every other process on the machine.")
    print(f"  Load average before the runs: {load_average:.2f} (well above 0: another job disturbed these figures).")


def main() -> int:
    args = parse_args()
    if args.pairs:
        from bench import token_pairs  # it builds on this module

        return token_pairs.run(args)
    client = args.client
    if client == "auto":
        client = "wrk" if shutil.which("wrk") else "python"
    elif client == "wrk" and not shutil.which("wrk"):
        raise SetupError("wrk not found: apt-get install -y wrk, or use --client python.")
    # SIGTERM (a CI timeout) must run the clean-up below as Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    webs: dict[str, subprocess.Popen] = {}
    prepared = prepared_app(
        rate_limit=args.rate_limit,
        database_options=args.database_options,
        database=args.database,
        redis=args.redis == "on",
    )
    with prepared as app:
        try:
            # "cached" answers as production does; "uncached" sends every request through the database.
            ports = {"cached": app.port, "uncached": servers.free_port()}
            print(f"Starting two gunicorns of {args.workers} sync workers, on ports {ports} ...", flush=True)
            for name, port in ports.items():
                env = {**app.env, "TOKEN_CACHE_ENABLED": "true" if name == "cached" else "false"}
                webs[name] = start_gunicorn(env=env, port=port, workers=args.workers, log=app.workdir / f"{name}.log")
            token_path, bare = f"/api/v1/connections/{app.slug}/token", BARE_PATH
            # Each URL: (the gunicorn that serves it, its path).
            urls = {
                "bare": ("cached", bare),
                "token": ("cached", token_path),
                "token-full-path": ("uncached", token_path),
            }
            for name, port in ports.items():
                wait_until_serving(f"http://127.0.0.1:{port}{bare}", webs[name], app.workdir / f"{name}.log")
                check_answer(f"http://127.0.0.1:{port}{token_path}", app.authorization, app.access_token)

            script = app.workdir / "bench.lua"
            script.write_text(WRK_SCRIPT)

            def load(name: str, seconds: float) -> Result:
                web, path = urls[name]
                roots = {"app": webs[web].pid, **app.pids}
                before, started = cpu_snapshot(roots), time.monotonic()
                if client == "wrk":
                    url = f"http://127.0.0.1:{ports[web]}{path}"
                    result = load_wrk(url, app.authorization, seconds, args.concurrency, script)
                else:
                    result = load_python(ports[web], path, app.authorization, seconds, args.concurrency)
                after = cpu_snapshot(roots)
                result.cpu = {part: after[part] - before[part] for part in after}
                result.cpu["wall"] = time.monotonic() - started
                return result

            load_average = os.getloadavg()[0]
            print(f"Load: {client}, {args.concurrency} connections, {WARM_UP_SECONDS} s warm-up, then ", end="")
            print(f"{args.seconds:g} s per URL ...", flush=True)
            # Warm-up: every worker opens its database and Redis connections and fills its caches.
            warm_up = {name: load(name, WARM_UP_SECONDS) for name in urls}
            results = {name: load(name, args.seconds) for name in urls}
            for web in webs.values():
                stop(web)  # its workers write the audit events of what they answered last as they exit
            # One answer by hand to each, then two runs of the client for each token URL, each of which may leave
            # its last requests unanswered.
            answered = len(ports) + sum(runs[name].requests for runs in (warm_up, results) for name in urls)
            answered -= warm_up["bare"].requests + results["bare"].requests
            audited, audit_rows = wait_for_audit_events(app.env["DATABASE_URL"], at_least=answered)
        finally:
            for web in webs.values():
                stop(web)

    print_results(args, results, load_average)
    print(
        f"Audit: {audited} token answers accounted for by {audit_rows} token_request rows in the audit table (rolled "
        f"up per key, connection, kind and minute) for {answered} answers counted by the client."
    )
    failures = sum(result.failures for result in [*warm_up.values(), *results.values()])
    if failures:
        print(f"FAILED: {failures} responses were not 200 (warm-up included); these figures mean nothing.")
        return 1
    if audited < answered:
        print(f"FAILED: {answered - audited} answers have no audit event.")
        return 1
    return 0


def print_results(args: argparse.Namespace, results: dict[str, Result], load_average: float) -> None:
    cores, usable = os.cpu_count(), len(os.sched_getaffinity(0))
    print(f"\nMachine: {cores} cores ({usable} usable by this process); load generator and server share them.")
    print(f"Database: {args.database}; Redis: {args.redis}; {args.workers} gunicorn sync workers.")
    print(f"{'':20}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'requests':>10}{'not 200':>10}")
    for name, result in results.items():
        print(
            f"{name:20}{result.per_second:10.0f}{result.p50_ms:10.2f}{result.p99_ms:10.2f}"
            f"{result.requests:10d}{result.failures:10d}"
        )
    print_cpu(results, usable, load_average)
    bare = results["bare"]
    for name in results:
        if name == "bare":
            continue
        ratio = results[name].per_second / bare.per_second if bare.per_second else 0.0
        by_cpu = cpu_cost(bare) / cpu_cost(results[name]) if cpu_cost(results[name]) else 0.0
        target = TARGETS.get((name, args.database))
        verdict = "no target" if target is None else f"{'meets' if ratio >= target else 'is BELOW'} the {target} target"
        print(f"{name}/bare: {ratio:.2f} ({verdict}); by CPU per request: {by_cpu:.2f}")


if __name__ == "__main__":
    run_main(main)
