"""The client really installs: pip builds it from client/ offline, with the test virtualenv's setuptools and
wheel, and the installed package and its controlroom-token command work from where they were put."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.client.test_cli import cli_env
from tests.conftest import shared_token

pytestmark = pytest.mark.django_db(transaction=True)

CLIENT_DIR = Path(__file__).resolve().parents[2] / "client"
PROBE = (
    "import importlib.metadata as m, controlroom_client as c; "
    "print(c.__file__); print(m.version('controlroom-client')); print(m.requires('controlroom-client'))"
)


def pip_install(source: Path, target: Path) -> subprocess.CompletedProcess[str]:
    """pip install, offline, with what the virtualenv has: no index, no build isolation."""
    options = ["--isolated", "--no-index", "--no-deps", "--no-build-isolation", "--disable-pip-version-check"]
    return subprocess.run(
        [sys.executable, "-m", "pip", "install", *options, "--target", str(target), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def run(command: list[str], *, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False)


def test_pip_installs_the_client_and_its_command_works(tmp_path, live_server, bot, bot_connection):
    # given a copy of client/ (pip builds in the source tree: the checkout stays clean)
    source = tmp_path / "source"
    shutil.copytree(CLIENT_DIR, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = tmp_path / "installed"

    # when pip installs it
    install = pip_install(source, target)
    assert install.returncode == 0, install.stdout + install.stderr

    # then the package and its metadata are there, and import from there alone (not from client/src)
    env = cli_env(PYTHONPATH=str(target), CONTROLROOM_URL=live_server.url, CONTROLROOM_KEY=bot.raw_key)
    probe = run([sys.executable, "-c", PROBE], cwd=tmp_path, env=env)
    assert probe.returncode == 0, probe.stderr
    module_file, version, requires = probe.stdout.splitlines()
    assert Path(module_file).is_relative_to(target)
    assert version == "0.1.0"
    assert requires == "['requests>=2.25']"
    assert (target / "controlroom_client" / "py.typed").exists()

    # and its command prints the connection's token
    command = run([str(target / "bin" / "controlroom-token"), bot_connection.slug], cwd=tmp_path, env=env)
    assert command.returncode == 0, command.stderr
    assert command.stdout == shared_token(bot_connection).access_token + "\n"
