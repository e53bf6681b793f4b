"""The scale-out scenario: the docker-compose.yml topology as plain processes, run and measured.

2 gunicorn web processes (each its own master on its own port, 1 worker x 4 threads), 3 Celery worker processes
(solo pool, each with its own --hostname), 1 Celery beat, all on the test run's real PostgreSQL and Redis, with
1,000 client-credentials connections holding real tokens of the loopback authorization server. A load thread asks
both web processes for random connections' tokens every ~100 ms while the tokens table is read every 2 s, until the
run's events have happened: every token refreshed REQUIRED_REFRESHES times (and, for the bench, at least
`min_seconds` gone by), then LOOP_SWEEPS more sweeps and every refresh task queued by then ended. Nothing is decided
by how fast that goes: one generous TIMEOUT only turns a hang into a failure. tests/deploy/test_scale_out.py checks
the correctness promises; bench/scale_out.py prints the figures (rates, spread over the workers, latencies, CPU).

Lifetimes. A token of LIFETIME seconds gets a margin of min(TOKEN_REFRESH_MARGIN, LIFETIME // 2) = MARGIN: it is due
MARGIN before it expires (a little later with REFRESH_JITTER, at most a tenth of the margin), so a token due has
most of MARGIN left to be refreshed in. The seeded tokens are made due over the first SPREAD seconds, so the engine
must refresh a thousand tokens within about SPREAD + MARGIN: with the test's 240-second tokens (MARGIN 120 s) that
is 1,000 in 150 s, under 7 a second, a fifth of what two cores did with 60-second tokens (33 a second, 0.89 of the
cores: docs/performance.md), so a busy machine is slower without a token expiring. The bench sets 60-second tokens
and a long run (SCALE_OUT_LIFETIME, SCALE_OUT_SECONDS) for the steady state's figures.

The bounds. A refresh stores next_refresh_at = expires_at - MARGIN (+ jitter). A sweep at time s claims the tokens
due before s + BEAT_INTERVAL, moving their next refresh time past the next sweeps, and a queued refresh of a token
renewed since does nothing. So two refreshes of one token are at least LIFETIME - MARGIN - BEAT_INTERVAL apart
(MIN_GAP) however slow the machine (slowness only moves refreshes later), and a window of T seconds allows at most
floor(T / MIN_GAP) + 1 refreshes per token (refresh_count_bounds in tests/support/stack.py): 1 for the test, whose
window is shorter than MIN_GAP (115 s), so each token is refreshed exactly once and the sweeps that run after the
last first refresh prove none is refreshed in a loop. A stalled worker shows as expired tokens.

The seeded tokens are real: one client-credentials request each, made before the run. Their stored expiry is moved
earlier (never later than the server's) to spread their due times: the checks judge the tokens by that stricter
expiry.
"""

import itertools
import math
import os
import random
import re
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit

import requests
from django.conf import settings
from django.contrib.auth.models import Group, User
from django.db import connection as db_connection
from django.utils import timezone

from connections.endpoint.bot_keys import bot_key_create
from connections.engine import store as tokens
from connections.models import AuditEvent, Connection, OAuthToken
from connections.oauth import client as oauth_client
from providers.models import Provider
from tests.support.authserver import AuthServer
from tests.support.stack import Stack, every, refresh_count_bounds

