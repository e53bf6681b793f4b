"""The API proxy's cost on this machine: the same loopback API called directly and through the proxy, in one run.

    .venv/bin/python bench/proxy.py [--seconds 15] [--concurrency 8] [--stream-bytes 1073741824]
        [--database postgresql|sqlite] [--paced-rate 200]

What it runs, all thrown away afterwards (also on Ctrl-C):
- PostgreSQL and Redis (or a SQLite file and the file cache), migrated and seeded as bench/token_endpoint.py does:
  a shared Salesforce-style connection with a token valid for 30 days, a role invited to it, a bot and its key;
- bench/api_stub.py, a keep-alive loopback API that answers 401 to any request without the seeded token, set as the
  connection's API base (OUTBOUND_HTTP_ALLOWED_HOSTS and OUTBOUND_ALLOWED_PRIVATE let the policy call loopback);
- one gunicorn as production runs it (gunicorn.conf.py: 3 processes x 4 threads), production settings (DEBUG off).

Then, with the same client (processes on keep-alive connections) and concurrency, a warm-up and the measured
run of GET /base/ping called directly (the bot holding the token) and GET .../proxy/ping through Control Room.
It prints both rates and their ratio, the proxy's CPU per call (gunicorn, PostgreSQL and Redis, read from /proc:
another job on the machine lowers the rates, not this), and the latency the proxy adds at p50 and p99. The same
client then calls /bench/bare, a Django view that does nothing, through the same gunicorn: the floor under any
view's CPU, which the proxy's figure includes. Callers that send as fast as they can measure the rate, and their
latency is mostly queueing once the machine is busy; so both URLs are also called paced (--paced-rate calls a second
between the callers, each on a fixed schedule, a late answer counting its wait): the latency the proxy adds at a load
the machine carries.

Last, with the proxy's web processes watched every 50 ms, a --stream-bytes download, upload (Content-Length) and
chunked upload go through the proxy one after the other: it prints each one's rate and the largest growth of a web
process's resident memory over its size before the streams. Exits 1 if any answer was not a 200, the API saw a
request without the token, a stream lost a byte, or a proxied call has no audit event; 2 if the set-up failed.
"""

import argparse
import http.client
import json
import multiprocessing
import os
import random
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO_ROOT, SetupError, run_main, run_step
from bench.token_endpoint import (
    UNREACHABLE_RATE_LIMIT,
    WARM_UP_SECONDS,
    Result,
    _process_table,
    cpu_snapshot,
    load_python,
    prepared_app,
    stop,
    wait_for_audit_events,
    wait_until_serving,
)
from tests.support import servers

# Issue 32's targets on 2 cores: what a proxied call may add to calling the API directly.
TARGET_ADDED_CPU_MS = 1.5
TARGET_ADDED_P99_MS = 5.0
TARGET_RSS_GROWTH_MB = 20.0
SAMPLE_SECONDS = 0.05
PIECE = 1024 * 1024


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15, help="measured duration per URL (default 15)")
    parser.add_argument("--concurrency", type=int, default=8, help="callers at once (default 8)")
    parser.add_argument("--stream-bytes", type=int, default=1 << 30, help="size of each streamed body (1 GiB)")
    parser.add_argument("--database", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument(
        "--paced-rate", type=float, default=200, help="calls a second between the callers of the paced runs (200)"
    )
    return parser.parse_args()


def start_stub(port: int, token: str) -> subprocess.Popen:
    stub = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "bench" / "api_stub.py"), str(port), token],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    if not (stub.stdout and stub.stdout.readline().startswith("listening")):
        raise SetupError("bench/api_stub.py did not start.")
    return stub


