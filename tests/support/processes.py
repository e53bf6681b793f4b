"""Running manage.py, gunicorn and Celery as real processes, the way an operator does."""

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.servers import PortTaken, gunicorn_bind_state, on_a_free_port
from tests.support.waiting import wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]

# Enough of the environment for Python and the tools to run; nothing of the test run's own configuration
# (DATABASE_URL, REDIS_URL, DEBUG, keys), so each test states exactly what the process sees.
_KEPT_VARIABLES = ("PATH", "HOME", "USER", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "TZ", "SYSTEMROOT")


def minimal_env(var_dir: Path, **variables: str) -> dict[str, str]:
    env = {name: os.environ[name] for name in _KEPT_VARIABLES if name in os.environ}
    env.update(ENV_FILE="", VAR_DIR=str(var_dir), PYTHONUNBUFFERED="1", DJANGO_SETTINGS_MODULE="controlroom.settings")
    env.update(variables)
    return env


def manage(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


_HELD: list[socket.socket] = []  # bound, never listening, until this process ends


def closed_port() -> int:
    """A loopback port nothing listens on, and nothing can: this process keeps it bound without listening (a
    connection to it is refused), so another process cannot take it while a test relies on the refusal."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    _HELD.append(sock)
    return sock.getsockname()[1]


def log_tail(path: Path, lines: int = 40) -> str:
    if not path.exists():
        return f"({path.name}: no output)"
    return f"--- last lines of {path.name} ---\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Processes:
    """The one manager of the server processes a test starts (gunicorn, Celery, the authorization server). Each
    process leads its own process group, so a worker can be SIGKILLed with its pool children (a real crash) and
    stopping reaches every child; its output goes to <log_dir>/<name>.log. stop_all() always runs (a fixture's
    finalizer): SIGTERM to every group, SIGKILL to what is left after 10 s."""

    log_dir: Path
    started: dict[str, tuple[subprocess.Popen[bytes], Path]] = field(default_factory=dict)

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        if name in self.started:
            raise ValueError(f"a process named {name} was already started")
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("ab") as log:  # a process started again under its name keeps the earlier lines
            process = subprocess.Popen(
                argv, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.started[name] = (process, log_path)
        return process

    def log(self, name: str) -> str:
        path = self.started[name][1]
        return path.read_text(errors="replace") if path.exists() else ""

    def signal(self, name: str, signum: int) -> None:
        """Send `signum` to the process group of `name`."""
        _signal_group(self.started[name][0], signum)

    def kill_group(self, name: str) -> None:
        process, _ = self.started[name]
        _signal_group(process, signal.SIGKILL)
        process.wait(timeout=10)

    def stop(self, name: str) -> None:
        """Stop `name` and its children (killed if they will not stop) and forget it: the name may be started
        again."""
        process, _ = self.started.pop(name)
        _stop_groups([process])

    def logs(self, lines: int = 40) -> str:
        return "\n".join(log_tail(log_path, lines) for _, log_path in self.started.values())

    def stop_all(self) -> None:
        _stop_groups([process for process, _ in self.started.values()])


def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:
        pass


def _stop_groups(processes: list[subprocess.Popen[bytes]], seconds: float = 10) -> None:
    for process in processes:
        _signal_group(process, signal.SIGTERM)
    deadline = time.monotonic() + seconds
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for process in processes:
        _signal_group(process, signal.SIGKILL)  # stragglers, and children whose parent is gone
        if process.poll() is None:
            process.wait(timeout=10)


def start_gunicorn(processes: Processes, name: str, argv: list[str], env: dict[str, str], seconds: float = 60) -> int:
    """Start gunicorn (`argv` without --bind) on a free port; return the port once gunicorn says it listens there,
    on another port when another process took the first one."""

    def start(port: int) -> int:
        process = processes.start(name, [*argv, f"--bind=127.0.0.1:{port}"], env)
        state = wait_for(
            lambda: gunicorn_bind_state(processes.log(name), port) or ("exited" if process.poll() is not None else ""),
            seconds,
            f"{name} to listen on port {port}",
            details=processes.logs,
        )
        if state == "listening":
            return port
        processes.stop(name)
        if state == "taken":
            raise PortTaken()
        raise AssertionError(f"{name} exited with code {process.returncode} before listening.\n{processes.logs()}")

    return on_a_free_port(start)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


def http_get(port: int, path: str, timeout: float) -> Answer:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        text = response.read().decode(errors="replace")
        return Answer(response.status, dict(response.getheaders()), text)
    finally:
        conn.close()