CONNECTIONS = 1000
LIFETIME = int(os.environ.get("SCALE_OUT_LIFETIME", "240"))  # seconds the server's access tokens live
MARGIN = LIFETIME // 2  # TOKEN_REFRESH_MARGIN (300) is capped at half the lifetime
SPREAD = min(MARGIN, 30)  # the seeded tokens fall due over this many seconds
BEAT_INTERVAL = 5
MIN_GAP = LIFETIME - MARGIN - BEAT_INTERVAL
REQUIRED_REFRESHES = 1  # per token, before the run ends
LOOP_SWEEPS = 2  # sweeps after that, each of which would refresh again a token refreshed in a loop
TIMEOUT = 600  # seconds, on top of the run's minimum: only turns a hang into a failure
GAP_TOLERANCE = 0.5  # seconds between a refresh computing its expiry and writing its audit event, and clock reads
WORKERS = ("worker-1", "worker-2", "worker-3")
WEBS = ("web-1", "web-2")
POLL = 2.0
LOAD_INTERVAL = 0.1
WHOAMI_EVERY = 10  # every 10th token served is shown to the provider's protected resource
CLIENT_ID, CLIENT_SECRET = "scale-out-client", "scale-out-secret-s3cr3t"
# A refresh task (one token) or a batch of them (refresh_tokens, what the sweep queues today).
TASK_SUCCEEDED = re.compile(r"Task connections\.tasks\.refresh_tokens?\[[0-9a-f-]+\] succeeded in ([0-9.e-]+)s")
TASK_RAISED = re.compile(r"Task connections\.tasks\.\w+\[[0-9a-f-]+\] raised")
SWEEP_SUCCEEDED = re.compile(r"Task connections\.tasks\.refresh_sweep\[[0-9a-f-]+\] succeeded in [0-9.e-]+s: (\d+)")


# --- CPU --------------------------------------------------------------------------------------------------------


class Process(NamedTuple):
    ppid: int
    own: float  # CPU seconds this process used (all its threads)
    reaped: float  # CPU seconds of its children that exited and were waited for (backends, pool children)
    argv: list[str]


def _processes() -> dict[int, Process]:
    """Every process on this machine, by pid."""
    ticks = os.sysconf("SC_CLK_TCK")
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            argv = (stat.parent / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except (OSError, IndexError):
            continue  # exited meanwhile
        # proc(5) fields 4 (ppid) and 14-17 (utime, stime, cutime, cstime), counted from field 3 (state).
        own, reaped = (int(fields[11]) + int(fields[12])) / ticks, (int(fields[13]) + int(fields[14])) / ticks
        table[int(stat.parent.name)] = Process(int(fields[1]), own, reaped, argv)
    return table


def _tree_cpu(table: dict[int, Process], root: int) -> float:
    """CPU seconds of `root` and its descendants, the exited ones included."""
    children: dict[int, list[int]] = {}
    for pid, process in table.items():
        children.setdefault(process.ppid, []).append(pid)
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        if pid in table:
            total += table[pid].own + table[pid].reaped
        todo.extend(children.get(pid, []))
    return total


def _server_pid(table: dict[int, Process], program: str, port: str) -> int | None:
    """The server process started as `program` listening on `port` (the postmaster, not its backends)."""
    for pid, process in table.items():
        argv = process.argv
        if argv[0].endswith(program) and any(arg == port or arg.endswith(f":{port}") for arg in argv[1:]):
            return pid
    return None


def machine_busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, over all cores (/proc/stat)."""
    ticks = os.sysconf("SC_CLK_TCK")
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values) - idle) / ticks, sum(values) / ticks


def cpu_by_role(roots: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds used so far by each role's processes and their children, and by this test process alone."""
    table = _processes()
    database, broker = db_connection.settings_dict, urlsplit(os.environ["REDIS_URL"])
    servers = {
        "PostgreSQL": _server_pid(table, "postgres", str(database["PORT"])),
        "Redis": _server_pid(table, "redis-server", str(broker.port)),
    }
    used = {role: sum(_tree_cpu(table, pid) for pid in pids) for role, pids in roots.items()}
    used.update({role: _tree_cpu(table, pid) for role, pid in servers.items() if pid is not None})
    used["this test (load, polls)"] = table[os.getpid()].own
    return used


# --- seeding ----------------------------------------------------------------------------------------------------


def seed_connections(server: AuthServer) -> tuple[list[Connection], list[str]]:
    """CONNECTIONS client-credentials connections sharing one client at `server`, a role invited to all of them,
    and one bot key per web process (each stays well under the per-key rate limit)."""
    server.create_client(CLIENT_ID, CLIENT_SECRET, [settings.OAUTH_REDIRECT_URI], grant_type="client-credentials")
    custom = Provider.objects.get(slug="custom")
    Connection.objects.bulk_create(
        [
            Connection(
                name=f"Scale {number:04d}",
                slug=f"scale-{number:04d}",
                provider=custom,
                grant_type="client_credentials",
                client_id=CLIENT_ID,
                client_secret=CLIENT_SECRET,
                token_url=server.token_url,
                scopes="read,write",
            )
            for number in range(CONNECTIONS)
        ],
        batch_size=500,
    )
    connections = list(Connection.objects.filter(slug__startswith="scale-").select_related("provider"))
    role = Group.objects.create(name="Scale-out bots")
    Connection.roles.through.objects.bulk_create(
        [Connection.roles.through(connection_id=connection.pk, group_id=role.pk) for connection in connections]
    )
    user = User.objects.create_user("scale-out-bot")
    user.groups.add(role)
    keys = [bot_key_create(user=user, name=f"load via {web}")[1] for web in WEBS]
    return connections, keys


def seed_tokens(connections: list[Connection]) -> None:
    """A real token from the server for every connection (8 requests at a time), stored as a refresh stores it."""
    configs = [tokens.connection_client_config(connection) for connection in connections]
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(oauth_client.client_credentials, configs))
    for connection, response in zip(connections, responses, strict=True):
        tokens.token_store(connection=connection, user=None, response=response)


