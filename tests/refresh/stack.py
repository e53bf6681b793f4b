"""The refresh engine as an operator runs it: real Celery workers and beat, a real gunicorn, real Redis and
PostgreSQL, the real loopback authorization server.

Every process uses the pytest-django test database (so tests are transactional: the processes see, and write,
committed rows) and a Redis database number of its own test, flushed before and after, so no task queued by
another test runs here. Processes start in their own process group; they are always stopped after the test
(SIGTERM, SIGKILL after 10 s), before the test database is flushed.
"""

import email
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

import pytest
from celery import Celery
from django.db import connection as db_connection
from django.db import connections
from django.test import Client

from connections.models import Connection, OAuthToken
from providers.models import Provider
from tests.controlroom.helpers import REPO_ROOT, Processes, log_tail, wait_for_port
from tests.support.authserver import AuthServer
from tests.support.servers import free_port

T = TypeVar("T")
MAIL_SEPARATOR = "-" * 79  # what Django's file email backend writes after each message


def database_url_for_processes() -> str:
    """The pytest-django test database, as a DATABASE_URL for the processes a test starts."""
    db = db_connection.settings_dict
    credentials = quote(db["USER"]) + (f":{quote(db['PASSWORD'])}" if db["PASSWORD"] else "")
    return f"postgres://{credentials}@{db['HOST']}:{db['PORT']}/{quote(db['NAME'])}"


def redis_database(number: int) -> str:
    return urlunsplit(urlsplit(os.environ["REDIS_URL"])._replace(path=f"/{number}"))


class ProcessGroups(Processes):
    """tests.controlroom.helpers.Processes, each process the leader of its own process group, so a worker can
    be SIGKILLed with its pool children (a real crash), and stop_all() reaches every child."""

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        if name in self.started:
            raise ValueError(f"a process named {name} was already started")
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                argv, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.started[name] = (process, log_path)
        return process

    def kill_group(self, name: str) -> None:
        process, _ = self.started[name]
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)

    def stop_all(self) -> None:
        for process, _ in self.started.values():
            _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for process, _ in self.started.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for process, _ in self.started.values():
            _signal_group(process, signal.SIGKILL)  # stragglers, and pool children whose parent is gone
            if process.poll() is None:
                process.wait(timeout=10)

    def logs(self, lines: int = 40) -> str:
        return "\n".join(log_tail(log_path, lines) for _, log_path in self.started.values())


def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:
        pass


@dataclass
class Stack:
    """Processes of one test, all configured alike (env), plus ways to look at them."""

    processes: ProcessGroups
    env: dict[str, str]
    tmp: Path
    mail_dir: Path
    broker_url: str
    expected_dead: set[str] = field(default_factory=set)

    # --- processes ---------------------------------------------------------------------------

    def _celery(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "celery", "--app", "controlroom", *args]

    def worker(
        self, name: str = "worker", *, pool: str = "solo", concurrency: int = 1, loglevel: str = "INFO"
    ) -> subprocess.Popen[bytes]:
        process = self.processes.start(
            name,
            self._celery(
                "worker",
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
        port = free_port()
        process = self.processes.start(
            name,
            [
                sys.executable,
                "-m",
                "gunicorn",
                "controlroom.wsgi:application",
                f"--bind=127.0.0.1:{port}",
                f"--workers={workers}",
                f"--threads={threads}",
                "--timeout=60",
                "--graceful-timeout=3",
                # gunicorn 27 otherwise opens ~/.gunicorn/gunicorn.ctl, shared by every instance.
                "--no-control-socket",
                "--access-logfile=-",
                "--error-logfile=-",
            ],
            self.env,
        )
        wait_for_port(port, process, name, self.processes.logs())
        return port

    def kill(self, name: str) -> None:
        self.expected_dead.add(name)
        self.processes.kill_group(name)

    def stop(self, name: str, seconds: float = 15) -> None:
        """SIGTERM, as a deployment stops a process, and wait for it to exit."""
        self.expected_dead.add(name)
        process, _ = self.processes.started[name]
        _signal_group(process, signal.SIGTERM)
        process.wait(timeout=seconds)

    # --- looking -----------------------------------------------------------------------------

    def log(self, name: str) -> str:
        _, path = self.processes.started[name]
        return path.read_text(errors="replace") if path.exists() else ""

    def count_in_log(self, name: str, text: str) -> int:
        return self.log(name).count(text)

    def sweeps_sent(self, beat: str = "beat") -> int:
        return self.count_in_log(beat, "Sending due task token refresh sweep")

    def logs(self) -> str:
        return self.processes.logs()

    def check_alive(self, what: str) -> None:
        for name, (process, _) in self.processes.started.items():
            if name not in self.expected_dead and process.poll() is not None:
                pytest.fail(f"{name} exited with code {process.returncode} while {what}.\n{self.logs()}")

    def wait_until(self, condition: Callable[[], T], seconds: float, what: str, interval: float = 0.2) -> T:
        deadline = time.monotonic() + seconds
        while True:
            value = condition()
            if value:
                return value
            self.check_alive(f"waiting for {what}")
            if time.monotonic() > deadline:
                pytest.fail(f"Waited {seconds:g} s for {what}.\n{self.logs()}")
            time.sleep(interval)

    def wait_for_log(self, name: str, text: str, seconds: float) -> None:
        self.wait_until(lambda: text in self.log(name), seconds, f"{name} to log {text!r}", interval=0.1)

    def sleep(self, seconds: float, what: str) -> None:
        """Let time pass, failing early if a process dies meanwhile."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.check_alive(what)
            time.sleep(min(0.25, max(0.0, deadline - time.monotonic())))

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
        client = Celery("refresh-tests", broker=self.broker_url)
        client.conf.broker_connection_retry_on_startup = True
        try:
            with client.connection_for_write() as conn:
                client.send_task(name, args=list(args), connection=conn)
        finally:
            client.close()


def get_token(raw_key: str, slug: str, **params: str):
    """The token endpoint through Django's test client (this process, the test database)."""
    return Client().get(f"/api/v1/connections/{slug}/token", params, HTTP_AUTHORIZATION=f"Bearer {raw_key}")


def in_threads(calls: list[Callable[[], T]], workers: int) -> list[T]:
    """Run the calls at once, each in its own thread; each thread closes its own database connection."""

    def run(call: Callable[[], T]) -> T:
        try:
            return call()
        finally:
            connections.close_all()

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(run, calls))


def loopback_connection(
    server: AuthServer, *, number: int, grant_type: str = "authorization_code", **fields
) -> Connection:
    """A Custom-provider connection registered at `server` (any AuthServer, not only the session one)."""
    from django.conf import settings

    client_id, client_secret = f"refresh-client-{number}", f"refresh-secret-{number}-s3cr3t"
    server.create_client(
        client_id,
        client_secret,
        [settings.OAUTH_REDIRECT_URI],
        grant_type="client-credentials" if grant_type == "client_credentials" else "authorization-code",
    )
    values: dict[str, Any] = {
        "name": f"Refresh {number}",
        "slug": f"refresh-{number}",
        "provider": Provider.objects.get(slug="custom"),
        "grant_type": grant_type,
        "client_id": client_id,
        "client_secret": client_secret,
        "authorization_url": server.authorize_url,
        "token_url": server.token_url,
        "revocation_url": server.revoke_url,
        "scopes": "read,write",
        **fields,
    }
    return Connection.objects.create(**values)


def refresh_requests(server: AuthServer) -> int:
    return server.stats()["token_requests"]["refresh_token"]


def token_of(connection: Connection) -> OAuthToken:
    return OAuthToken.objects.get(connection=connection, user__isnull=True)
