"""controlroom-token (python -m controlroom_client) as a shell or RPA step runs it: a process with
CONTROLROOM_URL and CONTROLROOM_KEY in its environment, the token alone on stdout."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from controlroom_client import __version__

from tests.conftest import shared_token
from tests.support.processes import closed_port

pytestmark = pytest.mark.django_db(transaction=True)

CLIENT_SOURCE = Path(__file__).resolve().parents[2] / "client" / "src"


def cli_env(**variables: str) -> dict[str, str]:
    """This process's environment without any Control Room setting, the client's source importable."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("CONTROLROOM_")}
    return {**env, "PYTHONPATH": str(CLIENT_SOURCE), **variables}


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controlroom_client", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def bot_env(live_server, bot) -> dict[str, str]:
    return cli_env(CONTROLROOM_URL=live_server.url, CONTROLROOM_KEY=bot.raw_key)


def test_prints_the_token_alone(bot_env, bot_connection, authserver):
    result = run_cli(bot_connection.slug, env=bot_env)

    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == shared_token(bot_connection).access_token + "\n"
    assert authserver.whoami(result.stdout.strip()).status_code == 200


def test_json_prints_the_whole_answer(bot_env, bot_connection):
    result = run_cli(bot_connection.slug, "--json", "--min-validity", "120", env=bot_env)

    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    stored = shared_token(bot_connection)
    assert set(answer) == {"connection", "access_token", "token_type", "expires_at", "expires_in", "scope", "extra"}
    assert answer["connection"] == bot_connection.slug
    assert answer["access_token"] == stored.access_token
    assert answer["expires_at"] == stored.expires_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert 3500 < answer["expires_in"] <= 3600
    assert answer["extra"] == {"instance_url": "https://acme.my.example"}


def test_force_refresh_gets_a_new_token(bot_env, bot_connection, authserver):
    before = shared_token(bot_connection).access_token

    result = run_cli(bot_connection.slug, "--force-refresh", env=bot_env)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == shared_token(bot_connection).access_token != before
    assert authserver.whoami(result.stdout.strip()).status_code == 200


@pytest.mark.parametrize(
    ("args", "exit_code", "message"),
    [
        (["no-such-connection"], 13, "not_found (HTTP 404): No connection is named 'no-such-connection'."),
        (["{slug}", "--min-validity", "86401"], 10, "bad_request (HTTP 400): min_validity must be whole seconds"),
    ],
)
def test_an_error_is_one_line_on_stderr_with_its_exit_code(bot_env, bot_connection, bot, args, exit_code, message):
    result = run_cli(*[arg.format(slug=bot_connection.slug) for arg in args], env=bot_env)

    assert result.returncode == exit_code
    assert result.stdout == ""
    assert result.stderr.startswith(f"controlroom-token: {message}")
    assert result.stderr.count("\n") == 1
    assert bot.raw_key not in result.stderr


def test_a_wrong_key_is_exit_code_11_without_the_key(live_server, bot_connection):
    wrong_key = "crk_0123456789ab_" + "s3cr3t" * 8
    result = run_cli(bot_connection.slug, env=cli_env(CONTROLROOM_URL=live_server.url, CONTROLROOM_KEY=wrong_key))

    assert result.returncode == 11
    assert result.stderr.startswith("controlroom-token: invalid_key (HTTP 401): ")
    assert "s3cr3t" not in result.stderr


def test_a_rate_limit_says_when_to_retry(bot_env, bot_connection, settings, one_rate_window):
    settings.TOKEN_RATE_LIMIT_PER_MINUTE = 1
    assert run_cli(bot_connection.slug, env=bot_env).returncode == 0

    result = run_cli(bot_connection.slug, env=bot_env)

    assert result.returncode == 21
    assert result.stderr.startswith("controlroom-token: rate_limited (HTTP 429): This key may ask for 1 tokens")
    assert " Retry after " in result.stderr


def test_missing_settings_and_no_answer_have_their_own_codes(bot):
    missing = run_cli("any", env=cli_env())
    unreachable = run_cli(
        "any", env=cli_env(CONTROLROOM_URL=f"http://127.0.0.1:{closed_port()}", CONTROLROOM_KEY=bot.raw_key)
    )

    assert (missing.returncode, missing.stdout) == (3, "")
    assert "No Control Room URL: pass url=... or set CONTROLROOM_URL" in missing.stderr
    assert (unreachable.returncode, unreachable.stdout) == (4, "")
    assert unreachable.stderr.startswith(
        "controlroom-token: unreachable: Cannot reach Control Room at http://127.0.0.1:"
    )
    assert bot.raw_key not in unreachable.stderr


def test_usage(bot_env):
    help_text = run_cli("--help", env=bot_env)
    wrong = run_cli("slug", "--min-validity", "soon", env=bot_env)
    negative = run_cli("slug", "--min-validity", "-5", env=bot_env)
    version = run_cli("--version", env=bot_env)

    assert help_text.returncode == 0
    assert "CONTROLROOM_URL" in help_text.stdout and "CONTROLROOM_KEY" in help_text.stdout
    assert "   13  not_found" in help_text.stdout and "   22  provider_unavailable" in help_text.stdout
    assert wrong.returncode == 2
    assert "--min-validity: must be whole seconds, 0 or more, not 'soon'" in wrong.stderr
    assert negative.returncode == 2
    assert "--min-validity: must be whole seconds, 0 or more, not '-5'" in negative.stderr
    assert version.stdout == f"controlroom-token {__version__}\n"
