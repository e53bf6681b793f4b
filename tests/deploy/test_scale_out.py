"""The scaled-out deployment without containers: the docker-compose.yml topology as plain processes.

2 gunicorn web processes (each its own master on its own port, 1 worker x 4 threads), 3 Celery worker processes
(solo pool, each with its own --hostname), 1 Celery beat, all on the test run's real PostgreSQL and Redis, with
1,000 client-credentials connections whose tokens live 60 seconds at the loopback authorization server. For
SCALE_OUT_SECONDS (default 180) a load thread asks both web processes for random connections' tokens every
~100 ms while the tokens table is read every 2 s; then the figures are printed and checked:

- every token refreshed before it expired (no poll ever saw an expired token; no answer without time left);
- no token refreshed twice in one cycle (bounds below), and the provider called exactly once per refresh;
- the refresh work spread over all three workers (each at least 10% of it);
- the token endpoint answered 200 throughout, through both web processes.

The bounds. A 60-second token gets a margin of min(TOKEN_REFRESH_MARGIN, 60 // 2) = 30 s: the refresh stores
next_refresh_at = expires_at - 30 s. A sweep at time s claims the tokens due before s + BEAT_INTERVAL (5 s), moving
their next refresh time past the next sweeps, and a queued refresh of a token renewed since does nothing. So two
refreshes of one token are at least 30 - 5 = 25 s apart (MIN_GAP).
Over a window of T seconds that allows at most floor(T / 25) + 1 refreshes per token (8 for 180 s). The other way,
the seeded tokens are all due within the first 30 + 5 s, and a refresh that runs at most one beat interval after it
is due comes at most 30 + 5 = 35 s after the previous one: the first by 40 s, then one per 35 s at the latest, so at
least 1 + floor((T - 40) / 35) refreshes happen (5 for 180 s). A refresh loop would show up as dozens per token, a
stalled worker as expired tokens.

The seeded tokens are real: one client-credentials request each, made before the run. To spread the load as a
running deployment has it (tokens obtained at all sorts of times), their stored expiry is moved earlier, by up to
30 s, never later than the server's: the checks below judge the tokens by that stricter expiry.
"""

import itertools
import math
import os
import random
import re
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit

import pytest
import requests
from django.conf import settings
from django.contrib.auth.models import Group, User
from django.db import connection as db_connection
from django.utils import timezone

from connections import oauth_client, services
from connections.bot_keys import bot_key_create
from connections.models import AuditEvent, Connection, OAuthToken
from providers.models import Provider
from tests.refresh.stack import Stack
from tests.support.authserver import AuthServer

pytestmark = pytest.mark.django_db(transaction=True)

SECONDS = int(os.environ.get("SCALE_OUT_SECONDS", "180"))
CONNECTIONS = 1000
LIFETIME = 60
MARGIN = LIFETIME // 2  # TOKEN_REFRESH_MARGIN (300) is capped at half the lifetime
BEAT_INTERVAL = 5
MIN_GAP = MARGIN - BEAT_INTERVAL
MAX_REFRESHES = math.floor(SECONDS / MIN_GAP) + 1
MIN_REFRESHES = max(0, 1 + math.floor((SECONDS - (MARGIN + 2 * BEAT_INTERVAL)) / (MARGIN + BEAT_INTERVAL)))
GAP_TOLERANCE = 0.5  # seconds between a refresh computing its expiry and writing its audit event, and clock reads
WORKERS = ("worker-1", "worker-2", "worker-3")
WEBS = ("web-1", "web-2")
POLL = 2.0
LOAD_INTERVAL = 0.1
WHOAMI_EVERY = 10  # every 10th token served is shown to the provider's protected resource
MIN_WORKER_SHARE = 0.10
CLIENT_ID, CLIENT_SECRET = "scale-out-client", "scale-out-secret-s3cr3t"
TASK_SUCCEEDED = re.compile(r"Task connections\.tasks\.refresh_token\[[0-9a-f-]+\] succeeded in ([0-9.e-]+)s")
TASK_RAISED = re.compile(r"Task connections\.tasks\.\w+\[[0-9a-f-]+\] raised")
SWEEP_SUCCEEDED = re.compile(r"Task connections\.tasks\.refresh_sweep\[[0-9a-f-]+\] succeeded in [0-9.e-]+s: (\d+)")


@pytest.fixture
def sixty_second_server(tmp_path):
    (tmp_path / "authserver").mkdir()
    server = AuthServer(access_token_lifetime=LIFETIME, log_dir=str(tmp_path / "authserver")).start()
    try:
        yield server
    finally:
        server.stop()


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
    configs = [services.connection_client_config(connection) for connection in connections]
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(oauth_client.client_credentials, configs))
    for connection, response in zip(connections, responses, strict=True):
        services.token_store(connection=connection, user=None, response=response)


