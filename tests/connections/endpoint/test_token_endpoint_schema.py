"""The live token endpoint against connections/openapi.yaml: generated requests, real view, real database.

Schemathesis generates requests from the spec; each one goes over HTTP to pytest-django's live server, so the
URL routing, the view, the ORM on PostgreSQL, the Redis cache and the loopback provider are all real. The bot
keys and the slugs are fixed for part of the cases, so the run reaches every answer, not only 401s.
"""

import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import hypothesis
import pytest
import schemathesis
from django.contrib.auth.models import Group
from django.core.cache import cache
from django.utils import timezone
from hypothesis import strategies as st
from schemathesis import GenerationMode, checks

import connections
from connections.cache import token_cache
from connections.endpoint.bot_keys import bot_key_create, bot_key_revoke
from connections.models import BotKey, Connection, OAuthToken, TokenState
from tests.conftest import authorize_and_store_token
from tests.support.processes import closed_port

pytestmark = pytest.mark.django_db(transaction=True)

SPEC = Path(connections.__file__).parent / "openapi.yaml"
TOKEN_PATH = "/api/v1/connections/{slug}/token"
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
    # Invalid input must get a 4xx; a 200 with a key must turn into a 401 without it (schemathesis re-sends).
    checks.negative_data_rejection,
    checks.ignored_auth,
]
# 503 is a documented answer (provider_unavailable, checked against the spec like the others); any other 5xx
# is a server error.
CONFIG = schemathesis.Config.from_dict(
    {"checks": {"not_a_server_error": {"expected-statuses": ["2xx", "3xx", "4xx", "503"]}}}
)
EVERY_STATUS = {200, 400, 401, 403, 404, 409, 424, 429, 503}


def _load_schema():
    return schemathesis.openapi.from_path(SPEC, config=CONFIG)


@dataclass
class World:
    """What the endpoint can answer about: keys, the slugs of connections in every state, and the secrets."""

    keys: dict[str, str]
    slugs: dict[str, str]
    connections: list[Connection]
    secrets: set[str] = field(default_factory=set)

    def current_secrets(self) -> set[str]:
        """Client secrets and bot keys, plus every refresh and ID token stored so far (refreshes rotate them)."""
        stored = OAuthToken.objects.filter(connection__in=self.connections).values_list("refresh_token", "id_token")
        self.secrets.update(value for pair in stored for value in pair if value)
        return self.secrets


LIMITED_MINUTES = 60


def closed_token_url() -> str:
    """A token URL where a connection is refused."""
    return f"http://127.0.0.1:{closed_port()}/o/token/"