def spread_due_times(connections: list[Connection]) -> dict[int, datetime]:
    """Due times spread over SPREAD seconds, starting one beat interval from now, never later than each token's
    own (its stored expiry only moves earlier). Returns each connection's stored expiry."""
    rng = random.Random(20261128)  # noqa: S311 - a spread, not a secret
    base = timezone.now() + timedelta(seconds=BEAT_INTERVAL)
    tokens = list(OAuthToken.objects.filter(connection__in=connections).only("id", "expires_at", "next_refresh_at"))
    for token in tokens:
        token.next_refresh_at = min(token.next_refresh_at, base + timedelta(seconds=rng.uniform(0, SPREAD)))
        token.expires_at = token.next_refresh_at + timedelta(seconds=MARGIN)
    OAuthToken.objects.bulk_update(tokens, ["expires_at", "next_refresh_at"], batch_size=250)
    return dict(OAuthToken.objects.filter(connection__in=connections).values_list("connection_id", "expires_at"))


# --- the load thread ------------------------------------------------------------------------------------------


@dataclass
class Call:
    at: float  # time.monotonic() when the answer came
    web: str
    status: int
    expires_in: int | None
    seconds: float
    provider_accepted: bool | None = None  # None: not shown to the provider


@dataclass
class Load:
    """Asks for a random connection's token every LOAD_INTERVAL, through the web processes in turn."""

    ports: dict[str, int]
    keys: dict[str, str]
    slugs: list[str]
    server: AuthServer
    calls: list[Call] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        rng = random.Random(7)  # noqa: S311 - which connection to ask for, not a secret
        sessions = {web: requests.Session() for web in self.ports}
        numbers = itertools.count(1)

        def ask_next() -> None:
            number = next(numbers)
            web = WEBS[number % len(WEBS)]
            self.calls.append(self.ask(sessions[web], web, rng.choice(self.slugs), number % WHOAMI_EVERY == 0))

        every(LOAD_INTERVAL, math.inf, ask_next, stop=self.stop)
        for session in sessions.values():
            session.close()

    def ask(self, session: requests.Session, web: str, slug: str, show_to_provider: bool) -> Call:
        started = time.monotonic()
        url = f"http://127.0.0.1:{self.ports[web]}/api/v1/connections/{slug}/token"
        headers = {"Authorization": f"Bearer {self.keys[web]}"}
        try:
            response = session.get(url, params={"min_validity": "0"}, headers=headers, timeout=15)
        except requests.RequestException:
            return Call(time.monotonic(), web, 0, None, time.monotonic() - started)
        call = Call(time.monotonic(), web, response.status_code, None, response.elapsed.total_seconds())
        if response.status_code == 200:
            body = response.json()
            call.expires_in = body["expires_in"]
            if show_to_provider:
                try:
                    call.provider_accepted = self.server.whoami(body["access_token"]).status_code == 200
                except requests.RequestException:
                    call.provider_accepted = False
        return call


