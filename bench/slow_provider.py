"""A slow provider must not starve every other connection's bots: the rate of one connection's token answers, alone
and while another connection's provider takes --provider-seconds to answer a storm of forced refreshes.

    .venv/bin/python bench/slow_provider.py [--seconds 15] [--concurrency 8] [--storm 50] [--provider-seconds 10]
        [--database sqlite|postgresql]

What it runs, all thrown away afterwards (also on Ctrl-C):
- the database (the embedded default, SQLite, unless --database postgresql) and Redis, migrated and seeded as
  bench/token_endpoint.py does: the "fast" connection, holding a token valid for 30 days, a bot and its key;
- a token URL on loopback that answers every refresh after --provider-seconds, for a second connection ("slow"),
  invited to the same bot;
- gunicorn as production runs it (gunicorn.conf.py: 3 processes x 4 threads).

Then three runs of --seconds each, with the same client (--concurrency processes on keep-alive connections) asking
for the fast connection's token: alone; while --storm threads ask for the slow connection's token with
force_refresh=true, each again as soon as it is answered (after the Retry-After it was given, as a bot should),
with the web processes as this release starts them (REFRESH_WAITERS_PER_CONNECTION=2); and the same storm with the
bound lifted (REFRESH_WAITERS_PER_CONNECTION=1000), as before it existed. It prints each run's rate, p50 and p99, the
ratio of each storm run's rate to the run alone (the target: >= 0.8 with the bound), and what the storm got: answers
by status, and how many refresh requests reached the provider. Exits 1 if a fast answer was not a 200; 2 if the
set-up failed.
"""

import argparse
import http.client
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO_ROOT, run_main, run_step
from bench.token_endpoint import (
    UNREACHABLE_RATE_LIMIT,
    WARM_UP_SECONDS,
    Result,
    load_python,
    prepared_app,
    stop,
    wait_until_serving,
)

TARGET_RATIO = 0.8
UNBOUNDED = 1000  # REFRESH_WAITERS_PER_CONNECTION high enough never to be reached: no bound


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15, help="measured duration of each run (default 15)")
    parser.add_argument("--concurrency", type=int, default=8, help="callers of the fast connection (default 8)")
    parser.add_argument("--storm", type=int, default=50, help="callers forcing refreshes of the slow one (50)")
    parser.add_argument("--provider-seconds", type=float, default=10, help="how long the slow provider takes (10)")
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    return parser.parse_args()


