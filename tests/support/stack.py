"""The refresh engine as an operator runs it: real Celery workers and beat, a real gunicorn, real Redis and
PostgreSQL, the real loopback authorization server.

Every process uses the pytest-django test database (so tests are transactional: the processes see, and write,
committed rows) and a Redis database number of its own stack (RedisDatabases), flushed before and after, so no
task queued by another test runs here. Processes start in their own process group; they are always stopped after
the test (SIGTERM, SIGKILL after 10 s), before the test database is flushed.

Nothing here waits for a fixed time: every wait polls a condition (wait_until: tests/support/waiting.py's wait_for)
until a generous deadline that only turns a hang into a failure, and a run that checks something regularly does it
with every().
"""

import email
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

import pytest
import redis
from celery import Celery
from django.db import connection as db_connection
from django.db import connections

from tests.support.authserver import AuthServer
from tests.support.processes import Processes, start_gunicorn
from tests.support.waiting import wait_for

T = TypeVar("T")
MAIL_SEPARATOR = "-" * 79  # what Django's file email backend writes after each message


def database_url_for_processes() -> str:
    """The pytest-django test database, as a DATABASE_URL for the processes a test starts."""
    db = db_connection.settings_dict
    credentials = quote(db["USER"]) + (f":{quote(db['PASSWORD'])}" if db["PASSWORD"] else "")
    return f"postgres://{credentials}@{db['HOST']}:{db['PORT']}/{quote(db['NAME'])}"


def redis_database(number: int) -> str:
    return urlunsplit(urlsplit(os.environ["REDIS_URL"])._replace(path=f"/{number}"))


class RedisDatabases:
    """The Redis database numbers a test run's stacks use, one stack each. The test process's own (REDIS_URL's,
    0 by default) is never handed out; a number is handed out again only after its stack was stopped and its
    database flushed (give_back), the least recently used first."""

    def __init__(self, count: int = 16) -> None:  # Redis has 16 databases unless configured otherwise
        own = int(urlsplit(os.environ["REDIS_URL"]).path.strip("/") or 0)
        self.free = [number for number in range(count) if number != own]

    def take(self) -> int:
        if not self.free:
            pytest.fail("Every Redis database is in use by a stack still running: stop one before making another.")
        return self.free.pop(0)

    def give_back(self, number: int) -> None:
        self.free.append(number)


