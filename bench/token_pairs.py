"""The token endpoint with many bots and connections: `bench/token_endpoint.py --pairs N`.

    .venv/bin/python bench/token_endpoint.py --pairs 10000 [--database postgresql|sqlite] [--workers 4]
        [--seconds 15] [--warm-up 65] [--concurrency 8]

The set-up is bench/token_endpoint.py's (a throwaway database and Redis, two gunicorns: one answering as
production does, one with TOKEN_CACHE_ENABLED=false so that every request takes the full path), seeded with N
(key, connection) pairs (bench/seed.py: up to 100 bots in one role invited to as many connections as N needs,
each connection with its own token). wrk cycles through the N pairs in one shuffled order, each request the next
pair, so each web process sees every pair (4 workers: each about a quarter of each round).

The answers from memory are measured in their steady state: the warm-up (default 65 s) outlasts an answer's
life (token_cache.MAX_ANSWER_AGE, a minute), so the figures include the full path that re-reads each answer once a
minute in each process, and (past token_cache.MAX_ANSWERS pairs) the pairs the store cannot hold. Then each URL at
8 and at 64 concurrent connections: requests a second, p50, p99 and p99.9.

Prints last: `pairs <N>: memory <a> of bare, full path <b> of bare, p99 <ms> ms at 64` (the ratios at
--concurrency; the p99 of the production gunicorn at 64). Targets on 2 cores: with 10,000 pairs, memory >= 0.8
of bare; with 100,000 (beyond the memory's bound), memory no worse than the full path. Needs wrk. Exits 1 if a
response was not a 200 or an answer has no audit event, 2 if the set-up failed.
"""

import argparse
import json
import os
import random
import shutil
import subprocess
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import SetupError
from bench.token_endpoint import (
    BARE_PATH,
    UNREACHABLE_RATE_LIMIT,
    cpu_snapshot,
    prepared_app,
    start_gunicorn,
    stop,
    wait_for_audit_events,
    wait_until_serving,
)
from tests.support import servers

LEVELS = (8, 64)  # concurrent connections each URL is measured at
MEMORY_TARGET, PAIRS_WITHIN_MEMORY = 0.8, 10_000  # issue 38

# One wrk thread; each request takes the next pair (path and key) from the file BENCH_PAIRS_FILE names (or the one
# URL wrk was given, with BENCH_AUTHORIZATION, for bare). Every status but 200 counts as a failure.
WRK_SCRIPT = """
local paths, keys = {}, {}
local file = os.getenv("BENCH_PAIRS_FILE")
if file and file ~= "" then
  for line in io.lines(file) do
    local path, key = line:match("^(%S+) (.+)$")
    table.insert(paths, path); table.insert(keys, key)
  end
end
local next_pair = 0
function request()
  if #paths == 0 then
    return wrk.format("GET", nil, {["Authorization"] = os.getenv("BENCH_AUTHORIZATION")})
  end
  next_pair = next_pair % #paths + 1
  return wrk.format("GET", paths[next_pair], {["Authorization"] = keys[next_pair]})
end
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) not_ok = 0 end
function response(status, headers, body) if status ~= 200 then not_ok = not_ok + 1 end end
function done(summary, latency, requests)
  local not_ok = 0
  for _, thread in ipairs(threads) do not_ok = not_ok + thread:get("not_ok") end
  local e = summary.errors
  io.write(string.format("BENCH %d %d %d %d %d %d\\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9),
    not_ok + e.connect + e.read + e.write + e.timeout))
end
"""