# --- figures --------------------------------------------------------------------------------------------------


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))] if ordered else float("nan")


def refresh_times(since: datetime, until: datetime | None = None) -> dict[int, list[datetime]]:
    events = AuditEvent.objects.filter(action="token_refresh", outcome="success", created_at__gte=since)
    if until is not None:
        events = events.filter(created_at__lte=until)
    times: dict[int, list[datetime]] = {}
    for connection_id, created_at in events.order_by("created_at").values_list("connection_id", "created_at"):
        times.setdefault(connection_id, []).append(created_at)
    return times


# --- the run --------------------------------------------------------------------------------------------------


def refreshes_allowed(seconds: float) -> tuple[int, int]:
    """(fewest, most) refreshes of one token that a correct engine makes in a window of `seconds` of this run (the
    bounds in this module's docstring). Too many is a refresh loop; too few, on a busy machine, is only slowness."""
    return refresh_count_bounds(
        seconds, cycle=LIFETIME - MARGIN, beat_interval=BEAT_INTERVAL, first_due_within=SPREAD + BEAT_INTERVAL
    )


@dataclass
class Run:
    """What one run saw as it happened; Outcome derives the rest from it afterwards."""

    stack: Stack
    server: AuthServer
    connections: list[Connection]
    seeded_expiry: dict[int, datetime]
    seeded_generation: dict[int, int]
    set_up_seconds: float
    started_at: datetime
    ended_at: datetime | None = None
    calls: list[Call] = field(default_factory=list)
    polls: int = 0
    least_left: float = float("inf")  # over every poll and every token: seconds until expiry (negative: expired)
    expired: set[int] = field(default_factory=set)
    not_yet_refreshed: int = CONNECTIONS  # tokens refreshed fewer than REQUIRED_REFRESHES times, at the last poll
    generations_gained: int = 0  # new tokens stored over the run, all tokens together (read after the stop)
    stats_before: dict[str, int] = field(default_factory=dict)
    stats_after: dict[str, int] = field(default_factory=dict)
    cpu_used: dict[str, float] = field(default_factory=dict)
    machine_cores: float = 0.0


def set_up(make_stack: Callable[..., Stack], server: AuthServer) -> tuple[Run, dict[str, int], list[str]]:
    """The processes of the compose file, configured as in production (DEBUG off, https not enforced because
    nothing terminates TLS in front of them), and 1,000 connections each with a real 60-second token."""
    stack: Stack = make_stack(BEAT_INTERVAL=BEAT_INTERVAL, OUTBOUND_TIMEOUT=5)
    stack.env.update(
        DEBUG="false",
        SECURE_SSL_REDIRECT="false",
        OUTBOUND_HTTP_ALLOWED_HOSTS="127.0.0.1",  # the loopback authorization server speaks plain http
        STATIC_ROOT=str(stack.tmp / "static"),
    )
    started = time.monotonic()
    ports = {web: stack.web(web, workers=1, threads=4) for web in WEBS}
    for worker in WORKERS:
        stack.worker(worker)
    connections, keys = seed_connections(server)
    seed_tokens(connections)
    seeded_expiry = spread_due_times(connections)
    seeded_generation = dict(OAuthToken.objects.values_list("connection_id", "generation"))
    run = Run(stack, server, connections, seeded_expiry, seeded_generation, time.monotonic() - started, timezone.now())
    return run, ports, keys


