"""Shared fixtures and helpers: the loopback authorization server; factories for connections, users and bots;
a connection authorized (and connected to a bot); Connect driven through the real server; the token endpoint."""

import itertools
import os
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis
from django.contrib.auth.models import Group, Permission, User
from django.contrib.messages import get_messages
from django.core.cache import cache
from django.db import connection
from django.test import Client
from django.utils import timezone

from connections.cache import token_cache
from connections.engine import refresh
from connections.models import AuditEvent, BotKey, Connection, OAuthToken
from providers.models import Provider
from tests.support.authserver import AuthServer
from tests.support.bots import Bot, make_bot
from tests.support.processes import Processes
from tests.support.stack import RedisDatabases, Stack, database_url_for_processes, redis_database
from tests.support.waiting import wait_for

_counter = itertools.count(1)
PROCESS_FIXTURES = {"make_stack", "processes"}  # tests that start server processes of their own


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Under pytest-xdist (--dist loadgroup) they run one after another on one worker, so that the CPU one of them
    # needs is not taken by another; everything else runs on the other worker meanwhile.
    for item in items:
        if PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.xdist_group("processes"))


PROVIDER_USER = ("alice", "alice-provider-password")


@pytest.fixture(autouse=True)
def fresh_token_cache(monkeypatch) -> Iterator[None]:
    """Cached answers, counters (rates, failed authentications) and unreported audit events outlive a test's
    rolled-back database: none may reach the next. And no report thread in the test process: its own database
    connection would not see what the test's transaction holds, so it would find every token gone. Reports run
    in the request that needs one (token_cache.use) or where the test calls token_cache.report(); the thread
    itself runs in the web processes of tests/connections/cache/test_across_web_processes.py."""
    cache.clear()
    token_cache.reset()
    monkeypatch.setattr(token_cache._Process, "start_reporting", lambda self: None)
    yield
    token_cache.reset()


@pytest.fixture
def one_rate_window(time_machine) -> None:
    """The wall clock moved on to the start of the next minute, and running: per-minute rate counters
    (connections.endpoint.issuing) do not roll over in the middle of a test that counts requests. Forward, not back:
    what the test wrote before is not in the future."""
    next_minute = timezone.now().replace(second=0, microsecond=0) + timedelta(minutes=1)
    time_machine.move_to(next_minute, tick=True)


@pytest.fixture(scope="session")
def authserver_process() -> Iterator[AuthServer]:
    server = AuthServer().start()
    server.create_user(*PROVIDER_USER)
    yield server
    server.stop()


@pytest.fixture
def authserver(authserver_process: AuthServer) -> AuthServer:
    """The real OAuth 2.0 server on loopback, with faults, options and counters reset for each test."""
    authserver_process.reset()
    return authserver_process


@pytest.fixture(scope="session")
def short_lived_authserver() -> Iterator[Callable[[int], AuthServer]]:
    """short_lived_authserver(seconds) -> a loopback authorization server, like `authserver`, whose access tokens
    live `seconds` instead of an hour, with the provider user. One server per lifetime for the whole run (started
    on first use), its faults, options and counters reset each time it is handed out."""
    servers: dict[int, AuthServer] = {}

    def short_lived(seconds: int) -> AuthServer:
        if seconds not in servers:
            servers[seconds] = AuthServer(access_token_lifetime=seconds).start()
            servers[seconds].create_user(*PROVIDER_USER)
        servers[seconds].reset()
        return servers[seconds]

    yield short_lived
    for server in servers.values():
        server.stop()


@pytest.fixture(scope="session")
def redis_databases() -> RedisDatabases:
    """The Redis database numbers of this test run's process stacks, handed out one per stack."""
    return RedisDatabases()


@pytest.fixture
def make_stack(
    transactional_db, tmp_path: Path, settings, redis_databases: RedisDatabases
) -> Iterator[Callable[..., Stack]]:
    """make_stack(BEAT_INTERVAL=2, OUTBOUND_TIMEOUT=3, ...) -> Stack: real web, worker and beat processes
    (tests/support/stack.py), on a Redis database no other stack uses.

    The keyword settings go to every process's environment and to this test process's Django settings alike
    (the test client's token endpoint must behave as the web processes do). Emails of both land as files in
    stack.mail_dir.
    """
    stacks: list[tuple[Stack, int]] = []
    sessions_before = database_sessions()

    def make(**overrides: float | int | str) -> Stack:
        redis_db = redis_databases.take()
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
            processes=Processes(log_dir=tmp_path), env=env, tmp=tmp_path, mail_dir=mail_dir, broker_url=broker_url
        )
        stacks.append((stack, redis_db))
        return stack

    yield make
    for stack, redis_db in stacks:
        stack.processes.stop_all()
        redis.Redis.from_url(stack.broker_url).flushdb()
        redis_databases.give_back(redis_db)  # only now: nothing of this stack can reach the next one
    # PostgreSQL ends a dead process's sessions a moment after it died; the test database is dropped at the end
    # of the run only when no session is left on it.
    wait_for(lambda: database_sessions() <= sessions_before, 30, "the stopped processes' database sessions to end")


