"""The Dockerfile, docker-compose.yml and docs/operations.md's Production section agree with each other and with the
project.

No container engine runs here, so the files are read: every command they run is parsed by the program that would
run it (manage.py's own parsers, gunicorn's, Celery's CLI), and every environment variable they set is one that
controlroom/settings.py or a management command reads and that .env.example lists.
"""

import importlib
import json
import re
import runpy
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml
from django.conf import settings
from django.core.management import get_commands, load_command_class
from django.core.management.base import CommandError
from django.urls import resolve
from gunicorn.config import Config as GunicornConfig

ROOT = Path(__file__).resolve().parents[2]
SERVICES = {"postgres", "redis", "migrate", "web", "worker", "beat"}
APP_SERVICES = {"migrate", "web", "worker", "beat"}  # built from the Dockerfile
# Variables of the Python interpreter and of pip, documented by them; every other one must be Control Room's.
TOOL_VARIABLE = re.compile(r"(PYTHON|PIP_)[A-Z0-9_]*")
# How settings.py and the management commands read the environment: env.str("NAME", ...), _number("NAME", ...),
# os.environ.get("NAME", ...).
READ_VARIABLE = re.compile(r'(?:\benv(?:\.\w+)?|\bnumber|os\.environ\.get|os\.getenv)\(\s*"([A-Z][A-Z0-9_]*)"')
ASSIGNMENT = re.compile(r"[A-Z_][A-Z0-9_]*=.*")
# The base image's programs the Dockerfile uses (pip's arguments: test_the_image_is_slim_python_311_non_root...).
SYSTEM_TOOLS = {"groupadd", "useradd", "mkdir", "chown", "pip"}
# Compose-only values (${...} in docker-compose.yml), not Control Room settings.
COMPOSE_VARIABLES = {"POSTGRES_PASSWORD", "CONTROLROOM_VERSION"}


# --- reading the files --------------------------------------------------------------------------------------------


@cache
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def services() -> dict[str, dict]:
    return compose()["services"]


@cache
def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions, pending = [], ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if not pending and line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        pending += line
        if pending.strip():
            keyword, _, arguments = pending.strip().partition(" ")
            instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    return instructions


def instruction(keyword: str) -> list[str]:
    return [arguments for name, arguments in dockerfile() if name == keyword]


def image_command() -> list[str]:
    (cmd,) = instruction("CMD")
    return json.loads(cmd)


def healthcheck_command() -> list[str]:
    (healthcheck,) = instruction("HEALTHCHECK")
    return json.loads(healthcheck.split(" CMD ", 1)[1])


def dockerfile_documented_commands() -> list[list[str]]:
    """The `docker run ... controlroom <command>` lines of the Dockerfile's header comment (empty: the CMD)."""
    commands = []
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("#") and "docker run" in line:
            words = shlex.split(line[1:], comments=True)
            commands.append(words[words.index("controlroom") + 1 :] or image_command())
    return commands


def run_lines() -> list[list[str]]:
    """Each `a && b` part of every RUN instruction, as words."""
    return [shlex.split(part) for run in instruction("RUN") for part in run.split("&&")]


def service_command(name: str) -> list[str]:
    command = services()[name].get("command")
    return shlex.split(command) if isinstance(command, str) else list(command)


def service_environment(name: str) -> dict[str, str]:
    environment = services()[name].get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    return environment


OPERATIONS_PAGE = ROOT / "docs" / "operations.md"