class SlowTokenUrl:
    """A token URL that answers each refresh (rotated) after `seconds`, in a thread of this process."""

    def __init__(self, seconds: float) -> None:
        self.requests = 0
        lock, outer = threading.Lock(), self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with lock:
                    outer.requests += 1
                time.sleep(seconds)
                body = json.dumps(
                    {
                        "access_token": secrets.token_urlsafe(32),
                        "refresh_token": secrets.token_urlsafe(32),
                        "token_type": "Bearer",
                        "expires_in": 3600,
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/token"

    def close(self) -> None:
        self.server.shutdown()


# Run with the app's environment: the slow connection, invited to the seeded bot's role, with a token that a forced
# refresh replaces through the slow token URL.
SLOW_CONNECTION = """
import django; django.setup()
from django.contrib.auth.models import Group
from connections.engine.store import token_store
from connections.models import Connection, TokenType
from connections.oauth.client import TokenResponse
from providers.models import GrantType, Provider
connection = Connection.objects.create(
    name="Slow", slug="slow", provider=Provider.objects.get(slug="custom"), grant_type=GrantType.AUTHORIZATION_CODE,
    token_type=TokenType.SHARED, client_id="slow-client", client_secret="slow-secret", scopes="api",
    authorization_url="http://127.0.0.1/authorize", token_url=TOKEN_URL,
)
connection.roles.add(Group.objects.get(name="Finance bots"))
token_store(connection=connection, user=None, response=TokenResponse(
    access_token="slow-first", refresh_token="slow-refresh", id_token="", token_type="Bearer", scope="api",
    expires_in=30 * 24 * 3600, extra={},
))
"""


def storm(port: int, authorization: str, callers: int, stop_at: float) -> Counter:
    """`callers` threads forcing refreshes of the slow connection until stop_at; the statuses they got."""
    got: Counter = Counter()
    lock = threading.Lock()

    def caller() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while time.monotonic() < stop_at:
            try:
                connection.request(
                    "GET", "/api/v1/connections/slow/token?force_refresh=true", headers={"Authorization": authorization}
                )
                answer = connection.getresponse()
                answer.read()
                status, wait = answer.status, float(answer.headers.get("Retry-After") or 0)
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # The server closed a kept-alive connection idle longer than its keep-alive (gunicorn's 2 s, and
                # Retry-After was 2 s): asked again on a new one, as HTTP clients do.
                connection.close()
                continue
            except (OSError, http.client.HTTPException):
                status, wait = 0, 1.0
                connection.close()
            with lock:
                got[status] += 1
            time.sleep(min(wait, max(0.0, stop_at - time.monotonic())))
        connection.close()

    threads = [threading.Thread(target=caller, daemon=True) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return got


def main() -> int:
    args = parse_args()
    token_url = SlowTokenUrl(args.provider_seconds)
    runs: dict[str, tuple[Result, Counter, int]] = {}
    web = None
    with prepared_app(rate_limit=UNREACHABLE_RATE_LIMIT, database=args.database) as app:
        try:
            run_step(
                "the slow connection",
                [sys.executable, "-c", f"TOKEN_URL = {token_url.url!r}\n{SLOW_CONNECTION}"],
                app.env,
            )
            fast = (app.port, f"/api/v1/connections/{app.slug}/token", app.authorization)
            base_env = {
                **app.env,
                "OUTBOUND_HTTP_ALLOWED_HOSTS": "127.0.0.1",
                "OUTBOUND_ALLOWED_PRIVATE": "127.0.0.1",
                "OUTBOUND_TIMEOUT": str(args.provider_seconds * 3),  # slow, not failing
            }
            for name, waiters in (("bound (2)", 2), ("no bound", UNBOUNDED)):
                env = {**base_env, "REFRESH_WAITERS_PER_CONNECTION": str(waiters)}
                log = app.workdir / f"web-{waiters}.log"
                command = [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py"]
                command += [f"--bind=127.0.0.1:{app.port}", "--log-level=warning", f"--error-logfile={log}"]
                web = subprocess.Popen(command, cwd=REPO_ROOT, env=env, start_new_session=True)
                wait_until_serving(f"http://127.0.0.1:{app.port}/livez", web, log)
                load_python(*fast, WARM_UP_SECONDS, args.concurrency)
                if "alone" not in runs:
                    print(f"Alone: {args.concurrency} callers of the fast connection for {args.seconds:g} s ...")
                    runs["alone"] = (load_python(*fast, args.seconds, args.concurrency), Counter(), 0)
                print(
                    f"Storm, {name}: {args.storm} forced refreshes of a provider taking {args.provider_seconds:g} s ..."
                )
                before = token_url.requests
                stop_at = time.monotonic() + args.seconds + args.provider_seconds
                storm_got: Counter = Counter()
                storming = threading.Thread(
                    target=lambda got, until: got.update(storm(app.port, app.authorization, args.storm, until)),
                    args=(storm_got, stop_at),
                )
                storming.start()
                time.sleep(1)  # the storm's first requests hold their threads
                result = load_python(*fast, args.seconds, args.concurrency)
                storming.join()
                runs[f"storm, {name}"] = (result, storm_got, token_url.requests - before)
                stop(web)
                logged = log.read_text()
                for what in ("WORKER TIMEOUT", "Traceback"):
                    if logged.count(what):
                        print(
                            f"  the web server's log: {logged.count(what)} x {what}; its last lines:\n{logged[-3000:]}"
                        )
                web = None
        finally:
            stop(web)
            token_url.close()
    return report(args, runs)


def report(args: argparse.Namespace, runs: dict[str, tuple[Result, Counter, int]]) -> int:
    cores = len(os.sched_getaffinity(0))
    print(f"\nMachine: {cores} cores usable; load average now {os.getloadavg()[0]:.2f}. Database: {args.database}.")
    print(f"{'fast connection':22}{'answers/s':>10}{'ratio':>8}{'p50 ms':>10}{'p99 ms':>10}{'not 200':>9}  storm got")
    alone = runs["alone"][0]
    for name, (result, got, provider_calls) in runs.items():
        ratio = result.per_second / alone.per_second if alone.per_second else 0.0
        storm_text = ", ".join(f"{count} x {status or 'no answer'}" for status, count in sorted(got.items()))
        storm_text += f"; {provider_calls} refreshes reached the provider" if got else ""
        print(
            f"{name:22}{result.per_second:10.0f}{ratio:8.2f}{result.p50_ms:10.2f}{result.p99_ms:10.2f}"
            f"{result.failures:9d}  {storm_text}"
        )
    bounded = runs["storm, bound (2)"][0].per_second / alone.per_second if alone.per_second else 0.0
    unbounded = runs["storm, no bound"][0].per_second / alone.per_second if alone.per_second else 0.0
    verdict = "meets" if bounded >= TARGET_RATIO else "MISSES"
    print(
        f"slow provider: other connections keep {bounded:.2f} of their rate with the bound, {unbounded:.2f} without "
        f"({verdict} the target >= {TARGET_RATIO})"
    )
    return 1 if any(result.failures for result, _, _ in runs.values()) else 0


if __name__ == "__main__":
    run_main(main)