def database_sessions() -> int:
    """Sessions on the test database, this process's own included."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()")
        return cursor.fetchone()[0]


# The loopback server's name of a grant a client is registered for (its default: authorization-code).
SERVER_GRANTS = {"client_credentials": "client-credentials", "device_code": "device-code"}


@pytest.fixture
def make_connection(db, authserver: AuthServer, settings):
    """A connection of the Custom provider type pointing at the loopback server (or at `server`, another
    AuthServer), registered there."""

    def make(
        *,
        grant_type: str = "authorization_code",
        token_type: str = "shared",  # noqa: S107 - shared or user_specific, not a secret
        pkce_required: bool = False,
        scopes: str = "read,write",
        register: bool = True,
        server: AuthServer | None = None,
        public_key: str = "",
        key_id: str = "",
        **fields: object,
    ) -> Connection:
        server = server or authserver
        number = next(_counter)
        client_id = f"client-{number}"
        client_secret = f"client-secret-{number}-s3cr3t"
        if register:
            server.create_client(
                client_id,
                client_secret,
                [settings.OAUTH_REDIRECT_URI],
                grant_type=SERVER_GRANTS.get(grant_type, "authorization-code"),
                pkce_required=pkce_required,
                public_key=public_key,
                key_id=key_id,
            )
        values = {
            "name": f"Loopback {number}",
            "slug": f"loopback-{number}",
            "provider": Provider.objects.get(slug="custom"),
            "grant_type": grant_type,
            "token_type": token_type,
            "client_id": client_id,
            "client_secret": client_secret,
            "authorization_url": server.authorize_url,
            "token_url": server.token_url,
            "revocation_url": server.revoke_url,
            "device_authorization_url": server.device_authorization_url,
            "scopes": scopes,
            **fields,
        }
        return Connection.objects.create(**values)

    return make


@pytest.fixture
def make_user(db):
    def make(username: str | None = None, *, perms: tuple[str, ...] = (), roles: tuple[Group, ...] = (), staff=False):
        user = User.objects.create_user(username or f"user-{next(_counter)}", password="pw", is_staff=staff)
        for codename in perms:
            user.user_permissions.add(Permission.objects.get(codename=codename))
        user.groups.add(*roles)
        return user

    return make


@pytest.fixture
def manager(make_user) -> User:
    """A Control Room administrator: staff with Manage connections, not a superuser."""
    return make_user("manager", perms=("manage_connections",), staff=True)


@pytest.fixture
def manager_client(manager) -> Client:
    client = Client()
    client.force_login(manager)
    return client


@pytest.fixture
def bot(db) -> Bot:
    """A bot runner in a role, and its key."""
    return make_bot("finance-bot", "Finance bots", "finance runner")


@pytest.fixture
def authorized_connection(make_connection, manager_client, authserver) -> Connection:
    """A shared authorization-code connection, authorized at the loopback server (its token: shared_token())."""
    connection = make_connection()
    authorize_and_store_token(manager_client, connection, authserver)
    return connection


@pytest.fixture
def bot_connection(make_connection, manager_client, authserver, bot) -> Connection:
    """A shared authorization-code connection, authorized, and invited to the bot's role. Its token answer
    carries an extra field, as Salesforce's carries instance_url."""
    connection = make_connection()
    authserver.set_token_extra({"instance_url": "https://acme.my.example"})
    authorize_and_store_token(manager_client, connection, authserver)
    authserver.set_token_extra({})
    bot.invite(connection)
    return connection


def callback_after_consent(
    client: Client, connection: Connection, authserver: AuthServer, *, approve: bool = True
) -> str:
    """Drive Connect through the real server: returns the callback path+query the provider redirected to."""
    response = client.post(f"/oauth/connect/{connection.slug}/")
    assert response.status_code == 302, response
    location = authserver.authorize_with_requests(response["Location"], *PROVIDER_USER, approve=approve)
    parts = urlsplit(location)
    return f"{parts.path}?{parts.query}"


def authorize_and_store_token(client: Client, connection: Connection, authserver: AuthServer) -> OAuthToken:
    """Connect through the real server and follow its callback; the token stored (the test fails if Connect did
    not work: a fixture that goes on without a token proves nothing)."""
    started = timezone.now()
    response = client.get(callback_after_consent(client, connection, authserver))
    assert response.status_code == 302, response
    owner = {"user__isnull": True} if connection.token_type == "shared" else {"user": response.wsgi_request.user}
    token = OAuthToken.objects.filter(connection=connection, authorized_at__gte=started, **owner).first()
    assert token is not None, f"Connect stored no token for {connection.slug}: {messages_of(response)}"
    return token


def stored_rows() -> dict[str, object]:
    """What a refused request must leave as it was: every connection, token and bot key row, and the audit log."""
    return {
        "connections": list(Connection.objects.order_by("pk").values()),
        "invited roles": list(Connection.roles.through.objects.order_by("pk").values_list("connection", "group")),
        "tokens": list(OAuthToken.objects.order_by("pk").values()),
        "bot keys": list(BotKey.objects.order_by("pk").values()),
        "audit events": AuditEvent.objects.count(),
    }


def messages_of(response) -> list[str]:
    """The Django messages a response added (admin notices, errors)."""
    return [str(message) for message in get_messages(response.wsgi_request)]


def shared_token(connection: Connection) -> OAuthToken | None:
    return OAuthToken.objects.filter(connection=connection, user__isnull=True).first()


def refresh_shared_token(connection: Connection) -> OAuthToken:
    """Refresh the shared token now, as Refresh now or a worker would."""
    return refresh.token_refresh(token=shared_token(connection), actor_label="test")


def get_token(raw_key: str | None, slug: str, **params: str):
    headers = {"HTTP_AUTHORIZATION": f"Bearer {raw_key}"} if raw_key else {}
    return Client().get(f"/api/v1/connections/{slug}/token", params, **headers)


@pytest.fixture
def celery_eager():
    """Tasks queued by this process run at once in it (Celery's eager mode; a retry runs again at once)."""
    from celery import current_app

    import connections.tasks  # noqa: F401 - registers the tasks, as a worker has them

    conf = current_app.conf
    before = conf.task_always_eager, conf.task_eager_propagates
    conf.task_always_eager, conf.task_eager_propagates = True, False
    yield
    conf.task_always_eager, conf.task_eager_propagates = before