def _paced_client(port: int, path: str, authorization: str, seconds: float, interval: float) -> tuple[list[float], int]:
    """One caller sending a request every `interval` seconds on a fixed schedule (open loop: a late answer does not
    delay the next request's due time, so queueing shows in the latency rather than in a lower rate)."""
    latencies, failures = [], 0
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    started = time.monotonic()
    due = started + random.random() * interval  # the callers' schedules spread over one interval
    while due < started + seconds:
        time.sleep(max(0.0, due - time.monotonic()))
        try:
            connection.request("GET", path, headers={"Authorization": authorization})
            answer = connection.getresponse()
            answer.read()
            failures += answer.status != 200
        except (OSError, http.client.HTTPException):
            failures += 1
            connection.close()
        latencies.append(time.monotonic() - due)  # from when it was due: a caller held up counts its wait
        due += interval
    connection.close()
    return latencies, failures


def load_paced(port: int, path: str, authorization: str, seconds: float, callers: int, rate: float) -> Result:
    """`callers` processes sending `rate` requests a second between them: the latency at that load."""
    with multiprocessing.Pool(callers) as pool:
        results = pool.starmap(_paced_client, [(port, path, authorization, seconds, callers / rate)] * callers)
    latencies = sorted(latency for part, _ in results for latency in part)
    failures = sum(failed for _, failed in results)

    def percentile(fraction: float) -> float:
        return latencies[min(len(latencies) - 1, int(fraction * len(latencies)))] * 1e3 if latencies else 0.0

    return Result(len(latencies), seconds, percentile(0.50), percentile(0.99), failures or (0 if latencies else 1))


