"""Fixtures of the refresh engine tests; the machinery is in tests/refresh/stack.py."""

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from django.contrib.auth.models import User

from connections import token_cache
from tests.conftest import connect
from tests.refresh.stack import ProcessGroups, Stack, database_url_for_processes, redis_database
from tests.support.bots import Bot, make_bot


@pytest.fixture
def make_stack(transactional_db, tmp_path: Path, settings) -> Iterator[Callable[..., Stack]]:
    """make_stack(redis_db=N, BEAT_INTERVAL=2, OUTBOUND_TIMEOUT=3, ...) -> Stack.

    The keyword settings go to every process's environment and to this test process's Django settings alike
    (the test client's token endpoint must behave as the web processes do). Emails of both land as files in
    stack.mail_dir.
    """
    stacks: list[Stack] = []

    def make(*, redis_db: int, **overrides: float | int | str) -> Stack:
        broker_url = redis_database(redis_db)
        redis.Redis.from_url(broker_url).flushdb()
        mail_dir = tmp_path / "mail"
        mail_dir.mkdir(exist_ok=True)
        var_dir = tmp_path / "var"
        var_dir.mkdir(exist_ok=True)
        env = {
            **os.environ,
            "ENV_FILE": "",
            "DJANGO_SETTINGS_MODULE": "controlroom.settings",
            "DEBUG": "true",  # loopback http provider URLs are allowed only with DEBUG (or an explicit list)
            "VAR_DIR": str(var_dir),
            "DATABASE_URL": database_url_for_processes(),
            "REDIS_URL": broker_url,
            "CELERY_BROKER_URL": broker_url,
            "EMAIL_URL": f"filemail:///{mail_dir}",
            "LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
        }
        for name, value in overrides.items():
            env[name] = str(value)
            setattr(settings, name, value)
        # This process's Redis too: what a test changes here must reach the web processes' token cache.
        settings.REDIS_URL = broker_url
        settings.CACHES = {"default": {**settings.CACHES["default"], "LOCATION": broker_url}}
        token_cache.reset()
        settings.EMAIL_BACKEND = "django.core.mail.backends.filebased.EmailBackend"
        settings.EMAIL_FILE_PATH = str(mail_dir)
        stack = Stack(
            processes=ProcessGroups(log_dir=tmp_path), env=env, tmp=tmp_path, mail_dir=mail_dir, broker_url=broker_url
        )
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        stack.processes.stop_all()
        redis.Redis.from_url(stack.broker_url).flushdb()


@pytest.fixture
def bot(transactional_db) -> Bot:
    return make_bot("refresh-bot", "Refresh bots", "refresh tests")


@pytest.fixture
def notified_manager(transactional_db) -> User:
    """Notifications go to managers with an email address; a superuser is one."""
    return User.objects.create_superuser("ops", "ops@example.com", "pw")


@pytest.fixture
def connected(make_connection, manager_client, authserver, bot):
    """A shared authorization-code connection, authorized at the loopback server, the bot's role invited."""
    connection = make_connection()
    manager_client.get(connect(manager_client, connection, authserver))
    bot.invite(connection)
    return connection
