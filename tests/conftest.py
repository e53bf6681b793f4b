"""Shared fixtures: the loopback authorization server and factories for providers, connections and users."""

import itertools
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import redis
from django.conf import settings
from django.contrib.auth.models import Group, Permission, User
from django.core.cache import cache
from django.test import Client

from connections import audit_queue, refresh, token_cache
from connections.models import Connection, OAuthToken
from providers.models import Provider
from tests.support.authserver import AuthServer

_counter = itertools.count(1)
PROVIDER_USER = ("alice", "alice-provider-password")


@pytest.fixture(autouse=True)
def fresh_token_cache() -> Iterator[None]:
    """Cached answers, counters (rates, failed authentications) and queued audit events outlive a test's
    rolled-back database: none may reach the next."""
    cache.clear()
    token_cache.reset()
    yield
    token_cache.reset()
    if token_cache.enabled():
        redis.Redis.from_url(settings.REDIS_URL).delete(audit_queue.key())


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


@pytest.fixture
def make_connection(db, authserver: AuthServer, settings):
    """A connection of the Custom provider type pointing at the loopback server, registered there."""

    def make(
        *,
        grant_type: str = "authorization_code",
        token_type: str = "shared",  # noqa: S107 - shared or user_specific, not a secret
        pkce_required: bool = False,
        scopes: str = "read,write",
        register: bool = True,
        **fields: object,
    ) -> Connection:
        number = next(_counter)
        client_id = f"client-{number}"
        client_secret = f"client-secret-{number}-s3cr3t"
        if register:
            authserver.create_client(
                client_id,
                client_secret,
                [settings.OAUTH_REDIRECT_URI],
                grant_type="client-credentials" if grant_type == "client_credentials" else "authorization-code",
                pkce_required=pkce_required,
            )
        values = {
            "name": f"Loopback {number}",
            "slug": f"loopback-{number}",
            "provider": Provider.objects.get(slug="custom"),
            "grant_type": grant_type,
            "token_type": token_type,
            "client_id": client_id,
            "client_secret": client_secret,
            "authorization_url": authserver.authorize_url,
            "token_url": authserver.token_url,
            "revocation_url": authserver.revoke_url,
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


def connect(client: Client, connection: Connection, authserver: AuthServer, *, approve: bool = True) -> str:
    """Drive Connect through the real server: returns the callback path+query the provider redirected to."""
    response = client.post(f"/oauth/connect/{connection.slug}/")
    assert response.status_code == 302, response
    location = authserver.authorize_with_requests(response["Location"], *PROVIDER_USER, approve=approve)
    parts = urlsplit(location)
    return f"{parts.path}?{parts.query}"


def shared_token(connection: Connection) -> OAuthToken | None:
    return OAuthToken.objects.filter(connection=connection, user__isnull=True).first()


def refresh_shared_token(connection: Connection) -> OAuthToken:
    """Refresh the shared token now, as Refresh now or a worker would."""
    return refresh.token_refresh(token=shared_token(connection), actor_label="test")


def get_token(raw_key: str | None, slug: str, **params: str):
    headers = {"HTTP_AUTHORIZATION": f"Bearer {raw_key}"} if raw_key else {}
    return Client().get(f"/api/v1/connections/{slug}/token", params, **headers)


def wait_for(condition, seconds: float, what: str):
    """Poll `condition` until it returns something true (returned), or fail after `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(0.02)
    raise AssertionError(f"waited {seconds} s for {what}")