@dataclass
class Measured:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    p999_ms: float
    failures: int
    cpu_ms: float = 0.0  # CPU of gunicorn and the database (and Redis) per request: what other jobs do not change
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def wrk(url: str, *, seconds: float, concurrency: int, script: Path, pairs_file: str, authorization: str) -> Measured:
    command = ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--timeout", "10s", "-s", str(script)]
    env = {**os.environ, "BENCH_PAIRS_FILE": pairs_file, "BENCH_AUTHORIZATION": authorization}
    done = subprocess.run([*command, url], env=env, capture_output=True, text=True, check=True)
    line = next((line for line in done.stdout.splitlines() if line.startswith("BENCH ")), None)
    if line is None:
        raise SetupError(f"wrk printed no result:\n{done.stdout}\n{done.stderr}")
    requests, duration_us, p50, p99, p999, failures = (int(part) for part in line.split()[1:])
    return Measured(requests, duration_us / 1e6, p50 / 1e3, p99 / 1e3, p999 / 1e3, failures)


def pairs_write(seed: dict, count: int, path: Path) -> list[tuple[str, str]]:
    """The first `count` (path, authorization) pairs of every key with every connection, in one shuffled order."""
    pairs = [(f"/api/v1/connections/{slug}/token", f"Bearer {key}") for slug in seed["slugs"] for key in seed["keys"]][
        :count
    ]
    random.Random(38).shuffle(pairs)
    path.write_text("".join(f"{url} {authorization}\n" for url, authorization in pairs))
    return pairs