@pytest.fixture
def world(make_connection, make_user, manager_client, authserver) -> World:
    role = Group.objects.create(name="Token bots")
    bot = make_user("token-bot", roles=(role,))

    def invited(**fields: object) -> Connection:
        connection = make_connection(**fields)
        connection.roles.add(role)
        return connection

    def connected() -> Connection:
        connection = invited()
        authorize_and_store_token(manager_client, connection, authserver)
        return connection

    by_state = {
        "ready": connected(),
        "backoff": connected(),
        "reauth": connected(),
        "pending": invited(),
        "mine": invited(token_type="user_specific"),  # the bot has not authorized its own token
        "down": invited(grant_type="client_credentials", register=False, token_url=closed_token_url()),
        "disabled": invited(is_enabled=False),
        "private": make_connection(),  # exists, but no role of the bot is invited
    }
    now = timezone.now()
    OAuthToken.objects.filter(connection=by_state["backoff"]).update(
        state=TokenState.REFRESH_FAILING,
        expires_at=now - timedelta(minutes=5),
        next_refresh_at=now + timedelta(hours=1),
        last_error="HTTP 502 from the provider",
    )
    OAuthToken.objects.filter(connection=by_state["reauth"]).update(
        state=TokenState.REAUTHORIZATION_REQUIRED, last_error="invalid_grant"
    )

    _, valid = bot_key_create(user=bot, name="valid")
    revoked_key, revoked = bot_key_create(user=bot, name="revoked")
    bot_key_revoke(key=revoked_key)
    expired_key, expired = bot_key_create(user=bot, name="expired", expires_days=1)
    BotKey.objects.filter(pk=expired_key.pk).update(expires_at=now - timedelta(seconds=1))
    gone = make_user("gone-bot", roles=(role,))
    _, inactive = bot_key_create(user=gone, name="inactive")
    gone.is_active = False
    gone.save(update_fields=["is_active"])
    limited_key, limited = bot_key_create(user=bot, name="limited")
    # The limiter counts per key and minute in the cache: fill this key's count for far longer than the test can
    # take, however slow the machine (it takes seconds).
    window = int(time.time() // 60)
    for minute in range(window, window + LIMITED_MINUTES):
        cache.set(token_cache.rate_counter(limited_key.key_id, minute), 10**9, timeout=(LIMITED_MINUTES + 1) * 60)

    world = World(
        keys={"valid": valid, "revoked": revoked, "expired": expired, "inactive": inactive, "limited": limited},
        slugs={name: connection.slug for name, connection in by_state.items()} | {"missing": "no-such-thing"},
        connections=list(by_state.values()),
    )
    world.secrets.update(connection.client_secret for connection in world.connections)
    world.secrets.update(world.keys.values())
    return world


def _case_strategies(world: World) -> list[st.SearchStrategy]:
    operation = _load_schema()[TOKEN_PATH]["GET"]

    def cases(mode: GenerationMode = GenerationMode.POSITIVE, *, key: str | None = None, slug: str | None = None):
        headers = {"Authorization": f"Bearer {world.keys[key]}"} if key else None
        path_parameters = {"slug": world.slugs[slug]} if slug else None
        return operation.as_strategy(mode, headers=headers, path_parameters=path_parameters)

    return [
        # Everything generated: keys that do not exist, any slug, any query.
        cases(),
        cases(GenerationMode.NEGATIVE),
        # The valid key: generated slugs and queries, then every connection state; the working one weighted up.
        cases(key="valid"),
        cases(GenerationMode.NEGATIVE, key="valid"),
        *[cases(key="valid", slug="ready")] * 4,
        *[cases(GenerationMode.NEGATIVE, key="valid", slug="ready")] * 2,
        *[cases(key="valid", slug=name) for name in world.slugs if name != "ready"],
        # Keys that must not work, on the working connection.
        *[cases(key=name, slug="ready") for name in world.keys if name != "valid"],
    ]


def test_live_token_endpoint_conforms_to_the_spec(world, live_server, settings):
    # given cases drawn from the spec, with the real keys and slugs fed into part of them; schemathesis sends
    # many without a key, each to be answered 401 (the per-address limit on those is tested in tests/connections)
    settings.TOKEN_AUTH_FAILURES_PER_MINUTE = 0
    strategy = st.sampled_from(_case_strategies(world)).flatmap(lambda cases: cases)
    statuses: Counter[int] = Counter()
    leaks: list[str] = []
    wrong_connection: list[str] = []

    @hypothesis.given(case=strategy)
    @hypothesis.settings(
        max_examples=200,
        deadline=None,
        derandomize=True,  # the same cases on every run: a CI gate, not a lottery
        database=None,
        suppress_health_check=[
            hypothesis.HealthCheck.too_slow,
            hypothesis.HealthCheck.filter_too_much,
            hypothesis.HealthCheck.data_too_large,
        ],
    )
    def call(case) -> None:
        answered(case)

    def answered(case) -> None:
        # when the live server answers (the checks raise on any mismatch with the spec)
        response = case.call_and_validate(base_url=live_server.url, checks=CHECKS)
        statuses[response.status_code] += 1
        # then no answer carries a secret, and a token is the one asked for
        leaks.extend(secret[:12] for secret in world.current_secrets() if secret in response.text)
        if response.status_code == 200 and response.json()["connection"] != case.path_parameters["slug"]:
            wrong_connection.append(case.path_parameters["slug"])

    call()
    # and each state of the world once by hand: what the draw reaches depends on more than its seed (other modules
    # loaded in the process change it), and every answer must be checked against the spec on every run
    operation = _load_schema()[TOKEN_PATH]["GET"]
    pairs = [("valid", slug) for slug in world.slugs] + [(key, "ready") for key in world.keys if key != "valid"]
    for key, slug in pairs:
        headers = {"Authorization": f"Bearer {world.keys[key]}"}
        answered(operation.Case(path_parameters={"slug": world.slugs[slug]}, headers=headers))

    assert not leaks, f"responses contained secrets starting with {sorted(set(leaks))}"
    assert not wrong_connection, wrong_connection
    assert EVERY_STATUS <= set(statuses), f"the run missed some answers: {dict(statuses)}"


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/livez"])
def test_live_health_endpoints_conform_to_the_spec(live_server, path):
    operation = _load_schema()[path]["GET"]
    response = operation.Case().call_and_validate(base_url=live_server.url, checks=CHECKS[:5])
    assert response.json()["status"] in {"ok", "error"}


@pytest.mark.parametrize(
    ("slug", "key"),
    [
        pytest.param("no\x00such", "valid", id="nul-in-slug-valid-key"),
        pytest.param("no\x00such", None, id="nul-in-slug-no-key"),
        pytest.param("ready", "crk_0123456789ab\x00_secret", id="nul-in-key"),
    ],
)
def test_nul_bytes_get_a_documented_answer(world, live_server, slug, key):
    # given a request the spec answers with 404 or 401
    operation = _load_schema()[TOKEN_PATH]["GET"]
    raw_key = world.keys["valid"] if key == "valid" else key
    case = operation.Case(
        path_parameters={"slug": world.slugs.get(slug, slug)},
        headers={"Authorization": f"Bearer {raw_key}"} if raw_key else {},
    )
    # when / then: no server error, and the answer matches the spec
    response = case.call_and_validate(base_url=live_server.url, checks=CHECKS[:5])
    assert response.status_code in {401, 404}


def test_a_bot_with_the_longest_allowed_username_gets_its_token(world, make_user, live_server):
    # given a bot whose username has Django's maximum length, in the invited role
    bot = make_user("b" * 150, roles=(Group.objects.get(name="Token bots"),))
    _, key = bot_key_create(user=bot, name="long")
    case = _load_schema()[TOKEN_PATH]["GET"].Case(
        path_parameters={"slug": world.slugs["ready"]}, headers={"Authorization": f"Bearer {key}"}
    )
    # when / then
    response = case.call_and_validate(base_url=live_server.url, checks=CHECKS[:5])
    assert response.status_code == 200
