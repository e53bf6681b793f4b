"""Settings come from the environment; a bad value stops start-up with one sentence, never a traceback.

Each case runs `manage.py` in a fresh process with a minimal environment (no .env, VAR_DIR in tmp_path),
exactly as an operator would start it.
"""

import json
import secrets
from pathlib import Path

import pytest

from tests.support.processes import manage, minimal_env

PRODUCTION_KEYS = {"SECRET_KEY": secrets.token_urlsafe(50), "CRYPTOGRAPHY_KEY": secrets.token_urlsafe(50)}
SAME_KEY = secrets.token_urlsafe(50)

# (environment, the sentence expected after "Configuration error: ", text that must not be echoed)
CONFIGURATION_ERRORS = {
    "production without SECRET_KEY": (
        {"DEBUG": "false"},
        "SECRET_KEY is not set: set it to a long random string, or set DEBUG=true for development.",
        None,
    ),
    "production without CRYPTOGRAPHY_KEY": (
        {"DEBUG": "false", "SECRET_KEY": PRODUCTION_KEYS["SECRET_KEY"]},
        "CRYPTOGRAPHY_KEY is not set: set it to a long random string and back it up with the database.",
        PRODUCTION_KEYS["SECRET_KEY"],
    ),
    "production with CRYPTOGRAPHY_KEY equal to SECRET_KEY": (
        {"DEBUG": "false", "SECRET_KEY": SAME_KEY, "CRYPTOGRAPHY_KEY": SAME_KEY},
        "CRYPTOGRAPHY_KEY must differ from SECRET_KEY.",
        SAME_KEY,
    ),
    "DATABASE_URL of an unsupported engine": (
        {"DEBUG": "true", "DATABASE_URL": "mysqlx://x"},
        "DATABASE_URL must start with postgres:// (postgres://user:password@host:5432/name) or sqlite:/// "
        "(sqlite:////absolute/path.sqlite3).",
        None,
    ),
    "DATABASE_URL with a port that is not a number": (
        {"DEBUG": "true", "DATABASE_URL": "postgres://u:db-pass-5b1e@h:notaport/db"},
        "DATABASE_URL is malformed (Port could not be cast to integer value as 'notaport').",
        "db-pass-5b1e",
    ),
    "DATABASE_URL that is not a URL": (
        {"DEBUG": "true", "DATABASE_URL": "garbage"},
        "DATABASE_URL must start with postgres:// (postgres://user:password@host:5432/name) or sqlite:/// "
        "(sqlite:////absolute/path.sqlite3).",
        None,
    ),
    "REDIS_URL with a wrong scheme": (
        {"DEBUG": "true", "REDIS_URL": "http://127.0.0.1:6379/0"},
        "REDIS_URL must look like redis://[:password@]host:6379/0 (or rediss://, unix://).",
        None,
    ),
    # The same mistake with a password in the URL: the sentence ends up in logs, so it must not repeat it.
    "REDIS_URL with a wrong scheme and a password": (
        {"DEBUG": "true", "REDIS_URL": "http://:redis-pass-77c2@127.0.0.1:6379/0"},
        "REDIS_URL must look like redis://[:password@]host:6379/0 (or rediss://, unix://).",
        "redis-pass-77c2",
    ),
    "OUTBOUND_PROXY_URL with a wrong scheme": (
        {"DEBUG": "true", "OUTBOUND_PROXY_URL": "ftp://proxyuser:proxy-pass-3a9d@proxy.example.com:3128"},
        "OUTBOUND_PROXY_URL must look like http://[user:password@]host:port (password URL-encoded).",
        "proxy-pass-3a9d",
    ),
    "OUTBOUND_PROXY_URL without a scheme": (
        {"DEBUG": "true", "OUTBOUND_PROXY_URL": "proxyuser:proxy-pass-3a9d@proxy.example.com:3128"},
        "OUTBOUND_PROXY_URL must look like http://[user:password@]host:port (password URL-encoded).",
        "proxy-pass-3a9d",
    ),
    "OUTBOUND_PROXY_URL with a port that is not a number": (
        {"DEBUG": "true", "OUTBOUND_PROXY_URL": "http://proxyuser:proxy-pass-3a9d@proxy.example.com:notaport"},
        "OUTBOUND_PROXY_URL must look like http://[user:password@]host:port (password URL-encoded).",
        "proxy-pass-3a9d",
    ),
    "OUTBOUND_TIMEOUT that is not a number": (
        {"DEBUG": "true", "OUTBOUND_TIMEOUT": "ten"},
        "OUTBOUND_TIMEOUT must be a number of seconds, 0.1 or more, not 'ten'.",
        None,
    ),
    "REDIS_URL with a port that is not a number": (
        {"DEBUG": "true", "REDIS_URL": "redis://:redis-pass-77c2@h:notaport/0"},
        "REDIS_URL must look like redis://[:password@]host:6379/0 (or rediss://, unix://).",
        "redis-pass-77c2",
    ),
    "EMAIL_URL that is not a URL": (
        {"DEBUG": "true", "EMAIL_URL": "garbage"},
        "EMAIL_URL must look like smtp://user:password@host:587, smtp+tls://..., or consolemail:// (the default).",
        None,
    ),
    "PUBLIC_URL without a scheme": (
        {"DEBUG": "true", "PUBLIC_URL": "controlroom.example.com"},
        "PUBLIC_URL must be an absolute http(s) URL, not 'controlroom.example.com'.",
        None,
    ),
    "PUBLIC_URL that is a path": (
        {"DEBUG": "true", "PUBLIC_URL": "/controlroom"},
        "PUBLIC_URL must be an absolute http(s) URL, not '/controlroom'.",
        None,
    ),
    "LOG_LEVEL unknown": (
        {"DEBUG": "true", "LOG_LEVEL": "loud"},
        "LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or CRITICAL, not 'LOUD'.",
        None,
    ),
    "BEAT_INTERVAL zero": (
        {"DEBUG": "true", "BEAT_INTERVAL": "0"},
        "BEAT_INTERVAL must be a whole number of seconds, 1 or more, not '0'.",
        None,
    ),
    "BEAT_INTERVAL with a unit": (
        {"DEBUG": "true", "BEAT_INTERVAL": "30s"},
        "BEAT_INTERVAL must be a whole number of seconds, 1 or more, not '30s'.",
        None,
    ),
}