def _watch_tokens(run: Run, min_seconds: float, load_thread: threading.Thread) -> None:
    """Read every token each POLL seconds, noting the least time left and the expired, until the run's events:
    every token refreshed REQUIRED_REFRESHES times and `min_seconds` gone by, then LOOP_SWEEPS more sweeps and
    every refresh task queued by then ended. Fails after TIMEOUT more seconds (a hang), saying what was awaited."""
    began, ended = time.monotonic(), threading.Event()
    sweeps_at_last_refresh: list[int] = []  # the sweeps run when the last token got its required refreshes

    def poll() -> None:
        run.stack.check_alive("the scale-out run ran")
        assert load_thread.is_alive(), "the load thread died"
        rows = list(OAuthToken.objects.values_list("connection_id", "expires_at", "generation"))  # one query
        now = timezone.now()
        assert len(rows) == CONNECTIONS
        run.polls += 1
        for connection_id, expires_at, _ in rows:
            left = (expires_at - now).total_seconds()
            run.least_left = min(run.least_left, left)
            if left <= 0:
                run.expired.add(connection_id)
        run.not_yet_refreshed = sum(
            generation - run.seeded_generation[connection_id] < REQUIRED_REFRESHES
            for connection_id, _, generation in rows
        )
        if not sweeps_at_last_refresh:
            if run.not_yet_refreshed == 0 and time.monotonic() - began >= min_seconds:
                sweeps_at_last_refresh.append(run.stack.sweeps_run())
        elif run.stack.sweeps_run() >= sweeps_at_last_refresh[0] + LOOP_SWEEPS and run.stack.refreshes_idle():
            ended.set()

    every(POLL, min_seconds + TIMEOUT, poll, stop=ended)
    if not ended.is_set():
        awaited = (
            f"{LOOP_SWEEPS} sweeps after the last required refresh"
            if sweeps_at_last_refresh
            else f"{run.not_yet_refreshed} tokens to be refreshed {REQUIRED_REFRESHES} time(s)"
        )
        raise AssertionError(f"Waited {min_seconds + TIMEOUT:g} s for {awaited}.\n{run.stack.logs()}")


def run(make_stack: Callable[..., Stack], server: AuthServer, min_seconds: float = 0) -> Run:
    """Set up, start beat, load the token endpoint and watch the tokens until the run's events (_watch_tokens),
    then stop everything."""
    scenario, ports, keys = set_up(make_stack, server)
    stack = scenario.stack
    scenario.stats_before = server.stats()["token_requests"]
    scenario.started_at = timezone.now()
    stack.beat()
    roots = {
        "web (2 gunicorn)": [stack.processes.started[web][0].pid for web in WEBS],
        "workers (3 Celery)": [stack.processes.started[worker][0].pid for worker in WORKERS],
        "beat": [stack.processes.started["beat"][0].pid],
        "authorization server": [server.pid],
    }
    cpu_before, machine_before = cpu_by_role(roots), machine_busy_seconds()
    load = Load(ports, dict(zip(WEBS, keys, strict=True)), [c.slug for c in scenario.connections], server)
    load_thread = threading.Thread(target=load.run, name="token endpoint load", daemon=True)
    load_thread.start()
    try:
        _watch_tokens(scenario, min_seconds, load_thread)
    finally:
        load.stop.set()
        load_thread.join(timeout=30)
    scenario.ended_at, scenario.calls = timezone.now(), load.calls
    cpu_after, machine_after = cpu_by_role(roots), machine_busy_seconds()
    stack.processes.stop_all()  # warm shutdown: tasks in progress finish and are counted
    scenario.stats_after = server.stats()["token_requests"]
    scenario.generations_gained = sum(
        generation - scenario.seeded_generation[connection_id]
        for connection_id, generation in OAuthToken.objects.values_list("connection_id", "generation")
    )
    scenario.cpu_used = {role: cpu_after[role] - cpu_before.get(role, 0.0) for role in cpu_after}
    busy, total = machine_after[0] - machine_before[0], machine_after[1] - machine_before[1]
    scenario.machine_cores = busy / total * os.cpu_count()
    return scenario


# --- what the run shows -----------------------------------------------------------------------------------------