@dataclass
class Stack:
    """Processes of one test, all configured alike (env), plus ways to look at them."""

    processes: Processes
    env: dict[str, str]
    tmp: Path
    mail_dir: Path
    broker_url: str
    expected_dead: set[str] = field(default_factory=set)
    workers: list[str] = field(default_factory=list)  # names of the Celery workers started

    # --- processes ---------------------------------------------------------------------------

    def _celery(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "celery", "--app", "controlroom", *args]

    def worker(
        self,
        name: str = "worker",
        *,
        pool: str = "solo",
        concurrency: int = 1,
        loglevel: str = "INFO",
        queues: str = "celery,refresh",
    ) -> subprocess.Popen[bytes]:
        process = self.processes.start(
            name,
            self._celery(
                "worker",
                "--queues",
                queues,
                "--loglevel",
                loglevel,
                "--pool",
                pool,
                "--concurrency",
                str(concurrency),
                "--hostname",
                f"{name}@%h",
                # No chatter with other workers: each worker only takes tasks from the queue.
                "--without-gossip",
                "--without-mingle",
            ),
            self.env,
        )
        self.workers.append(name)
        self.wait_for_log(name, " ready.", 60)
        return process

    def beat(self, name: str = "beat", *, loglevel: str = "INFO") -> subprocess.Popen[bytes]:
        schedule = self.tmp / f"{name}-schedule"
        process = self.processes.start(
            name, self._celery("beat", "--loglevel", loglevel, "--schedule", str(schedule)), self.env
        )
        self.wait_for_log(name, "beat: Starting", 60)
        return process

    def web(self, name: str = "web", *, workers: int = 3, threads: int = 8) -> int:
        """One gunicorn web process (a master and its worker processes); returns its port."""
        return self.webs([name], workers=workers, threads=threads)[name]

    def webs(self, names: Iterable[str], *, workers: int = 1, threads: int = 1) -> dict[str, int]:
        """Several gunicorn web processes, each its own master on its own port, so that a test knows which
        process answered and can ask each one: {name: port}."""
        gunicorn = [sys.executable, "-m", "gunicorn", "controlroom.wsgi:application", f"--workers={workers}"]
        gunicorn += [f"--threads={threads}", "--timeout=60", "--graceful-timeout=3"]
        # gunicorn 27 otherwise opens ~/.gunicorn/gunicorn.ctl, shared by every instance.
        gunicorn += ["--no-control-socket", "--access-logfile=-", "--error-logfile=-"]
        return {name: start_gunicorn(self.processes, name, gunicorn, self.env) for name in names}

    def web_as_make_run_starts_it(self, name: str = "web") -> int:
        """gunicorn as the Procfile (make run) starts it: gunicorn.conf.py (no access log: a callback's URL
        carries the authorization code), two workers; its port."""
        gunicorn = [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", "--workers", "2"]
        return start_gunicorn(self.processes, name, gunicorn, self.env)

    def kill(self, name: str) -> None:
        self.expected_dead.add(name)
        self.processes.kill_group(name)

    def stop(self, name: str, seconds: float = 15) -> None:
        """SIGTERM, as a deployment stops a process, and wait for it to exit."""
        self.expected_dead.add(name)
        self.processes.signal(name, signal.SIGTERM)
        self.processes.started[name][0].wait(timeout=seconds)

    # --- looking -----------------------------------------------------------------------------

    def log(self, name: str) -> str:
        return self.processes.log(name)

    def count_in_log(self, name: str, text: str) -> int:
        return self.log(name).count(text)

    def tasks(self, task: str, outcome: str = "succeeded") -> int:
        """How many connections.tasks.<task> the workers logged as `outcome`: "received" (taken from the queue) or
        "succeeded" (ended without raising; a refresh records its failures instead of raising)."""
        pattern = re.compile(rf"Task connections\.tasks\.{task}\[[0-9a-f-]+\] {outcome}\b")
        return sum(len(pattern.findall(self.log(worker))) for worker in self.workers)

    def sweeps_run(self) -> int:
        return self.tasks("refresh_sweep")

    def wait_for_sweeps(self, count: int) -> None:
        """Wait until the workers have run `count` more sweeps, and then every refresh task queued so far has
        ended (the refresh queue is empty and each task taken from it has finished: the sweeps' and the refresh
        tasks' queues are taken from in turn, not in the order they were filled)."""
        seen, beat_interval = self.sweeps_run(), float(self.env.get("BEAT_INTERVAL", 30))  # 30: the setting's default
        generous = 30 + 5 * count * beat_interval  # on an idle machine: count x beat_interval
        self.wait_until(lambda: self.sweeps_run() >= seen + count, generous, f"{count} more sweeps")
        self.wait_until(self.refreshes_idle, generous, "the refresh tasks queued so far to end")

    def refreshes_idle(self) -> bool:
        """The refresh queue is empty and every refresh task taken from it has ended."""
        queued = redis.Redis.from_url(self.broker_url).llen("refresh")
        logs = "".join(self.log(worker) for worker in self.workers)
        task = r"connections\.tasks\.refresh_tokens?\[[0-9a-f-]+\]"
        taken = len(re.findall(rf"Task {task} received", logs))
        # Ended: succeeded, raised, or discarded unrun (expired in the queue: logged after "received").
        ended = len(re.findall(rf"Task {task} (?:succeeded|raised)|Discarding revoked task: {task}", logs))
        return queued == 0 and taken == ended

    def logs(self) -> str:
        return self.processes.logs()

    def check_alive(self, what: str) -> None:
        for name, (process, _) in self.processes.started.items():
            if name not in self.expected_dead and process.poll() is not None:
                pytest.fail(f"{name} exited with code {process.returncode} while {what}.\n{self.logs()}")

    def wait_until(self, condition: Callable[[], T], seconds: float, what: str, interval: float = 0.2) -> T:
        """wait_for (tests/support/waiting.py) with this stack's logs in its failure, failing at once when one of
        its processes dies meanwhile."""

        def met() -> T:
            value = condition()
            if not value:
                self.check_alive(f"waiting for {what}")
            return value

        return wait_for(met, seconds, what, interval=interval, details=self.logs)

    def wait_for_log(self, name: str, text: str, seconds: float) -> None:
        self.wait_until(lambda: text in self.log(name), seconds, f"{name} to log {text!r}", interval=0.1)

    def mails(self) -> list[email.message.Message]:
        """Every email the processes (and this test process) sent, parsed, oldest file first."""
        messages = []
        for path in sorted(self.mail_dir.glob("*.log"), key=lambda p: p.stat().st_mtime):
            for chunk in path.read_text(errors="replace").split(MAIL_SEPARATOR):
                if chunk.strip():
                    messages.append(email.message_from_string(chunk.strip()))
        return messages

    def mail_subjects(self) -> list[str]:
        return [str(message["Subject"]) for message in self.mails()]

    # --- acting ------------------------------------------------------------------------------

    def send_task(self, name: str, *args: Any) -> None:
        """Queue a task by name on this stack's broker, as beat or a web process would."""
        client = Celery("refresh-tests", broker=self.broker_url, set_as_current=False)
        client.conf.broker_connection_retry_on_startup = True
        try:
            with client.connection_for_write() as conn:
                client.send_task(name, args=list(args), connection=conn)
        finally:
            client.close()


def every(interval: float, seconds: float, check: Callable[[], object], stop: threading.Event | None = None) -> int:
    """Run `check` every `interval` seconds (start to start; at once after one that took longer) until `seconds`
    have passed or `stop` is set. Returns how many times it ran."""
    stop = stop or threading.Event()
    deadline = time.monotonic() + seconds
    runs = 0
    while not stop.is_set() and (started := time.monotonic()) < deadline:
        check()
        runs += 1
        stop.wait(max(0.0, min(started + interval, deadline) - time.monotonic()))
    return runs


def refresh_count_bounds(
    seconds: float, *, cycle: float, beat_interval: float, first_due_within: float, late: float = 0.0
) -> tuple[int, int]:
    """(fewest, most) refreshes of one token that a correct engine makes in a window of `seconds`, when a token is
    due `cycle` seconds after it was issued (its lifetime less its refresh margin), beat sweeps every
    `beat_interval` seconds, the token is first due within `first_due_within` seconds of the window's start, and a
    refresh runs at most `late` seconds after the sweep that queued it.

    Most: a sweep claims the tokens due before the next sweep, so a refresh comes at the earliest one beat interval
    before its due time, and two refreshes of one token are at least cycle - beat_interval apart. Fewest: the first
    refresh comes by first_due_within + beat_interval + late, each next one at most cycle + beat_interval + late
    after the one before. Too many is a refresh loop; too few, a refresh missed (or, for a small `late`, a busy
    machine)."""
    most = math.floor(seconds / (cycle - beat_interval)) + 1
    slowest = cycle + beat_interval + late
    fewest = max(0, 1 + math.floor((seconds - (first_due_within + beat_interval + late)) / slowest))
    return fewest, most


def in_threads(calls: list[Callable[[], T]], workers: int) -> list[T]:
    """Run the calls at once, each in its own thread; each thread closes its own database connection."""

    def run(call: Callable[[], T]) -> T:
        try:
            return call()
        finally:
            connections.close_all()

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(run, calls))


def refresh_requests(server: AuthServer) -> int:
    return server.stats()["token_requests"]["refresh_token"]
