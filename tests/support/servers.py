"""pytest plugin (loaded with -p): throwaway PostgreSQL and Redis servers for the whole test run.

They start before Django reads its settings, which take DATABASE_URL and REDIS_URL from the environment,
so the test process and every server process the tests start (web, Celery worker, beat) share them.
TEST_DATABASE_URL / TEST_REDIS_URL point the run at servers of your own instead. A server that cannot start
fails the run: tests that need PostgreSQL or Redis are never skipped. Under pytest-xdist (`make test` runs two
workers) each worker starts servers of its own, so nothing a test does reaches another worker's tests.
"""

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from tests.support.waiting import wait_for

_stops: list = []
T = TypeVar("T")
# How to stop and start again the servers this run started (tests of what a restart does to the processes):
# "postgres" -> the pg_ctl command's start and stop, "redis" -> a function that restarts it (its data lost).
_controls: dict[str, dict[str, Callable[[], None]]] = {}


def free_port() -> int:
    """A port free on 127.0.0.1 right now. Another process may bind it before the server it is for does: start
    servers with on_a_free_port(), which tries again on another port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PortTaken(Exception):
    """The server could not bind its port: another process took it after free_port() found it free."""


def on_a_free_port(start: Callable[[int], T], attempts: int = 3) -> T:
    """start(port) on a free port; on another one when it raises PortTaken."""
    for attempt in range(1, attempts + 1):
        try:
            return start(free_port())
        except PortTaken:
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")


def gunicorn_bind_state(log: str, port: int) -> str:
    """What gunicorn's log says of binding `port`: "listening", "taken" (another process bound it first; gunicorn
    retries for 5 s, then exits), or "" (not yet)."""
    if f"Listening at: http://127.0.0.1:{port} " in log:
        return "listening"
    return "taken" if f"Connection in use: ('127.0.0.1', {port})" in log else ""


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _text_since(path: Path, offset: int) -> str:
    """What was written to the log at `path` after its first `offset` bytes."""
    with path.open("rb") as log:
        log.seek(offset)
        return log.read().decode(errors="replace")


def _wait_for_port(port: int, what: str, seconds: float = 30) -> None:
    def accepts() -> bool:
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0

    try:
        wait_for(accepts, seconds, f"{what} to accept connections on 127.0.0.1:{port}", interval=0.1)
    except AssertionError as exc:
        raise pytest.UsageError(str(exc)) from None


def _as_postgres_user(command: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root; CI and these sessions run as root.
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *command]
    return command


def start_postgres() -> str:
    bin_dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    initdb = shutil.which("initdb") or (bin_dirs and f"{bin_dirs[-1]}/initdb")
    if not initdb or not Path(initdb).exists():
        raise pytest.UsageError(
            "PostgreSQL server binaries not found: install them (apt-get install -y postgresql) "
            "or set TEST_DATABASE_URL to a server of your own."
        )
    pg_ctl = str(Path(initdb).with_name("pg_ctl"))
    data_dir = Path(tempfile.mkdtemp(prefix="controlroom-pg-"))
    if os.geteuid() == 0:
        shutil.chown(data_dir, "postgres", "postgres")
    subprocess.run(
        _as_postgres_user([initdb, "-D", str(data_dir / "data"), "-A", "trust", "-U", "postgres", "-E", "UTF8"]),
        check=True,
        capture_output=True,
    )
    log = data_dir / "server.log"

    def start(port: int) -> str:
        # Durability is worthless for a throwaway cluster; fsync off makes the suite much faster.
        options = f"-p {port} -k {data_dir} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off "
        options += "-c full_page_writes=off -c max_connections=300"
        command = [pg_ctl, "-D", str(data_dir / "data"), "-o", options, "-l", str(log), "-w", "start"]
        logged = _size(log)
        try:
            subprocess.run(_as_postgres_user(command), check=True, capture_output=True)
        except subprocess.CalledProcessError:
            if "could not bind" in _text_since(log, logged):  # this attempt's words, not an earlier one's
                raise PortTaken() from None
            raise
        _stops.append(
            lambda: subprocess.run(
                _as_postgres_user([pg_ctl, "-D", str(data_dir / "data"), "-m", "immediate", "stop"]),
                capture_output=True,
            )
        )
        _wait_for_port(port, "PostgreSQL")
        data = ["-D", str(data_dir / "data")]
        _controls["postgres"] = {
            "stop": lambda: _run(_as_postgres_user([pg_ctl, *data, "-m", "fast", "-w", "stop"])),
            "start": lambda: _run(_as_postgres_user([pg_ctl, *data, "-o", options, "-l", str(log), "-w", "start"])),
            "restart": lambda: _run(_as_postgres_user([pg_ctl, *data, "-l", str(log), "-m", "fast", "-w", "restart"])),
        }
        return f"postgres://postgres@127.0.0.1:{port}/controlroom"

    return on_a_free_port(start)


def _run(command: list[str]) -> None:
    subprocess.run(command, check=True, capture_output=True, timeout=60)


def server_control(name: str, action: str) -> None:
    """Stop, start or restart a server this run started ("postgres": pg_ctl, as an operator's restart does;
    "redis": a new server on the same port, its data lost). Fails, saying why, for a server of your own."""
    if name not in _controls:
        pytest.fail(f"{name} was not started by this test run (TEST_*_URL points elsewhere): it cannot be restarted.")
    _controls[name][action]()


def start_redis() -> str:
    redis_server = shutil.which("redis-server")
    if not redis_server:
        raise pytest.UsageError(
            "redis-server not found: install it (apt-get install -y redis-server) or set TEST_REDIS_URL."
        )
    log_path = Path(tempfile.mkdtemp(prefix="controlroom-redis-")) / "redis.log"
    running: list[subprocess.Popen[bytes]] = []

    def start(port: int) -> str:
        logged = _size(log_path)
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [redis_server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        running[:] = [process]
        # Its own word, not an open port: another process's server could be the one listening there.
        try:
            wait_for(
                lambda: process.poll() is not None or "Ready to accept connections" in _text_since(log_path, logged),
                30,
                f"Redis to start on 127.0.0.1:{port}",
            )
        except AssertionError as exc:
            raise pytest.UsageError(str(exc)) from None
        if process.poll() is not None:
            if "Address already in use" in _text_since(log_path, logged):
                raise PortTaken()
            raise pytest.UsageError(f"redis-server exited with code {process.returncode}:\n{log_path.read_text()}")
        _stops.append(lambda: [(server.terminate(), server.wait(10)) for server in running])
        _controls["redis"] = {"restart": lambda: _redis_restart(running, start, port)}
        return f"redis://127.0.0.1:{port}/0"

    return on_a_free_port(start)


def _redis_restart(running: list, start: Callable[[int], str], port: int) -> None:
    """As a crash and a restart do: the server gone at once (SIGKILL), a new one on the same port, empty."""
    for server in running:
        server.kill()
        server.wait(10)
    start(port)


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config, parser: pytest.Parser, args: list[str]) -> None:
    # tryfirst: before pytest-django's hook imports the settings.
    if _is_xdist_controller(early_config):
        return  # it runs no test; each of its workers starts servers of its own
    if os.environ.get("TEST_REDIS_URL") and "PYTEST_XDIST_WORKER" in os.environ:
        # The workers would flush and count in each other's Redis databases.
        raise pytest.UsageError("TEST_REDIS_URL is one server for every xdist worker: run with -n 0.")
    if "PYTEST_XDIST_WORKER" in os.environ:
        # The controller's settings made one VAR_DIR (tests/settings.py) that every worker would inherit.
        os.environ["VAR_DIR"] = tempfile.mkdtemp(prefix="controlroom-var-")
    try:
        os.environ["DATABASE_URL"] = os.environ.get("TEST_DATABASE_URL") or start_postgres()
        os.environ["REDIS_URL"] = os.environ.get("TEST_REDIS_URL") or start_redis()
    except subprocess.CalledProcessError as exc:
        _stop_all()
        output = (exc.stderr or b"").decode(errors="replace")[-2000:]
        raise pytest.UsageError(f"Could not start a test server: {exc.cmd[0]} failed:\n{output}") from None
    except (PortTaken, pytest.UsageError):
        _stop_all()  # a server started already is not left running
        raise


def _is_xdist_controller(config: pytest.Config) -> bool:
    distributed = getattr(config.known_args_namespace, "numprocesses", None) not in (None, 0)
    return distributed and "PYTEST_XDIST_WORKER" not in os.environ


def _stop_all() -> None:
    while _stops:
        _stops.pop()()


def pytest_unconfigure(config: pytest.Config) -> None:
    _stop_all()