@dataclass
class Outcome:
    window_seconds: float
    refresh_counts: list[int]  # per connection, inside the window
    total_refreshes: int  # all, also those the warm shutdown finished
    gaps: list[float]  # seconds between two refreshes of one token
    lateness: list[float]  # seconds after its due time a refresh ran
    late_first: list[str]  # connections whose first refresh came after the seeded expiry
    failures: int
    refresh_actors: set[str]
    worker_tasks: dict[str, int]
    task_ms: list[float]
    raised: int
    swept: list[int]
    provider_calls: int
    other_grants: dict[str, int]
    answered: list[Call]
    bad: list[Call]
    no_time_left: list[Call]
    shown: list[Call]  # answers whose token was shown to the provider
    refused: list[Call]  # ... and that it refused
    sample_accepted: int
    sample_size: int


def _lateness(run: Run, window: dict[int, list[datetime]]) -> list[float]:
    """How long after its due time (previous refresh + margin, or the seeded due time) each refresh ran."""
    lateness = []
    for connection in run.connections:
        due = run.seeded_expiry[connection.pk] - timedelta(seconds=MARGIN)
        for refreshed in window.get(connection.pk, []):
            lateness.append((refreshed - due).total_seconds())
            due = refreshed + timedelta(seconds=MARGIN)
    return lateness


def _sample_accepted(run: Run, size: int = 50) -> int:
    """How many of a sample of the stored tokens the provider takes: real, unexpired tokens from the server."""
    sample = random.Random(3).sample(run.connections, size)  # noqa: S311 - a sample, not a secret
    tokens = (OAuthToken.objects.get(connection=connection).access_token for connection in sample)
    return sum(run.server.whoami(token).status_code == 200 for token in tokens)


def outcome_of(run: Run) -> Outcome:
    window = refresh_times(run.started_at, run.ended_at)
    logs = {worker: run.stack.log(worker) for worker in WORKERS}
    refreshes = AuditEvent.objects.filter(action="token_refresh", created_at__gte=run.started_at)
    answered = [call for call in run.calls if call.status == 200]
    shown = [call for call in answered if call.provider_accepted is not None]
    return Outcome(
        window_seconds=(run.ended_at - run.started_at).total_seconds(),
        refresh_counts=[len(window.get(connection.pk, [])) for connection in run.connections],
        total_refreshes=sum(len(times) for times in refresh_times(run.started_at).values()),
        gaps=[(b - a).total_seconds() for times in window.values() for a, b in itertools.pairwise(times)],
        lateness=_lateness(run, window),
        late_first=[
            connection.slug
            for connection in run.connections
            if window.get(connection.pk) and window[connection.pk][0] >= run.seeded_expiry[connection.pk]
        ],
        failures=refreshes.exclude(outcome="success").count(),
        refresh_actors=set(refreshes.values_list("actor_label", flat=True)),
        worker_tasks={worker: len(TASK_SUCCEEDED.findall(log)) for worker, log in logs.items()},
        task_ms=[float(s) * 1e3 for log in logs.values() for s in TASK_SUCCEEDED.findall(log)],
        raised=sum(len(TASK_RAISED.findall(log)) for log in logs.values()),
        swept=[int(n) for log in logs.values() for n in SWEEP_SUCCEEDED.findall(log)],
        provider_calls=run.stats_after["client_credentials"] - run.stats_before["client_credentials"],
        other_grants={
            grant: run.stats_after[grant] - run.stats_before[grant]
            for grant in run.stats_after
            if grant != "client_credentials"
        },
        answered=answered,
        bad=[call for call in run.calls if call.status != 200],
        no_time_left=[call for call in answered if not call.expires_in or call.expires_in <= 0],
        shown=shown,
        refused=[call for call in shown if not call.provider_accepted],
        sample_accepted=_sample_accepted(run),
        sample_size=50,
    )


