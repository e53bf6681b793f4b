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
        # -m '': the long runs make test deselects (pyproject.toml's addopts) are run here.
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "", test_file]
        result = subprocess.run(command, cwd=REPO_ROOT, env=env, check=False)
        print(figures.read_text() if figures.exists() else "\nThe run stopped before its figures were made.")
    return result.returncode


class Copier:
    """COPY rows into a model's table. Values are given by attribute name; each column not given (but the id) takes the
    field's default. Encrypted and JSON values go through the model field's own get_db_prep_save, so what
    lands in the table is what the ORM would have written (per-row Fernet ciphertext, JSON)."""

    def __init__(self, model: type, given: list[str], fixed: dict[str, object]) -> None:
        from django.db import connection

        self.connection = connection
        fields = list(model._meta.concrete_fields)
        by_name = {field.attname: field for field in fields}
        self.columns = [by_name[name].column for name in given]  # the order of the rows' values
        self.prepare = [
            by_name[name] if by_name[name].get_internal_type() in ("BinaryField", "JSONField") else None
            for name in given
        ]
        rest = [field for field in fields if field.attname not in given and not field.primary_key]
        self.columns += [field.column for field in rest]
        self.constants = tuple(
            field.get_db_prep_save(fixed[field.attname] if field.attname in fixed else field.get_default(), connection)
            for field in rest
        )
        quote = connection.ops.quote_name
        self.statement = f"COPY {quote(model._meta.db_table)} ({', '.join(map(quote, self.columns))}) FROM STDIN"

    def write(self, rows: list[tuple]) -> None:
        with self.connection.cursor() as cursor, cursor.cursor.copy(self.statement) as copy:
            for row in rows:
                values = tuple(
                    field.get_db_prep_save(value, self.connection) if field is not None else value
                    for field, value in zip(self.prepare, row, strict=True)
                )
                copy.write_row(values + self.constants)
