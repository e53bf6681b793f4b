"""What the benchmarks share: a fresh database on the throwaway PostgreSQL, the app's environment, set-up steps,
and the exit codes (0 measured, 1 measured errors, 2 could not set up, 130 interrupted)."""

import os
import secrets
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


class SetupError(Exception):
    """The run could not start; nothing was measured."""


def create_database(server_url: str, name: str) -> str:
    """start_postgres() names a database it does not create; make a fresh one for this run."""
    import psycopg

    base = server_url.rsplit("/", 1)[0]
    with psycopg.connect(f"{base}/postgres", autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    return f"{base}/{name}"


def postgres_directory(database_url: str) -> Path | None:
    """start_postgres() leaves its data directory in /tmp and does not say which; find it by the socket the
    running server holds for our port (the server removes that socket when it stops, so look while it runs)."""
    port = urlsplit(database_url).port
    found = list(Path(tempfile.gettempdir()).glob(f"controlroom-pg-*/.s.PGSQL.{port}"))
    return found[0].parent if len(found) == 1 else None


def app_environment(*, database_url: str, redis_url: str, workdir: Path, **extra: str) -> dict[str, str]:
    """Production mode (DEBUG would keep every query in memory), fresh keys, no developer .env."""
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "controlroom.settings",
        "PYTHONPATH": str(REPO_ROOT),
        "ENV_FILE": "",
        "DEBUG": "false",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "CRYPTOGRAPHY_KEY": secrets.token_urlsafe(50),
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "VAR_DIR": str(workdir / "var"),
        "STATIC_ROOT": str(workdir / "static"),
        **extra,
    }


def run_step(what: str, command: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SetupError(f"{what} failed (exit {done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return done.stdout


def run_main(main: Callable[[], int]) -> None:
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\nInterrupted; everything this run started is stopped.", file=sys.stderr)
        sys.exit(130)
    except (SetupError, pytest.UsageError, subprocess.CalledProcessError) as exc:  # UsageError: a server
        print(f"Set-up failed: {exc}", file=sys.stderr)
        sys.exit(2)


def run_test_for_figures(test_file: str, variables: dict[str, str], figures_variable: str) -> int:
    """Run one long real-process test (it checks correctness) with `variables` set, and print the figures it
    writes to the file named by `figures_variable`: what a test must not assert because it depends on the
    machine's speed. Returns pytest's exit code."""
    with tempfile.TemporaryDirectory(prefix="bench-") as workdir:
        figures = Path(workdir) / "figures.txt"
        env = {**os.environ, **variables, figures_variable: str(figures)}
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test_file]
        result = subprocess.run(command, cwd=REPO_ROOT, env=env, check=False)
        print(figures.read_text() if figures.exists() else "\nThe run stopped before its figures were made.")
    return result.returncode