def spread_due_times(connections: list[Connection]) -> dict[int, datetime]:
    """Due times spread over one margin, starting one beat interval from now, never later than each token's own
    (its stored expiry only moves earlier). Returns each connection's stored expiry."""
    rng = random.Random(20261128)  # noqa: S311 - a spread, not a secret
    base = timezone.now() + timedelta(seconds=BEAT_INTERVAL)
    tokens = list(OAuthToken.objects.filter(connection__in=connections).only("id", "expires_at", "next_refresh_at"))
    for token in tokens:
        token.next_refresh_at = min(token.next_refresh_at, base + timedelta(seconds=rng.uniform(0, MARGIN)))
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
        number = 0
        while not self.stop.is_set():
            tick = time.monotonic()
            web = WEBS[number % len(WEBS)]
            number += 1
            slug = rng.choice(self.slugs)
            url = f"http://127.0.0.1:{self.ports[web]}/api/v1/connections/{slug}/token"
            try:
                response = sessions[web].get(
                    url, params={"min_validity": "0"}, headers={"Authorization": f"Bearer {self.keys[web]}"}, timeout=15
                )
            except requests.RequestException:
                self.calls.append(Call(time.monotonic(), web, 0, None, time.monotonic() - tick))
                continue
            call = Call(time.monotonic(), web, response.status_code, None, response.elapsed.total_seconds())
            if response.status_code == 200:
                body = response.json()
                call.expires_in = body["expires_in"]
                if number % WHOAMI_EVERY == 0:
                    try:
                        call.provider_accepted = self.server.whoami(body["access_token"]).status_code == 200
                    except requests.RequestException:
                        call.provider_accepted = False
            self.calls.append(call)
            time.sleep(max(0.0, LOAD_INTERVAL - (time.monotonic() - tick)))
        for session in sessions.values():
            session.close()


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