def _refresh_figures(run: Run, result: Outcome) -> list[str]:
    counts, seconds = result.refresh_counts, result.window_seconds
    fewest, most = refreshes_allowed(seconds)
    total_tasks = sum(result.worker_tasks.values())
    shares = ", ".join(
        f"{worker} {count} ({count / max(1, total_tasks):.0%})" for worker, count in result.worker_tasks.items()
    )
    return [
        f"Topology: {len(WEBS)} gunicorn web processes (1 worker x 4 threads each), {len(WORKERS)} Celery workers "
        f"(solo pool), 1 beat (every {BEAT_INTERVAL} s); PostgreSQL and Redis; {os.cpu_count()} CPU cores.",
        f"Load: {CONNECTIONS} client-credentials connections, {LIFETIME} s tokens (refresh margin {MARGIN} s, first "
        f"due over {SPREAD} s); "
        f"run {seconds:.0f} s; set-up {run.set_up_seconds:.0f} s.",
        f"Refreshes: {result.total_refreshes} in total ({result.total_refreshes / seconds:.1f}/s), {sum(counts)} "
        f"inside the window; provider token calls {result.provider_calls} (other grants: {result.other_grants}); "
        f"failures {result.failures}.",
        f"Refreshes per token in the window: min {min(counts)}, median {statistics.median(counts):g}, max "
        f"{max(counts)} (a correct engine on an idle machine: {fewest}..{most}); histogram "
        f"{ {n: counts.count(n) for n in sorted(set(counts))} }.",
        f"Refresh tasks per worker: {shares}; {total_tasks} tasks for {result.total_refreshes} refreshes; task time "
        f"p50 {percentile(result.task_ms, 0.5):.0f} ms, p99 {percentile(result.task_ms, 0.99):.0f} ms.",
        f"Sweeps: {len(result.swept)}, tokens queued per sweep: mean "
        f"{statistics.fmean(result.swept) if result.swept else 0:.0f}, max {max(result.swept, default=0)}.",
        f"Gap between two refreshes of one token: min {min(result.gaps, default=float('nan')):.1f} s (bound "
        f"{MIN_GAP} s), max {max(result.gaps, default=float('nan')):.1f} s (lifetime {LIFETIME} s); lateness after "
        f"the due time: p50 {percentile(result.lateness, 0.5):.1f} s, max {max(result.lateness, default=0):.1f} s.",
        f"Token table polls: {run.polls} (all {CONNECTIONS} rows each); least time left on any token "
        f"{run.least_left:.1f} s; expired seen: {len(run.expired)}; new tokens stored {run.generations_gained}.",
    ]


def _endpoint_figures(run: Run, result: Outcome) -> list[str]:
    answer_times = [call.at for call in result.answered]
    longest_silence = max((b - a for a, b in itertools.pairwise(answer_times)), default=float("inf"))
    latencies_ms = [call.seconds * 1e3 for call in run.calls]
    per_web = {web: sum(call.web == web for call in result.answered) for web in WEBS}
    seconds = result.window_seconds
    return [
        f"Token endpoint: {len(run.calls)} calls ({', '.join(f'{web} {n}' for web, n in per_web.items())}), "
        f"non-200: {len(result.bad)}, min expires_in {min((c.expires_in or 0 for c in result.answered), default=0)} "
        f"s; latency p50 {percentile(latencies_ms, 0.5):.0f} ms, p99 {percentile(latencies_ms, 0.99):.0f} ms, max "
        f"{max(latencies_ms, default=0):.0f} ms; longest time without an answer {longest_silence:.2f} s; served "
        f"tokens accepted by the provider {len(result.shown) - len(result.refused)}/{len(result.shown)}; stored "
        f"tokens accepted {result.sample_accepted}/{result.sample_size}.",
        f"CPU, in cores busy on average over the run: machine {run.machine_cores:.2f} of {os.cpu_count()} (other "
        "work on this machine included); "
        + ", ".join(f"{role} {used / seconds:.2f}" for role, used in run.cpu_used.items())
        + f"; load average at the end {os.getloadavg()[0]:.2f}.",
    ]


def figures(run: Run, result: Outcome) -> str:
    lines = ["", "=== Scale-out run: figures ===", *_refresh_figures(run, result), *_endpoint_figures(run, result), ""]
    return "\n".join(lines)