def pair_check(port: int, pair: tuple[str, str], tokens: dict[str, str]) -> None:
    """One pair by hand on each gunicorn first: a benchmark of wrong answers is worthless even if they are fast."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{pair[0]}", headers={"Authorization": pair[1]})
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - our own loopback URL
        body = json.load(response)
    if body.get("access_token") != tokens[body.get("connection")]:
        raise SetupError(f"{pair[0]} did not answer with the seeded token")


def run(args: argparse.Namespace) -> int:
    if not shutil.which("wrk"):
        raise SetupError("--pairs needs wrk: apt-get install -y wrk.")
    webs: dict[str, subprocess.Popen] = {}
    prepared = prepared_app(
        rate_limit=UNREACHABLE_RATE_LIMIT, database=args.database, redis=args.redis == "on", pairs=args.pairs
    )
    with prepared as app:
        try:
            ports = {"cached": app.port, "uncached": servers.free_port()}
            print(f"Starting two gunicorns of {args.workers} sync workers, on ports {ports} ...", flush=True)
            for name, port in ports.items():
                env = {**app.env, "TOKEN_CACHE_ENABLED": "true" if name == "cached" else "false"}
                webs[name] = start_gunicorn(env=env, port=port, workers=args.workers, log=app.workdir / f"{name}.log")
            seed = app.seed["pairs"]
            pairs = pairs_write(seed, args.pairs, app.workdir / "pairs.txt")
            tokens = dict(zip(seed["slugs"], seed["tokens"], strict=True))
            for name, port in ports.items():
                wait_until_serving(f"http://127.0.0.1:{port}{BARE_PATH}", webs[name], app.workdir / f"{name}.log")
                pair_check(port, pairs[0], tokens)
            script = app.workdir / "pairs.lua"
            script.write_text(WRK_SCRIPT)

            def load(name: str, seconds: float, concurrency: int) -> Measured:
                web = "uncached" if name == "token-full-path" else "cached"
                url = f"http://127.0.0.1:{ports[web]}{BARE_PATH if name == 'bare' else '/'}"
                pairs_file = "" if name == "bare" else str(app.workdir / "pairs.txt")
                roots = {"app": webs[web].pid, **app.pids}
                before = cpu_snapshot(roots)
                measured = wrk(url, seconds=seconds, concurrency=concurrency, script=script, pairs_file=pairs_file,
                               authorization=app.authorization)  # fmt: skip
                after = cpu_snapshot(roots)
                spent = sum(after[part] - before[part] for part in ("app", "database", "redis") if part in after)
                measured.cpu_ms = spent / max(1, measured.requests) * 1e3
                return measured

            load_average = os.getloadavg()[0]
            print(f"Warm-up: {args.warm_up:g} s of the {args.pairs} pairs, 3 s of the others; then ", end="")
            print(f"{args.seconds:g} s per URL at {' and '.join(map(str, LEVELS))} connections ...", flush=True)
            warm_up = [load("bare", 3, 8), load("token-full-path", 3, 8), load("token", args.warm_up, 8)]
            results: dict[tuple[str, int], Measured] = {}
            # The production gunicorn first, straight after its warm-up: idle, its answers would age meanwhile.
            for name in ("token", "bare", "token-full-path"):
                for level in LEVELS:
                    results[(name, level)] = load(name, args.seconds, level)
            for web in webs.values():
                stop(web)  # its workers write the audit events of what they answered last as they exit
            answered = 2 + sum(result.requests for (name, _), result in results.items() if name != "bare")
            answered += warm_up[1].requests + warm_up[2].requests
            audited, _ = wait_for_audit_events(app.env["DATABASE_URL"], at_least=answered)
            if audited < answered:  # say why before the logs go with the run's directory
                for name in ports:
                    print(f"--- {name}.log (last lines) ---\n{(app.workdir / f'{name}.log').read_text()[-3000:]}")
        finally:
            for web in webs.values():
                stop(web)
    return report(args, results, warm_up, load_average, audited, answered)


def report(
    args: argparse.Namespace,
    results: dict[tuple[str, int], Measured],
    warm_up: list[Measured],
    load_average: float,
    audited: int,
    answered: int,
) -> int:
    print(f"\nMachine: {os.cpu_count()} cores, load average {load_average:.2f} before the runs (above 0: another job")
    print("disturbed these figures); wrk and the servers share the cores.")
    print(f"Database: {args.database}; Redis: {args.redis}; {args.workers} gunicorn sync workers; {args.pairs} pairs.")
    print(
        f"{'':16}{'conns':>6}{'req/s':>9}{'of bare':>9}{'p50 ms':>9}{'p99 ms':>9}{'p99.9 ms':>10}{'not 200':>9}"
        f"{'CPU ms':>9}{'by CPU':>8}"
    )
    for (name, level), result in results.items():
        bare = results[("bare", level)]
        of_bare = result.per_second / bare.per_second if bare.per_second else 0
        print(
            f"{name:16}{level:6d}{result.per_second:9.0f}{of_bare:9.2f}"
            f"{result.p50_ms:9.2f}{result.p99_ms:9.2f}{result.p999_ms:10.2f}{result.failures:9d}"
            f"{result.cpu_ms:9.3f}{bare.cpu_ms / result.cpu_ms if result.cpu_ms else 0:8.2f}"
        )
    print("CPU ms: gunicorn, the database and Redis per request; by CPU: bare's CPU per request over this one's")
    print("(a ratio that another job on the machine does not lower).")
    print(f"Audit: {audited} token answers accounted for, {answered} counted by the client.")
    failures = sum(result.failures for result in [*warm_up, *results.values()])
    level = args.concurrency if ("bare", args.concurrency) in results else LEVELS[0]
    bare = results[("bare", level)].per_second
    memory = results[("token", level)].per_second / bare if bare else 0.0
    full = results[("token-full-path", level)].per_second / bare if bare else 0.0
    target = f">= {MEMORY_TARGET}" if args.pairs <= PAIRS_WITHIN_MEMORY else f">= the full path's {full:.2f}"
    print(f"Target at {level} connections: memory {target} of bare.")
    if failures:
        print(f"FAILED: {failures} responses were not 200 (warm-up included); these figures mean nothing.")
    if audited < answered:
        print(f"FAILED: {answered - audited} answers have no audit event.")
    print(
        f"pairs {args.pairs}: memory {memory:.2f} of bare, full path {full:.2f} of bare, "
        f"p99 {results[('token', 64)].p99_ms:.1f} ms at 64"
    )
    return 1 if failures or audited < answered else 0