@pytest.mark.parametrize(
    ("variables", "sentence", "secret"), CONFIGURATION_ERRORS.values(), ids=CONFIGURATION_ERRORS.keys()
)
def test_a_configuration_error_stops_start_up_with_one_sentence(
    tmp_path: Path, variables: dict[str, str], sentence: str, secret: str | None
):
    # when
    result = manage("check", env=minimal_env(tmp_path, **variables))

    # then
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.count("Configuration error:") == 1, result.stderr
    assert f"Configuration error: {sentence}" in result.stderr, result.stderr
    if secret:
        assert secret not in result.stdout + result.stderr


def test_the_embedded_default_is_sqlite_and_the_filesystem_broker_under_var_dir(tmp_path: Path):
    # given no DATABASE_URL, no REDIS_URL, development mode
    env = minimal_env(tmp_path, DEBUG="true")
    script = (
        "import json; from django.conf import settings; print(json.dumps({"
        "'engine': settings.DATABASES['default']['ENGINE'], 'name': str(settings.DATABASES['default']['NAME']), "
        "'broker': settings.CELERY_BROKER_URL, 'queue': settings.CELERY_BROKER_TRANSPORT_OPTIONS['data_folder_in'], "
        "'cache': settings.CACHES['default']['BACKEND']}))"
    )

    # when
    result = manage("shell", "-c", script, env=env)

    # then
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["engine"] == "django.db.backends.sqlite3"
    assert Path(seen["name"]) == tmp_path / "controlroom.sqlite3"
    assert seen["broker"] == "filesystem://"
    assert Path(seen["queue"]).is_relative_to(tmp_path)
    assert Path(seen["queue"]).is_dir()
    assert seen["cache"] == "django.core.cache.backends.filebased.FileBasedCache"


def test_migrate_and_check_succeed_on_the_embedded_default(tmp_path: Path):
    # given
    env = minimal_env(tmp_path, DEBUG="true")

    # when
    migrated = manage("migrate", "--no-input", env=env)
    checked = manage("check", env=env)

    # then
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    assert (tmp_path / "controlroom.sqlite3").is_file()
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "System check identified no issues" in checked.stdout


def test_production_settings_pass_check_deploy_without_warnings(tmp_path: Path):
    # given the production settings an operator is told to set
    env = minimal_env(
        tmp_path,
        DEBUG="false",
        **PRODUCTION_KEYS,
        ALLOWED_HOSTS="controlroom.example.com",
        PUBLIC_URL="https://controlroom.example.com",
        SECURE_HSTS_PRELOAD="true",
        DATABASE_URL=f"sqlite:///{tmp_path / 'production.sqlite3'}",
    )

    # when
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=env)

    # then
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "System check identified no issues (0 silenced)." in output
    assert "WARNING" not in output
    assert "security.W" not in output


@pytest.mark.django_db
def test_postgresql_sessions_carry_statement_lock_and_idle_timeouts():
    # The test run's own PostgreSQL connection is made with the settings' options: the server says what it got.
    from django.db import connection

    with connection.cursor() as cursor:
        shown = {}
        for name in ("statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout"):
            cursor.execute(f"SHOW {name}")
            shown[name] = cursor.fetchone()[0]
    assert shown == {"statement_timeout": "30s", "lock_timeout": "10s", "idle_in_transaction_session_timeout": "1min"}


def test_the_database_timeouts_come_from_the_environment(tmp_path: Path):
    env = minimal_env(
        tmp_path,
        DEBUG="true",
        DATABASE_URL="postgres://user:pw@127.0.0.1:5432/db",
        DATABASE_LOCK_TIMEOUT="2.5",
        DATABASE_STATEMENT_TIMEOUT="0",
    )
    result = manage(
        "shell",
        "-c",
        "from django.conf import settings; print(settings.DATABASES['default']['OPTIONS']['options'])",
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == (
        "-c statement_timeout=0 -c lock_timeout=2500 -c idle_in_transaction_session_timeout=60000"
    )