def test_two_web_three_workers_one_beat_keep_a_thousand_sixty_second_tokens_fresh(
    make_stack, sixty_second_server, capsys
):
    server = sixty_second_server
    # given the processes of the compose file, configured as in production (DEBUG off, https not enforced here
    # because nothing terminates TLS in front of them)
    stack: Stack = make_stack(redis_db=8, BEAT_INTERVAL=BEAT_INTERVAL, OUTBOUND_TIMEOUT=5)
    stack.env.update(
        DEBUG="false",
        SECURE_SSL_REDIRECT="false",
        OUTBOUND_HTTP_ALLOWED_HOSTS="127.0.0.1",  # the loopback authorization server speaks plain http
        STATIC_ROOT=str(stack.tmp / "static"),
    )
    set_up_started = time.monotonic()
    ports = {web: stack.web(web, workers=1, threads=4) for web in WEBS}
    for worker in WORKERS:
        stack.worker(worker)
    # and 1,000 connections, each with a real 60-second token
    connections, keys = seed_connections(server)
    seed_tokens(connections)
    seeded_expiry = spread_due_times(connections)
    set_up_seconds = time.monotonic() - set_up_started
    stats_before = server.stats()["token_requests"]
    started_at = timezone.now()

    # when beat runs for SECONDS while bots ask for tokens through both web processes
    stack.beat()
    roots = {
        "web (2 gunicorn)": [stack.processes.started[web][0].pid for web in WEBS],
        "workers (3 Celery)": [stack.processes.started[worker][0].pid for worker in WORKERS],
        "beat": [stack.processes.started["beat"][0].pid],
        "authorization server": [server._proc.pid],
    }
    cpu_before, machine_before = cpu_by_role(roots), machine_busy_seconds()
    load = Load(ports, dict(zip(WEBS, keys, strict=True)), [c.slug for c in connections], server)
    load_thread = threading.Thread(target=load.run, name="token endpoint load", daemon=True)
    load_thread.start()
    least_left = float("inf")  # over every poll and every token: seconds until expiry (negative: expired)
    expired: set[int] = set()
    polls = 0
    deadline = time.monotonic() + SECONDS
    try:
        while time.monotonic() < deadline:
            tick = time.monotonic()
            stack.check_alive("the scale-out run ran")
            assert load_thread.is_alive(), "the load thread died"
            rows = list(OAuthToken.objects.values_list("connection_id", "expires_at"))  # one query, every token
            now = timezone.now()
            assert len(rows) == CONNECTIONS
            polls += 1
            for connection_id, expires_at in rows:
                left = (expires_at - now).total_seconds()
                least_left = min(least_left, left)
                if left <= 0:
                    expired.add(connection_id)
            time.sleep(max(0.0, POLL - (time.monotonic() - tick)))
    finally:
        load.stop.set()
        load_thread.join(timeout=30)
    ended_at = timezone.now()
    cpu_after, machine_after = cpu_by_role(roots), machine_busy_seconds()
    stack.processes.stop_all()  # warm shutdown: tasks in progress finish and are counted below
    stats_after = server.stats()["token_requests"]

    # then the figures
    window = refresh_times(started_at, ended_at)
    every_refresh = refresh_times(started_at)
    refresh_counts = [len(window.get(connection.pk, [])) for connection in connections]
    gaps = [
        (later - earlier).total_seconds() for times in window.values() for earlier, later in itertools.pairwise(times)
    ]
    # A refresh's lateness: how long after its due time (previous refresh + margin, or the seeded due time) it ran.
    lateness = []
    for connection in connections:
        times = window.get(connection.pk, [])
        due = seeded_expiry[connection.pk] - timedelta(seconds=MARGIN)
        for refreshed in times:
            lateness.append((refreshed - due).total_seconds())
            due = refreshed + timedelta(seconds=MARGIN)
    # Before its expiry: the first refresh before the seeded expiry, each next one within a lifetime of the last.
    late_first = [
        connection.slug
        for connection in connections
        if window.get(connection.pk) and window[connection.pk][0] >= seeded_expiry[connection.pk]
    ]
    failures = AuditEvent.objects.filter(action="token_refresh", created_at__gte=started_at).exclude(outcome="success")
    refresh_actors = set(
        AuditEvent.objects.filter(action="token_refresh", created_at__gte=started_at).values_list(
            "actor_label", flat=True
        )
    )
    worker_tasks = {worker: len(TASK_SUCCEEDED.findall(stack.log(worker))) for worker in WORKERS}
    task_ms = [float(s) * 1e3 for worker in WORKERS for s in TASK_SUCCEEDED.findall(stack.log(worker))]
    raised = {worker: len(TASK_RAISED.findall(stack.log(worker))) for worker in WORKERS}
    swept = [int(n) for worker in WORKERS for n in SWEEP_SUCCEEDED.findall(stack.log(worker))]
    total_refreshes = sum(len(times) for times in every_refresh.values())
    total_tasks = sum(worker_tasks.values())
    provider_calls = stats_after["client_credentials"] - stats_before["client_credentials"]
    other_grants = {
        grant: stats_after[grant] - stats_before[grant] for grant in stats_after if grant != "client_credentials"
    }
    calls = load.calls
    answered = [call for call in calls if call.status == 200]
    bad = [call for call in calls if call.status != 200]
    no_time_left = [call for call in answered if not call.expires_in or call.expires_in <= 0]
    shown = [call for call in answered if call.provider_accepted is not None]
    refused = [call for call in shown if not call.provider_accepted]
    answer_times = [call.at for call in answered]
    longest_silence = max((b - a for a, b in itertools.pairwise(answer_times)), default=float("inf"))
    latencies_ms = [call.seconds * 1e3 for call in calls]
    per_web = {web: sum(call.web == web for call in answered) for web in WEBS}
    # Tokens stored now are shown to the provider: real, unexpired tokens from the server.
    sample = random.Random(3).sample(connections, 50)  # noqa: S311 - a sample, not a secret
    sample_accepted = sum(
        server.whoami(OAuthToken.objects.get(connection=connection).access_token).status_code == 200
        for connection in sample
    )
    window_seconds = (ended_at - started_at).total_seconds()
    cpu_used = {role: cpu_after[role] - cpu_before.get(role, 0.0) for role in cpu_after}
    machine_cores = (machine_after[0] - machine_before[0]) / (machine_after[1] - machine_before[1]) * os.cpu_count()
    counts_histogram = {n: refresh_counts.count(n) for n in sorted(set(refresh_counts))}

    figures = "\n".join(
        [
            "",
            "=== Scale-out run: figures ===",
            f"Topology: {len(WEBS)} gunicorn web processes (1 worker x 4 threads each), {len(WORKERS)} Celery workers "
            f"(solo pool), 1 beat (every {BEAT_INTERVAL} s); PostgreSQL and Redis; {os.cpu_count()} CPU cores.",
            f"Load: {CONNECTIONS} client-credentials connections, {LIFETIME} s tokens (refresh margin {MARGIN} s); "
            f"run {window_seconds:.0f} s; set-up {set_up_seconds:.0f} s.",
            f"Refreshes: {total_refreshes} in total ({total_refreshes / window_seconds:.1f}/s), "
            f"{sum(refresh_counts)} inside the window; provider token calls {provider_calls} "
            f"(other grants: {other_grants}); failures {failures.count()}.",
            f"Refreshes per token in the window: min {min(refresh_counts)}, median "
            f"{statistics.median(refresh_counts):g}, max {max(refresh_counts)} "
            f"(allowed {MIN_REFRESHES}..{MAX_REFRESHES}); histogram {counts_histogram}.",
            "Refresh tasks per worker: "
            + ", ".join(
                f"{worker} {count} ({count / max(1, total_tasks):.0%})" for worker, count in worker_tasks.items()
            )
            + f"; {total_tasks} tasks for {total_refreshes} refreshes; task time p50 "
            f"{percentile(task_ms, 0.5):.0f} ms, p99 {percentile(task_ms, 0.99):.0f} ms.",
            f"Sweeps: {len(swept)}, tokens queued per sweep: mean {statistics.fmean(swept) if swept else 0:.0f}, "
            f"max {max(swept, default=0)}.",
            f"Gap between two refreshes of one token: min {min(gaps, default=float('nan')):.1f} s "
            f"(bound {MIN_GAP} s), max {max(gaps, default=float('nan')):.1f} s (lifetime {LIFETIME} s); "
            f"lateness after the due time: p50 {percentile(lateness, 0.5):.1f} s, "
            f"max {max(lateness, default=0):.1f} s.",
            f"Token table polls: {polls} (all {CONNECTIONS} rows each); least time left on any token "
            f"{least_left:.1f} s (max staleness {-least_left:.1f} s); expired seen: {len(expired)}.",
            f"Token endpoint: {len(calls)} calls ({', '.join(f'{web} {n}' for web, n in per_web.items())}), "
            f"non-200: {len(bad)}, min expires_in {min((c.expires_in or 0 for c in answered), default=0)} s; "
            f"latency p50 {percentile(latencies_ms, 0.5):.0f} ms, p99 {percentile(latencies_ms, 0.99):.0f} ms, "
            f"max {max(latencies_ms, default=0):.0f} ms; longest time without an answer {longest_silence:.2f} s; "
            f"served tokens accepted by the provider {len(shown) - len(refused)}/{len(shown)}; "
            f"stored tokens accepted {sample_accepted}/{len(sample)}.",
            f"CPU, in cores busy on average over the run: machine {machine_cores:.2f} of {os.cpu_count()} (other work "
            f"on this machine included); "
            + ", ".join(f"{role} {seconds / window_seconds:.2f}" for role, seconds in cpu_used.items())
            + f"; load average at the end {os.getloadavg()[0]:.2f}.",
            "",
        ]
    )
    with capsys.disabled():
        print(figures)
    report = f"{figures}\n{stack.logs()}"

    # every token refreshed before it expired
    assert not expired, f"{len(expired)} tokens were seen expired{report}"
    assert least_left > 0, report
    assert not late_first, f"first refresh after the seeded expiry: {late_first[:10]}{report}"
    assert max(gaps, default=0.0) < LIFETIME - GAP_TOLERANCE, report
    assert min(refresh_counts) >= MIN_REFRESHES, report
    # no token refreshed twice in one cycle, and one provider call per refresh (single flight), all by workers
    assert min(gaps, default=MIN_GAP) >= MIN_GAP - GAP_TOLERANCE, report
    assert max(refresh_counts) <= MAX_REFRESHES, report
    assert provider_calls == total_refreshes, report
    assert other_grants == {"authorization_code": 0, "refresh_token": 0, "other": 0}, report
    assert failures.count() == 0, report
    assert refresh_actors == {"refresh worker"}, report
    assert sum(raised.values()) == 0, report
    # the work spread over all three workers
    assert total_tasks >= total_refreshes, report
    for worker, count in worker_tasks.items():
        assert count >= MIN_WORKER_SHARE * total_tasks, f"{worker} did {count} of {total_tasks} tasks{report}"
    # token-endpoint calls served throughout, through both web processes, each token real and unexpired
    assert not bad, f"{[(c.web, c.status) for c in bad[:10]]}{report}"
    assert not no_time_left, report
    assert len(calls) >= SECONDS / LOAD_INTERVAL / 4, report
    assert all(per_web.values()), report
    assert longest_silence < 5, report
    assert shown and not refused, report
    assert sample_accepted == len(sample), report