def start_web(env: dict, port: int, log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", f"--bind=127.0.0.1:{port}"]
    command += ["--log-level=warning", f"--error-logfile={log}"]
    return subprocess.Popen(command, cwd=REPO_ROOT, env=env, start_new_session=True)


def stub_stats(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=10) as answer:
        return json.load(answer)


@dataclass
class RssWatch:
    """The resident memory of each of gunicorn's workers, sampled until stopped: the largest growth of one over the
    size it had when the watch began (a worker that starts later is measured from its first sample)."""

    master: int
    first: dict[int, int] = field(default_factory=dict)
    growth_kib: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def _sample(self) -> None:
        for pid, (parent, _) in _process_table().items():
            if parent != self.master:
                continue
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            rss = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
            self.first.setdefault(pid, rss)
            self.growth_kib = max(self.growth_kib, rss - self.first[pid])

    def __enter__(self) -> "RssWatch":
        self._sample()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            self._sample()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def stream(
    port: int, method: str, path: str, authorization: str, size: int, chunked: bool = False
) -> tuple[int, float]:
    """One streamed call: (the bytes the other end got, seconds). A download is read and dropped a piece at a
    time; an upload is generated a piece at a time."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    headers = {"Authorization": authorization}
    started = time.monotonic()
    if method == "GET":
        connection.request("GET", f"{path}?bytes={size}", headers=headers)
        answer, got = connection.getresponse(), 0
        while piece := answer.read(PIECE):
            got += len(piece)
        status = answer.status
    else:
        pieces = (b"y" * min(PIECE, size - sent) for sent in range(0, size, PIECE))
        if not chunked:
            headers["Content-Length"] = str(size)
        connection.request(method, path, body=pieces, headers=headers, encode_chunked=chunked)
        answer = connection.getresponse()
        status, got = answer.status, json.loads(answer.read() or b"{}").get("received", 0)
    connection.close()
    if status != 200:
        raise SetupError(f"The streamed {method} answered {status}.")
    return got, time.monotonic() - started


def main() -> int:
    args = parse_args()
    web = stub = None
    with prepared_app(rate_limit=UNREACHABLE_RATE_LIMIT, database=args.database) as app:
        try:
            stub_port = servers.free_port()
            stub = start_stub(stub_port, app.access_token)
            api_base = f"http://127.0.0.1:{stub_port}/base"
            set_base = (
                "import django; django.setup(); from connections.models import Connection; "
                f"Connection.objects.filter(slug={app.slug!r}).update(api_base_url={api_base!r})"
            )
            run_step("setting the API base", [sys.executable, "-c", set_base], app.env)
            env = {**app.env, "OUTBOUND_HTTP_ALLOWED_HOSTS": "127.0.0.1", "OUTBOUND_ALLOWED_PRIVATE": "127.0.0.1"}
            web = start_web(env, app.port, app.workdir / "web.log")
            wait_until_serving(f"http://127.0.0.1:{app.port}/livez", web, app.workdir / "web.log")
            direct = (stub_port, "/base/ping", f"Bearer {app.access_token}")
            proxied = (app.port, f"/api/v1/connections/{app.slug}/proxy/ping", app.authorization)
            bare = (app.port, "/bench/bare", app.authorization)  # bench/urls.py: the same gunicorn, no work
            roots = {"app": web.pid, **app.pids, "api": stub.pid}

            def load(target: tuple[int, str, str], seconds: float, paced: bool = False) -> Result:
                before, started = cpu_snapshot(roots), time.monotonic()
                if paced:
                    result = load_paced(*target, seconds, args.concurrency, args.paced_rate)
                else:
                    result = load_python(*target, seconds, args.concurrency)
                after = cpu_snapshot(roots)
                result.cpu = {part: after[part] - before[part] for part in after}
                result.cpu["wall"] = time.monotonic() - started
                return result

            load_average = os.getloadavg()[0]
            print(f"Load: {args.concurrency} callers, {WARM_UP_SECONDS} s warm-up, then {args.seconds:g} s each ...")
            warm_up = [load(direct, WARM_UP_SECONDS), load(proxied, WARM_UP_SECONDS), load(bare, WARM_UP_SECONDS)]
            results = {
                "direct": load(direct, args.seconds),
                "proxied": load(proxied, args.seconds),
                "bare view": load(bare, args.seconds),
            }
            print(f"Paced: {args.concurrency} callers sending {args.paced_rate:g} calls a second between them ...")
            paced = {
                "direct": load(direct, args.seconds, paced=True),
                "proxied": load(proxied, args.seconds, paced=True),
            }
            print(f"Streaming {args.stream_bytes} bytes each way through the proxy ...", flush=True)
            with RssWatch(web.pid) as watch:
                streams = {
                    "download": stream(app.port, "GET", proxied[1], app.authorization, args.stream_bytes),
                    "upload": stream(app.port, "PUT", proxied[1], app.authorization, args.stream_bytes),
                    "chunked upload": stream(app.port, "PUT", proxied[1], app.authorization, args.stream_bytes, True),
                }
            stats = stub_stats(stub_port)
            stop(web)  # its workers write the audit events of their last calls as they exit
            calls = warm_up[1].requests + results["proxied"].requests + paced["proxied"].requests + len(streams)
            audited, _ = wait_for_audit_events(app.env["DATABASE_URL"], at_least=calls, action="proxy_request")
        finally:
            stop(web)
            stop(stub)

    results.update({f"{name}, paced": result for name, result in paced.items()})
    return report(args, results, streams, watch, stats, load_average, warm_up, calls, audited)


def report(args, results, streams, watch, stats, load_average, warm_up, calls, audited) -> int:
    direct, proxied, bare = results["direct"], results["proxied"], results["bare view"]
    cores = len(os.sched_getaffinity(0))
    print(f"\nMachine: {cores} cores usable; client, Control Room, database and API share them.")
    print(f"Database: {args.database}; gunicorn as gunicorn.conf.py sets it; load average before: {load_average:.2f}")
    print(f"{'':17}{'calls/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'calls':>10}{'not 200':>10}")
    for name, result in results.items():
        print(
            f"{name:17}{result.per_second:10.0f}{result.p50_ms:10.2f}{result.p99_ms:10.2f}"
            f"{result.requests:10d}{result.failures:10d}"
        )

    def control_room_cpu_ms(result: Result) -> dict[str, float]:
        return {
            part: result.cpu.get(part, 0.0) / max(1, result.requests) * 1e3 for part in ("app", "database", "redis")
        }

    cpu = control_room_cpu_ms(proxied)
    added_cpu, floor = sum(cpu.values()), sum(control_room_cpu_ms(bare).values())
    api_direct = direct.cpu.get("api", 0.0) / max(1, direct.requests) * 1e3
    api_proxied = proxied.cpu.get("api", 0.0) / max(1, proxied.requests) * 1e3
    print(
        f"\nCPU ms per proxied call: gunicorn {cpu['app']:.3f}, PostgreSQL {cpu['database']:.3f}, Redis "
        f"{cpu['redis']:.3f}: {added_cpu:.3f} added (target <= {TARGET_ADDED_CPU_MS}); the API's own: "
        f"{api_direct:.3f} direct, {api_proxied:.3f} proxied."
    )
    own = added_cpu - floor
    print(
        f"The floor: a bare Django view under the same gunicorn costs {floor:.3f} ms; the proxy's own work {own:.3f}."
    )
    ratio = proxied.per_second / direct.per_second if direct.per_second else 0.0
    added_p50, added_p99 = proxied.p50_ms - direct.p50_ms, proxied.p99_ms - direct.p99_ms
    print(f"Latency added at {args.concurrency} callers as fast as they can (queueing included): ", end="")
    print(f"p50 {added_p50:.2f} ms, ", end="")
    print(f"p99 {added_p99:.2f} ms (target p99 <= {TARGET_ADDED_P99_MS} ms).")
    paced_direct, paced_proxied = results["direct, paced"], results["proxied, paced"]
    paced_p50, paced_p99 = paced_proxied.p50_ms - paced_direct.p50_ms, paced_proxied.p99_ms - paced_direct.p99_ms
    print(
        f"Latency added at {args.concurrency} callers sending {args.paced_rate:g} calls/s: p50 {paced_p50:.2f} ms, ",
        end="",
    )
    print(f"p99 {paced_p99:.2f} ms.")
    for name, (got, seconds) in streams.items():
        print(f"{name:15} {got} of {args.stream_bytes} bytes in {seconds:.1f} s ({got / seconds / 1e6:.0f} MB/s)")
    growth_mb = watch.growth_kib / 1024
    print(f"Largest growth of a web process's resident memory while streaming: {growth_mb:.1f} MB ", end="")
    print(f"(target <= {TARGET_RSS_GROWTH_MB} MB).")
    print(f"The API saw {stats['without_the_token']} requests without the token; {audited} of {calls} calls audited.")
    verdict = "meets" if added_cpu <= TARGET_ADDED_CPU_MS and added_p99 <= TARGET_ADDED_P99_MS else "MISSES"
    verdict = verdict if growth_mb <= TARGET_RSS_GROWTH_MB else "MISSES"
    print(
        f"proxy: {proxied.per_second:.0f} calls/s, {ratio:.2f} of direct ({direct.per_second:.0f}); added CPU "
        f"{added_cpu:.2f} ms a call, added p50 {added_p50:.2f} ms / p99 {added_p99:.2f} ms at {args.concurrency} "
        f"callers (p99 {paced_p99:.2f} ms at {args.paced_rate:g} calls/s); bare view {floor:.2f} ms; RSS "
        f"+{growth_mb:.1f} MB streaming {args.stream_bytes >> 20} MiB ({verdict} the targets)"
    )
    failures = sum(result.failures for result in [*warm_up, *results.values()]) + stats["without_the_token"]
    failures += sum(got != args.stream_bytes for got, _ in streams.values())
    if failures or audited < calls:
        print(f"FAILED: {failures} wrong answers or lost bytes, {calls - audited} calls not audited.")
        return 1
    return 0


if __name__ == "__main__":
    run_main(main)
