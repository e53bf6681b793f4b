"""Data for the token endpoint benchmark: `python -m bench.seed` with the benchmark's environment.

Prints one JSON line: the connection slug, the raw bot key (shown once, as `manage.py botkey create` does)
and the access token the endpoint must answer with. With BENCH_PAIRS=N in the environment (bench/token_pairs.py)
also at least N (key, connection) pairs: up to PAIR_KEYS bots in one role invited to as many connections as N
needs, each with its own token; their keys, slugs and tokens under "pairs".
"""

import json
import math
import os
import secrets

import django

django.setup()

from django.contrib.auth.models import Group, Permission, User  # noqa: E402
from django.db import transaction  # noqa: E402

from connections.endpoint.bot_keys import bot_key_create  # noqa: E402
from connections.engine.store import token_store  # noqa: E402
from connections.models import Connection, TokenType  # noqa: E402
from connections.oauth.client import TokenResponse  # noqa: E402
from providers.models import GrantType, Provider  # noqa: E402
from providers.services import provider_catalog_sync  # noqa: E402

# Neighbours, so the lookups run against tables holding more than the one row they want.
OTHER_CONNECTIONS = 30
OTHER_BOTS = 50
THIRTY_DAYS = 30 * 24 * 3600  # far beyond the run: the endpoint must never refresh while it is measured
PAIR_KEYS = 100  # the bots of the pairs; the connections are as many as the pairs need


def _connection(name: str, provider: Provider, role: Group) -> Connection:
    connection = Connection.objects.create(
        name=name,
        slug=name.lower().replace(" ", "-"),
        provider=provider,
        placeholders={"yourinstance": "acme"},
        grant_type=GrantType.AUTHORIZATION_CODE_PKCE,
        token_type=TokenType.SHARED,
        client_id="3MVG9" + secrets.token_urlsafe(60),
        client_secret=secrets.token_urlsafe(48),
    )
    connection.roles.add(role)
    return connection


def _token(connection: Connection) -> str:
    # Salesforce-sized tokens and the non-secret extras its token response carries.
    access_token = "00D" + secrets.token_urlsafe(84)
    response = TokenResponse(
        access_token=access_token,
        refresh_token=secrets.token_urlsafe(64),
        id_token="",
        token_type="Bearer",  # noqa: S106 - the token scheme, not a secret
        scope="api refresh_token offline_access",
        expires_in=THIRTY_DAYS,
        extra={"instance_url": "https://acme.my.salesforce.com", "id": "https://login.salesforce.com/id/00D/005"},
    )
    token_store(connection=connection, user=None, response=response)
    return access_token


def _bot(username: str, role: Group) -> tuple[User, str]:
    user = User.objects.create_user(username=username, email=f"{username}@example.com")
    user.groups.add(role)
    _, raw_key = bot_key_create(user=user, name=f"{username} runner", expires_days=365)
    return user, raw_key


def _pairs(count: int, provider: Provider, view: Permission) -> dict[str, list[str]]:
    role = Group.objects.create(name="Pair bots")
    role.permissions.add(view)
    keys = [_bot(f"pair-bot-{number}", role)[1] for number in range(min(PAIR_KEYS, count))]
    connections = [_connection(f"Pair org {number}", provider, role) for number in range(math.ceil(count / len(keys)))]
    tokens = [_token(connection) for connection in connections]
    return {"keys": keys, "slugs": [connection.slug for connection in connections], "tokens": tokens}


def main() -> None:
    provider_catalog_sync()
    salesforce = Provider.objects.get(slug="salesforce")
    view = Permission.objects.get(codename="view_connections")
    with transaction.atomic():
        for number in range(OTHER_CONNECTIONS):
            role = Group.objects.create(name=f"Team {number} bots")
            role.permissions.add(view)
            _token(_connection(f"Other org {number}", salesforce, role))
            for bot in range(OTHER_BOTS // OTHER_CONNECTIONS + 1):
                _bot(f"team-{number}-bot-{bot}", role)
        role = Group.objects.create(name="Finance bots")
        role.permissions.add(view)
        connection = _connection("Salesforce prod", salesforce, role)
        access_token = _token(connection)
        _, raw_key = _bot("finance-bot", role)
        pairs = int(os.environ.get("BENCH_PAIRS") or 0)
        seeded = {"slug": connection.slug, "key": raw_key, "access_token": access_token}
        if pairs:
            seeded["pairs"] = _pairs(pairs, salesforce, view)
    print(json.dumps(seeded))


if __name__ == "__main__":
    main()
