"""pytest plugin (loaded with -p): throwaway PostgreSQL and Redis servers for the whole test run.

They start before Django reads its settings, which take DATABASE_URL and REDIS_URL from the environment,
so the test process and every server process the tests start (web, Celery worker, beat) share them.
TEST_DATABASE_URL / TEST_REDIS_URL point the run at servers of your own instead. A server that cannot start
fails the run: tests that need PostgreSQL or Redis are never skipped.
"""

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

_stops: list = []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(port: int, what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise pytest.UsageError(f"{what} did not accept connections on 127.0.0.1:{port} within {seconds:g} s.")


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
    port = free_port()
    subprocess.run(
        _as_postgres_user([initdb, "-D", str(data_dir / "data"), "-A", "trust", "-U", "postgres", "-E", "UTF8"]),
        check=True,
        capture_output=True,
    )
    # Durability is worthless for a throwaway cluster; fsync off makes the suite much faster.
    options = f"-p {port} -k {data_dir} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off "
    options += "-c full_page_writes=off -c max_connections=300"
    subprocess.run(
        _as_postgres_user(
            [pg_ctl, "-D", str(data_dir / "data"), "-o", options, "-l", str(data_dir / "server.log"), "-w", "start"]
        ),
        check=True,
        capture_output=True,
    )
    _stops.append(
        lambda: subprocess.run(
            _as_postgres_user([pg_ctl, "-D", str(data_dir / "data"), "-m", "immediate", "stop"]), capture_output=True
        )
    )
    _wait_for_port(port, "PostgreSQL")
    return f"postgres://postgres@127.0.0.1:{port}/controlroom"


def start_redis() -> str:
    redis_server = shutil.which("redis-server")
    if not redis_server:
        raise pytest.UsageError(
            "redis-server not found: install it (apt-get install -y redis-server) or set TEST_REDIS_URL."
        )
    port = free_port()
    process = subprocess.Popen(
        [redis_server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _stops.append(lambda: (process.terminate(), process.wait(10)))
    _wait_for_port(port, "Redis")
    return f"redis://127.0.0.1:{port}/0"


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config, parser: pytest.Parser, args: list[str]) -> None:
    # tryfirst: before pytest-django's hook imports the settings.
    try:
        os.environ["DATABASE_URL"] = os.environ.get("TEST_DATABASE_URL") or start_postgres()
        os.environ["REDIS_URL"] = os.environ.get("TEST_REDIS_URL") or start_redis()
    except subprocess.CalledProcessError as exc:
        _stop_all()
        output = (exc.stderr or b"").decode(errors="replace")[-2000:]
        raise pytest.UsageError(f"Could not start a test server: {exc.cmd[0]} failed:\n{output}") from None


def _stop_all() -> None:
    while _stops:
        _stops.pop()()


def pytest_unconfigure(config: pytest.Config) -> None:
    _stop_all()