@cache
def production_section() -> str:
    text = OPERATIONS_PAGE.read_text()
    start = text.index("\n## Production\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


@cache
def variables_read() -> set[str]:
    sources = [ROOT / "controlroom" / "settings.py", *ROOT.glob("*/management/commands/*.py")]
    return {name for source in sources for name in READ_VARIABLE.findall(source.read_text())}


@cache
def variables_listed() -> set[str]:
    return set(re.findall(r"^#? ?([A-Z][A-Z0-9_]*)=", (ROOT / ".env.example").read_text(), re.MULTILINE))


# --- checking a command the way its program would ----------------------------------------------------------------


def check_command(argv: list[str]) -> None:
    """Fails unless `argv` is a command of this project its program accepts."""
    if argv[:2] == ["sh", "-c"]:
        for part in argv[2].split("&&"):
            check_command(shlex.split(part))
        return
    while argv and ASSIGNMENT.fullmatch(argv[0]):  # NAME=value before the command
        argv = argv[1:]
    program, *arguments = argv
    if program == "python" and arguments[:1] == ["manage.py"]:
        check_manage(arguments[1:])
    elif program == "python" and arguments[:1] == ["-c"]:
        compile(arguments[1], "<python -c>", "exec")
    elif program == "gunicorn":
        check_gunicorn(arguments)
    elif program == "celery":
        check_celery(arguments)
    elif program not in SYSTEM_TOOLS:
        pytest.fail(f"unexpected program {program!r} in {argv}")


def check_manage(arguments: list[str]) -> None:
    name, *options = arguments
    commands = get_commands()
    assert name in commands, f"manage.py has no command {name!r}"
    parser = load_command_class(commands[name], name).create_parser("manage.py", name)
    try:
        parser.parse_args(options)
    except CommandError as exc:
        pytest.fail(f"manage.py {name} {' '.join(options)}: {exc}")


def gunicorn_settings() -> GunicornConfig:
    """gunicorn.conf.py as gunicorn reads it: an unknown or misspelt setting fails here."""
    config = GunicornConfig()
    for name, value in runpy.run_path(str(ROOT / "gunicorn.conf.py")).items():
        if not name.startswith("__"):
            assert name in config.settings, f"gunicorn.conf.py: gunicorn has no setting {name!r}"
            config.set(name, value)
    return config


def check_gunicorn(arguments: list[str]) -> None:
    assert arguments == ["--config", "gunicorn.conf.py"], f"gunicorn's settings belong in gunicorn.conf.py: {arguments}"
    module, attribute = gunicorn_settings().wsgi_app.split(":")
    assert callable(getattr(importlib.import_module(module), attribute, None)), module


def check_celery(arguments: list[str]) -> None:
    # Click stops at --help only after it has parsed the rest: an unknown app, command or option fails here.
    done = subprocess.run(
        [sys.executable, "-m", "celery", *arguments, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"celery {' '.join(arguments)}: {done.stderr[-2000:]}"


# --- tests ----------------------------------------------------------------------------------------------------


def test_compose_runs_postgres_redis_migrate_web_workers_and_two_beats():
    assert set(services()) == SERVICES
    for name in APP_SERVICES:
        assert services()[name]["build"] == ".", name
        assert services()[name]["image"] == services()["web"]["image"], f"{name}: one image for all"
    assert service_command("web") == image_command(), "compose's web runs the image's CMD"
    runs = {name: service_command(name) for name in APP_SERVICES}
    assert [name for name, argv in runs.items() if argv[:1] == ["gunicorn"]] == ["web"]
    assert [name for name, argv in runs.items() if argv[:4] == ["celery", "--app", "controlroom", "worker"]] == [
        "worker"
    ]
    assert [name for name, argv in runs.items() if argv[:4] == ["celery", "--app", "controlroom", "beat"]] == ["beat"]
    # workers scale (--scale worker=N needs no fixed name or host port); two beats, each job once per period
    assert not {"container_name", "ports"} & set(services()["worker"])
    assert services()["worker"].get("deploy", {}).get("replicas", 1) >= 1
    assert services()["beat"]["deploy"]["replicas"] == 2
    assert not {"container_name", "ports"} & set(services()["beat"])
    # web, worker and beat wait for the migrations, which wait for healthy servers
    for name in ("web", "worker", "beat"):
        assert services()[name]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}, name
    for name in ("migrate", "web", "worker", "beat"):
        for server in ("postgres", "redis"):
            assert services()[name]["depends_on"][server] == {"condition": "service_healthy"}, name
    assert services()["migrate"]["restart"] == "no"  # a one-off: runs at every `up`, then exits


def test_every_command_of_the_image_and_compose_exists_in_the_project():
    commands = [image_command(), healthcheck_command(), *run_lines(), *dockerfile_documented_commands()]
    commands += [service_command(name) for name in APP_SERVICES]
    assert len(commands) >= 10
    for argv in commands:
        check_command(argv)
    migrate = service_command("migrate")[2]
    assert "python manage.py migrate --no-input" in migrate
    assert "python manage.py ensure_admin" in migrate


def test_every_environment_variable_set_is_read_by_the_project_and_listed_in_env_example():
    set_by_image = {pair.split("=", 1)[0] for env in instruction("ENV") for pair in shlex.split(env)}
    set_by_image |= {word.split("=", 1)[0] for words in run_lines() for word in words if ASSIGNMENT.fullmatch(word)}
    set_by_compose = {name for service in APP_SERVICES for name in service_environment(service)}
    assert set_by_image >= {"VAR_DIR", "DEBUG", "SECRET_KEY", "CRYPTOGRAPHY_KEY", "ENV_FILE"}
    assert set_by_compose == {"DATABASE_URL", "REDIS_URL", "DATABASE_LOCK_TIMEOUT", "DATABASE_STATEMENT_TIMEOUT"}
    for name in sorted(set_by_image | set_by_compose):
        if TOOL_VARIABLE.fullmatch(name):
            continue
        assert name in variables_read(), f"{name} is set but neither settings.py nor a management command reads it"
        assert name in variables_listed(), f"{name} is set but .env.example does not list it"
    # Compose's own ${...} values are the ones docs/operations.md explains.
    interpolated = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", (ROOT / "docker-compose.yml").read_text()))
    assert interpolated == COMPOSE_VARIABLES
    # The container settings point at the compose services.
    environment = service_environment("web")
    assert re.fullmatch(r"postgres://controlroom:\$\{POSTGRES_PASSWORD:\?[^}]*\}@postgres:5432/controlroom",
                        environment["DATABASE_URL"])  # fmt: skip
    assert environment["REDIS_URL"] == "redis://redis:6379/0"
    for name in APP_SERVICES:
        assert services()[name]["env_file"] == ".env", name


def test_the_container_health_check_asks_livez_on_the_port_gunicorn_binds():
    (expose,) = instruction("EXPOSE")
    assert gunicorn_settings().bind == [f"0.0.0.0:{expose}"]
    check = " ".join(healthcheck_command())
    assert f"http://127.0.0.1:{expose}/livez" in check  # not /healthz: beat down is no reason to restart web
    assert resolve("/livez").func.__name__ == "livez" and resolve("/readyz").func.__name__ == "readyz"
    # web inherits the image's check; containers that serve no HTTP turn it off
    assert "healthcheck" not in services()["web"]
    for name in ("migrate", "worker", "beat"):
        assert services()[name]["healthcheck"] == {"disable": True}, name
    for name in ("postgres", "redis"):
        assert services()[name]["healthcheck"]["test"][0] == "CMD", name


def test_compose_publishes_web_on_loopback_and_stops_it_gracefully():
    (expose,) = instruction("EXPOSE")
    # Only the TLS proxy on the host reaches web: not another machine, around the proxy and its headers.
    assert services()["web"]["ports"] == [f"127.0.0.1:{expose}:{expose}"]
    # A stop lets gunicorn finish its requests and report its answers before Docker kills it.
    assert _seconds(services()["web"]["stop_grace_period"]) > gunicorn_settings().graceful_timeout
    assert gunicorn_settings().max_requests > 0 and gunicorn_settings().timeout >= 60


def test_redis_persists_to_a_volume_and_refuses_writes_rather_than_evicting():
    command = service_command("redis")
    options = dict(zip(command[1::2], command[2::2], strict=True))
    assert options == {
        "--appendonly": "yes",
        "--appendfsync": "everysec",
        "--maxmemory": options["--maxmemory"],
        "--maxmemory-policy": "noeviction",
    }
    assert services()["redis"]["volumes"] == ["redis-data:/data"] and "redis-data" in compose()["volumes"]


def test_every_service_has_rotated_logs_and_resource_limits():
    for name, service in services().items():
        logging = service["logging"]
        assert logging["driver"] == "json-file" and logging["options"]["max-size"], name
        limits = service["deploy"]["resources"]["limits"]
        assert limits["cpus"] and limits["memory"], name


def _seconds(duration: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([sm])", duration).groups()
    return int(number) * (60 if unit == "m" else 1)


def test_the_image_is_slim_python_311_non_root_pinned_with_static_files():
    (base,) = instruction("FROM")
    assert base.startswith("python:3.11-slim")
    (user,) = instruction("USER")
    assert user.split(":")[0] not in ("root", "0")
    assert ["pip", "install", "--no-cache-dir", "--require-hashes", "-r", "requirements.lock"] in run_lines()
    collectstatic = ["python", "manage.py", "collectstatic"]
    assert any(words[i : i + 3] == collectstatic for words in run_lines() for i in range(len(words)))
    assert "whitenoise.middleware.WhiteNoiseMiddleware" in settings.MIDDLEWARE


def test_requirements_are_pinned():
    lines = [line.split("#")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    requirements = [line for line in lines if line]
    assert requirements
    for requirement in requirements:
        assert re.fullmatch(r"[A-Za-z0-9_.\[\]-]+==[A-Za-z0-9.]+", requirement), requirement
    names = {requirement.split("==")[0].split("[")[0].lower() for requirement in requirements}
    assert {"gunicorn", "whitenoise", "celery", "redis", "psycopg"} <= names


def _pins(path: Path) -> dict[str, str]:
    """name -> version of each `name==version` line of a requirements or lock file (-r files followed)."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip().rstrip("\\").strip()
        if line.startswith("-r "):
            pins |= _pins(path.parent / line[3:].strip())
        elif "==" in line:
            name, version = line.split("==")
            pins[name.split("[")[0].lower().replace("_", "-")] = version.strip()
    return pins


@pytest.mark.parametrize("name", ["requirements", "requirements-test"])
def test_the_lock_file_agrees_with_the_requirements_and_pins_everything_with_hashes(name):
    direct, locked = _pins(ROOT / f"{name}.txt"), _pins(ROOT / f"{name}.lock")
    disagree = {
        package: (version, locked.get(package)) for package, version in direct.items() if locked.get(package) != version
    }
    assert not disagree, f"run `make lock`: {disagree}"
    entries: list[list[str]] = []  # each pinned package with the lines that follow it
    for line in (ROOT / f"{name}.lock").read_text().splitlines():
        if re.match(r"[A-Za-z0-9]", line):
            entries.append([line])
        elif entries:
            entries[-1].append(line)
    assert len(entries) == len(locked) > len(direct)
    for entry in entries:
        assert any("--hash=sha256:" in line for line in entry), entry[0]
    lock = (ROOT / f"{name}.lock").read_text()
    for address in ("--find-links", "--index-url", "--extra-index-url", "://"):
        assert address not in lock  # nothing of the machine or the package index it was made with
    # and every install uses it: make (hence .ci/run) and the image
    makefile = (ROOT / "Makefile").read_text()
    assert f"--require-hashes -r {name}.lock" in makefile


def test_make_lock_leaves_the_package_index_to_pips_own_configuration():
    """No index in the lock target (a mirror set in pip.conf or PIP_INDEX_URL must work), nor in the lock files."""
    makefile = (ROOT / "Makefile").read_text()
    target = makefile.split("\nlock:\n", 1)[1].split("\n\n", 1)[0]
    assert "pip-compile" in target and 'CUSTOM_COMPILE_COMMAND="make lock"' in target
    assert "--no-emit-index-url --no-emit-find-links" in target
    for option in ("--isolated", "--index-url", "--extra-index-url", "--find-links", "--pip-args", "://"):
        assert option not in target
    for name in ("requirements", "requirements-test"):
        assert "#    make lock\n" in (ROOT / f"{name}.lock").read_text()


def test_the_build_context_leaves_out_secrets_and_local_state():
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".env", ".git", ".venv", "var", "tests"} <= ignored
    assert "!.env.example" in ignored


def test_the_production_section_section_matches_compose():
    section = production_section()
    page = OPERATIONS_PAGE.read_text()
    assert page.index("\n## Production\n") < page.index("\n### Upgrading\n")
    spans = re.findall(r"`([^`]+)`", section)
    for name in SERVICES:
        assert f"`{name}`" in section, f"the Production section does not mention the {name} service"
    # the command each service runs, as the page shows it, is what compose runs
    for name in APP_SERVICES:
        argv = service_command(name)
        runs = argv[2] if argv[:2] == ["sh", "-c"] else " ".join(argv)
        assert any(runs.startswith(span) and len(span) > 20 for span in spans), (
            f"{name}: {runs!r} not in docs/operations.md"
        )
    # every variable it names exists; the important ones are there
    variable = r"[A-Z][A-Z0-9]*_[A-Z0-9_]+|DEBUG"  # not values such as `INFO`
    named = {span for span in spans if re.fullmatch(variable, span)}
    named |= {span.split("=")[0] for span in spans if re.fullmatch(f"({variable})=.*", span)}
    assert named - COMPOSE_VARIABLES <= variables_listed(), named - COMPOSE_VARIABLES - variables_listed()
    important = {"SECRET_KEY", "CRYPTOGRAPHY_KEY", "CRYPTOGRAPHY_KEY_PREVIOUS", "PUBLIC_URL", "POSTGRES_PASSWORD"}
    assert important | {"DATABASE_URL", "REDIS_URL", "TRUST_X_FORWARDED_PROTO", "BEAT_INTERVAL"} <= named
    # every manage.py command it gives exists
    for command in re.findall(r"manage\.py (\w+)", section):
        assert command in get_commands(), command
    topics = ("--scale worker=", "rotate_encryption_key", "pg_dump", "While every beat is down", "Running two beats")
    for topic in topics:
        assert topic in section, topic
