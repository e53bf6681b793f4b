"""Property-based fuzzing of what strangers and administrators can send: the OAuth callback (and Connect's
`next`), the token endpoint, and the connection admin form.

Each test builds its data once, then hypothesis sends a few hundred requests. Every example checks what must
hold whatever the input: no server error, the documented answer shape, and no stored change from a refused
request. The token endpoint's OpenAPI conformance is tests/connections/endpoint/test_token_endpoint_schema.py's job;
here the properties are the stored state, the answer's code for the request that was actually received, and leaks.

Each request runs in a savepoint: a crash cannot poison the test's transaction, and the tests that need
independent examples roll it back. The bugs they found are fixed and kept as
regression tests at the end.
"""

import json
import re
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import pytest
from django.conf import settings as django_settings
from django.contrib.auth.models import Group, User
from django.contrib.messages import constants as message_levels
from django.contrib.messages import get_messages
from django.db import transaction
from django.db.models import Sum
from django.test import Client, override_settings
from django.urls import Resolver404, resolve
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from connections import errors
from connections.cache import token_cache
from connections.endpoint import issuing
from connections.endpoint.bot_keys import bot_key_create, bot_key_revoke
from connections.engine import store as tokens
from connections.models import AuditEvent, AuthorizationRequest, BotKey, Connection, OAuthToken, sha256_digest
from connections.oauth import client as oauth_client
from connections.outbound import policy as outbound
from providers.models import PLACEHOLDER_PATTERN, GrantType, Provider
from tests.conftest import authorize_and_store_token, callback_after_consent, shared_token
from tests.support.authserver import AuthServer

pytestmark = pytest.mark.django_db

FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,  # the same inputs on every run: a CI gate, not a lottery (as the schema test)
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)

# ---------------------------------------------------------------------------------------------------------------
# Hostile text
# ---------------------------------------------------------------------------------------------------------------

ANY_CHAR = st.characters(codec="utf-8")  # every code point a request can carry (no lone surrogates)
CONTROL_CHARS = st.characters(min_codepoint=0, max_codepoint=31) | st.sampled_from(
    "\x7f\x85\xa0\u2028\u2029\ufeff\u202e"
)
ODD_STRINGS = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "null",
    "None",
    "[]",
    "{}",
    "../../etc/passwd",
    "%00",
    "%ff%fe",
    "%2e%2e%2f",
    "<script>alert(1)</script>",
    "' OR 1=1 --",
    "\u202egnp.exe",
    "\U0001d518\U0001d52b\U0001d526",  # Fraktur letters
    "\uff21\uff42\uff43",  # full-width letters
    "İstanbul",
    "\r\nSet-Cookie: x=1",
    "😀" * 3,
]


def hostile_text(max_size: int = 30) -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(ANY_CHAR, max_size=max_size),
        st.text(CONTROL_CHARS, min_size=1, max_size=8),
        st.sampled_from(ODD_STRINGS),
        st.builds(lambda a, b: a + b, st.sampled_from(ODD_STRINGS), st.text(ANY_CHAR, max_size=5)),
    )


def long_text(low: int = 500, high: int = 20_000) -> st.SearchStrategy[str]:
    return st.builds(lambda n, c: c * n, st.integers(low, high), st.sampled_from(["x", "é", "\x01", "%", "&", "0"]))


def text_values(max_size: int = 30) -> st.SearchStrategy[str]:
    return st.one_of(hostile_text(max_size), long_text())


def _latin1(raw: bytes) -> str:
    """WSGI hands Django bytes decoded as latin-1 (PEP 3333): this is how any byte reaches a view."""
    return raw.decode("latin-1")


def _encode_query(pairs: list[tuple[str, str]], mode: str, tail: bytes) -> str:
    """A query string as a browser, a sloppy client or an attacker would write it."""
    if mode == "form":
        raw = urlencode(pairs).encode("ascii")
    elif mode == "quote":
        raw = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in pairs).encode("ascii")
    else:  # raw UTF-8, '&', '=' and '%' in values included, as some clients send it
        raw = b"&".join(k.encode() + b"=" + v.encode() for k, v in pairs)
    return _latin1(raw + (b"&" + tail if tail else b""))


QUERY_MODES = st.sampled_from(["form", "quote", "raw"])
RAW_TAILS = st.one_of(
    st.just(b""), st.binary(max_size=24), st.sampled_from([b"%", b"%%", b"=", b"&&", b"%zz", b"\xff"])
)


def _messages(response: Any) -> list[Any]:
    return list(get_messages(response.wsgi_request))


def _quiet_client(user: Any = None) -> Client:
    client = Client(raise_request_exception=False)  # a crash must show as the 500 a browser would get
    if user is not None:
        client.force_login(user)
    return client


def _send(client: Client, method: str, path: str, **kwargs: Any) -> Any:
    client.cookies.pop("messages", None)  # only this request's messages count
    return getattr(client, method)(path, **kwargs)


def _too_many_fields(query: str) -> bool:
    """Django answers 400 itself before any view runs past DATA_UPLOAD_MAX_NUMBER_FIELDS (its DoS guard)."""
    return query.count("&") + 1 > django_settings.DATA_UPLOAD_MAX_NUMBER_FIELDS


def _is_local_redirect(location: str) -> bool:
    return location.startswith("/") and not location.startswith(("//", "/\\")) and "\\" not in location


# ---------------------------------------------------------------------------------------------------------------
# 1. The OAuth callback
# ---------------------------------------------------------------------------------------------------------------


def _start_flow(client: Client, connection: Connection, **data: str) -> str:
    """Click Connect; returns the state the provider would send back."""
    response = client.post(f"/oauth/connect/{connection.slug}/", data)
    assert response.status_code == 302, response
    return parse_qs(urlsplit(response["Location"]).query)["state"][0]


def _token_rows() -> list[tuple]:
    return list(
        OAuthToken.objects.order_by("pk").values_list(
            "pk", "connection_id", "user_id", "access_token", "refresh_token", "generation", "state", "expires_at"
        )
    )


def _flow_rows() -> dict[int, tuple]:
    rows = AuthorizationRequest.objects.values_list("pk", "state_digest", "session_digest", "used_at", "expires_at")
    return {row[0]: row[1:] for row in rows}


def _last_event_id() -> int:
    return AuditEvent.objects.order_by("-pk").values_list("pk", flat=True).first() or 0


CALLBACK_KEYS = ["state", "code", "error", "error_description", "error_uri", "iss", "session_state", "STATE", "state[]"]
OAUTH_ERRORS = ["access_denied", "invalid_request", "server_error", "temporarily_unavailable", "invalid_scope", ""]


def _callback_queries(known_states: list[str], *, pending: list[str]) -> st.SearchStrategy[str]:
    """Callback query strings: fuzzed ones around the known states and near misses of them, and answers that
    carry a pending flow's own state last (the value Django reads), with anything else around it."""

    def near_misses(state: str) -> st.SearchStrategy[str]:
        return st.one_of(
            st.builds(lambda before, after: before + state + after, hostile_text(4), hostile_text(4)),
            st.sampled_from([state.upper(), state[:-1], state + "=", " " + state, state + "\x00", state * 2]),
        )

    state_values = st.one_of(
        st.sampled_from(known_states), *[near_misses(state) for state in known_states], text_values()
    )
    values = st.one_of(state_values, st.sampled_from(OAUTH_ERRORS), text_values())
    pairs = st.tuples(st.sampled_from(CALLBACK_KEYS) | hostile_text(12), values)
    state_pairs = st.lists(st.tuples(st.just("state"), state_values), max_size=2)
    fuzzed_queries = st.builds(
        lambda before, states, after, mode, tail: _encode_query(before + states + after, mode, tail),
        st.lists(pairs, max_size=5),
        state_pairs,
        st.lists(pairs, max_size=3),
        QUERY_MODES,
        RAW_TAILS,
    )
    flow_answers = st.builds(
        lambda before, state, mode: _encode_query([*before, ("state", state)], mode, b""),
        st.lists(st.tuples(st.sampled_from(["code", "code", "error", "error_description", "iss"]), values), max_size=3),
        st.sampled_from(pending),
        QUERY_MODES,
    )
    return st.one_of(fuzzed_queries, flow_answers)


def _assert_only_the_answered_flow_used(before: dict, after: dict, answered_state: str | None) -> None:
    """A genuine answer uses up its own flow; nothing else about any flow changes."""
    assert after.keys() == before.keys()
    for pk, (digest, session, used_at, expires_at) in before.items():
        if answered_state is not None and digest == sha256_digest(answered_state):
            assert used_at is None and after[pk][2] is not None, "a genuine answer must use up its state"
        else:
            assert after[pk] == (digest, session, used_at, expires_at), "a rejected answer used up a flow"


def _assert_sent_home_with_one_error(response, query: str, secrets: set[str]) -> None:
    assert response.status_code == 302, (response.status_code, query)
    assert _is_local_redirect(response["Location"]), response["Location"]
    messages = _messages(response)
    assert len(messages) == 1 and messages[0].level == message_levels.ERROR, messages
    assert str(messages[0]).strip()
    assert not any(secret in str(messages[0]) for secret in secrets)


# Every failed answer is recorded one by one here (a flood is counted instead: tests/connections).
@override_settings(AUTH_FAILURES_AUDITED_ONE_BY_ONE=1_000_000, AUTH_FAILURES_AUDITED_PER_MINUTE=1_000_000)
def test_oauth_callback_never_crashes_and_a_rejected_answer_changes_nothing(
    make_connection, make_user, manager_client, authserver
):
    # given a connected connection, so a rejected answer has a token it could damage
    connection = make_connection()
    callback = callback_after_consent(manager_client, connection, authserver)
    used_state = parse_qs(urlsplit(callback).query)["state"][0]
    assert manager_client.get(callback).status_code == 302
    assert shared_token(connection) is not None
    # and flows in every state: pending in this browser, pending in another one, expired, already used
    stranger = make_user(perms=("manage_connections",), staff=True)
    clients = {"owner": manager_client, "stranger": _quiet_client(stranger), "anonymous": _quiet_client()}
    manager_client.raise_request_exception = False
    pending_state = _start_flow(manager_client, connection)
    stranger_state = _start_flow(clients["stranger"], connection)
    expired_state = _start_flow(manager_client, connection)
    AuthorizationRequest.objects.filter(state_digest=sha256_digest(expired_state)).update(
        expires_at=timezone.now() - timedelta(minutes=1)
    )
    genuine = {("owner", pending_state), ("stranger", stranger_state)}
    known_states = [pending_state, stranger_state, expired_state, used_state]
    secrets = {connection.client_secret, *(value for row in _token_rows() for value in row[3:5])}
    exchanges = authserver.stats()["token_requests"]["authorization_code"]

    queries = _callback_queries(known_states, pending=[pending_state, stranger_state])
    seen = {"genuine": 0, "rejected": 0}

    @given(who=st.sampled_from(sorted(clients)), query=queries)
    @settings(FUZZ, max_examples=300)
    def answer(who: str, query: str) -> None:
        # Not inside a transaction: a genuine answer calls the provider, which is never done inside one.
        tokens, flows, last_event = _token_rows(), _flow_rows(), _last_event_id()
        try:
            # when the browser comes back with whatever the query says
            response = _send(clients[who], "get", "/oauth/callback/", QUERY_STRING=query)
            if _too_many_fields(query):
                assert response.status_code == 400 and (_token_rows(), _flow_rows()) == (tokens, flows)
                return
            # then it is sent somewhere on this site with one error message, never a server error
            _assert_sent_home_with_one_error(response, query, secrets)
            # and nothing stored changed, except that a genuine answer used up its flow
            assert _token_rows() == tokens
            was_genuine = (who, response.wsgi_request.GET.get("state")) in genuine
            seen["genuine" if was_genuine else "rejected"] += 1
            answered = response.wsgi_request.GET["state"] if was_genuine else None
            _assert_only_the_answered_flow_used(flows, _flow_rows(), answered)
            # and exactly one audit event tells what happened, without a secret or a NUL
            events = list(AuditEvent.objects.filter(pk__gt=last_event))
            assert [(e.action, e.outcome) for e in events] == [("authorize_callback", "failure")], events
            assert not any(secret in events[0].detail for secret in secrets)
        finally:  # every example starts from the same flows
            for pk, (_, _, used_at, _) in flows.items():
                AuthorizationRequest.objects.filter(pk=pk).update(used_at=used_at)
            AuditEvent.objects.filter(pk__gt=last_event).delete()

    answer()

    assert seen["genuine"] >= 5 and seen["rejected"] >= 100, seen
    # some genuine answers carried a (made-up) code all the way to the provider, which refused it
    assert authserver.stats()["token_requests"]["authorization_code"] > exchanges


def test_connect_next_never_crashes_and_only_a_local_return_url_is_stored(make_connection, manager_client, authserver):
    # given a connection the manager may authorize
    connection = make_connection()
    manager_client.raise_request_exception = False
    change_page = f"/admin/connections/connection/{connection.pk}/change/"
    nexts = st.one_of(
        text_values(),
        st.sampled_from(
            [
                "https://evil.example/",
                "//evil.example/",
                "/\\evil.example",
                "\\\\evil.example",
                "javascript:alert(1)",
                "http://testserver/admin/",
                "https://testserver/admin/",
                "/admin/?x=1#y",
                " /admin/",
                "\t//evil.example",
                "/%2F%2Fevil.example",
            ]
        ),
        st.builds(lambda tail: "/" + tail, hostile_text(40)),
    )

    @given(next_url=nexts)
    @FUZZ
    def click(next_url: str) -> None:
        with transaction.atomic():
            flows = _flow_rows()
            response = _send(manager_client, "post", f"/oauth/connect/{connection.slug}/", data={"next": next_url})
            assert response.status_code == 302, (response.status_code, next_url)
            assert response["Location"].startswith(authserver.authorize_url), response["Location"]
            new = AuthorizationRequest.objects.exclude(pk__in=flows)
            assert new.count() == 1
            stored = new.get().return_url
            assert stored in (next_url, change_page)
            assert url_has_allowed_host_and_scheme(stored, {"testserver"}), stored
            transaction.set_rollback(True)

    click()


# ---------------------------------------------------------------------------------------------------------------
# 2. The token endpoint
# ---------------------------------------------------------------------------------------------------------------

ERROR_STATUS = {
    "bad_request": 400,
    "invalid_key": 401,
    "forbidden": 403,
    "not_found": 404,
    "not_connected": 409,
    "reauthorization_required": 409,
    "refresh_backoff": 424,
    "rate_limited": 429,
    "provider_unavailable": 503,
}
REFRESH_OUTCOMES = {"reauthorization_required", "refresh_backoff", "provider_unavailable"}


def _key_rows() -> dict[int, tuple]:
    rows = BotKey.objects.values_list(
        "pk", "user_id", "name", "key_id", "digest", "revoked_at", "expires_at", "last_used_at", "last_used_from"
    )
    return {row[0]: row[1:] for row in rows}


def _clean_params(params: dict[str, str]) -> bool:
    """Parameters any reading of the contract accepts: ASCII whole seconds in range, a plain true/false."""
    validity = params.get("min_validity", "60")
    force = params.get("force_refresh", "false")
    in_range = re.fullmatch(r"[0-9]{1,6}", validity) is not None and int(validity) <= issuing.MAX_MIN_VALIDITY
    return in_range and force in {"true", "false", "1", "0", ""}


@dataclass
class EndpointWorld:
    """Connections in the states a bot can meet, and keys that work and keys that must not."""

    bot: User
    by_name: dict[str, Connection]
    slugs: dict[str, str]  # slug -> name in by_name
    valid: str
    other: str  # a working key whose user no role invites anywhere
    revoked: str
    expired: str
    working: dict[str, User]  # raw key -> its user
    key_pks: dict[str, int]
    client_secrets: set[str]
    authserver: AuthServer
    statuses: dict[int, int] = field(default_factory=dict)


def _endpoint_world(make_connection, make_user, manager_client, authserver) -> EndpointWorld:
    role = Group.objects.create(name="Fuzzed bots")
    bot = make_user("fuzz-bot", roles=(role,))
    outsider = make_user("outsider-bot")

    def invited(**fields: object) -> Connection:
        connection = make_connection(**fields)
        connection.roles.add(role)
        return connection

    ready = invited()
    authorize_and_store_token(manager_client, ready, authserver)
    by_name = {
        "ready": ready,
        "pending": invited(register=False),
        "mine": invited(register=False, token_type="user_specific"),
        "disabled": invited(register=False, is_enabled=False),
        "private": make_connection(register=False),
        # client credentials, no token yet: the first request that passes every check fetches it, a refusal never
        "app": invited(grant_type="client_credentials"),
    }
    _, valid = bot_key_create(user=bot, name="valid")
    _, other = bot_key_create(user=outsider, name="outsider")
    revoked_key, revoked = bot_key_create(user=bot, name="revoked")
    bot_key_revoke(key=revoked_key)
    expired_key, expired = bot_key_create(user=bot, name="expired", expires_days=1)
    BotKey.objects.filter(pk=expired_key.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    working = {valid: bot, other: outsider}
    return EndpointWorld(
        bot=bot,
        by_name=by_name,
        slugs={connection.slug: name for name, connection in by_name.items()},
        valid=valid,
        other=other,
        revoked=revoked,
        expired=expired,
        working=working,
        key_pks={raw: BotKey.objects.get(key_id=raw.split("_")[1]).pk for raw in working},
        client_secrets={connection.client_secret for connection in by_name.values()},
        authserver=authserver,
    )


def _endpoint_headers(world: EndpointWorld) -> tuple[st.SearchStrategy, st.SearchStrategy]:
    """(headers with a working key, headers with anything else)."""
    valid, key_id = world.valid, world.valid.split("_")[1]
    keys = st.one_of(
        st.sampled_from([valid, valid, world.other, world.revoked, world.expired]),
        st.sampled_from([valid.upper(), valid[:-1], valid + "x", valid.replace("crk_", "CRK_"), valid[4:]]),
        st.builds(lambda secret: f"crk_{key_id}_{secret}", hostile_text(50)),
        st.builds(lambda tail: "crk_" + tail, hostile_text(60)),
        text_values(60),
    )
    working = st.sampled_from([f"Bearer {valid}", f"bearer {valid}", f"Bearer  {valid} ", f"Bearer {world.other}"])
    hostile = st.one_of(
        st.none(),
        text_values(80),
        st.builds(
            lambda scheme, gap, key, suffix: f"{scheme}{gap}{key}{suffix}",
            st.sampled_from(["Bearer", "bearer", "BEARER", "Basic", "Token", "Bearer:", "", "Bearer\x00"]),
            st.sampled_from([" ", "  ", "\t", "", "\x00"]),
            keys,
            st.sampled_from(["", " ", "\t", "\x00", "x", "\xa0", "\u3000", "\n"]),
        ),
    )
    return working, hostile


def _endpoint_paths(world: EndpointWorld) -> st.SearchStrategy[str]:
    slugs = sorted(world.slugs)
    slug_values = st.one_of(
        st.sampled_from(slugs),
        st.sampled_from(slugs),
        st.sampled_from(slugs),
        st.sampled_from(slugs).flatmap(
            lambda slug: st.sampled_from([slug.upper(), slug + " ", slug + "\x00", slug + "%", "..", slug[:-1] + "é"])
        ),
        st.sampled_from(["a" * 120, "a" * 121, "-", "_", "no-such-connection"]),
        text_values(40).filter(bool),
    )
    clean_paths = st.sampled_from([f"/api/v1/connections/{slug}/token" for slug in slugs])
    fuzzed_paths = st.builds(
        lambda slug, safe, tail: f"/api/v1/connections/{quote(slug, safe=safe)}{tail}",
        slug_values,
        st.sampled_from(["", "%", "%.;,~!$'()*+=:@"]),
        st.sampled_from(["/token"] * 6 + ["/token/", "/TOKEN", "/token%00", "//token"]),
    )
    return st.one_of(clean_paths, clean_paths, fuzzed_paths)


def _endpoint_queries() -> st.SearchStrategy[str]:
    clean_params = st.lists(
        st.one_of(
            st.tuples(st.just("min_validity"), st.integers(0, issuing.MAX_MIN_VALIDITY).map(str)),
            st.tuples(st.just("force_refresh"), st.sampled_from(["true", "false", "1", "0"])),
        ),
        max_size=2,
    )
    fuzzed_params = st.lists(
        st.tuples(
            st.sampled_from(["min_validity", "force_refresh", "min_validity", "force_refresh", "slug", "access_token"])
            | hostile_text(10),
            st.one_of(
                st.integers(-10, 10**6).map(str),
                st.sampled_from(["true", "false", "TRUE", "yes", "no", "1", "0", "", "٣٠", "1_000", " 5", "+5", "1e3"]),
                st.sampled_from(["9" * 5000, "-0", "0x10", "NaN", "inf"]),
                hostile_text(20),
            ),
        ),
        max_size=4,
    )
    return st.one_of(
        st.builds(_encode_query, clean_params, st.just("form"), st.just(b"")),
        st.builds(_encode_query, fuzzed_params, QUERY_MODES, RAW_TAILS),
    )


def _assert_contract_shape(world: EndpointWorld, response, stored_secrets: set[str]) -> dict:
    """JSON, never cached, and an error is exactly {error, detail} with the status of its code."""
    assert response["Content-Type"] == "application/json"
    assert response["Cache-Control"] == "no-store"
    body = json.loads(response.content)
    text = response.content.decode()
    assert not any(secret in text for secret in world.client_secrets | {world.valid, world.other, world.revoked})
    assert world.expired not in text
    if response.status_code != 200:
        assert set(body) == {"error", "detail"}, body
        assert ERROR_STATUS.get(body["error"]) == response.status_code, body
        assert isinstance(body["detail"], str) and body["detail"].strip()
        assert not any(secret in text for secret in stored_secrets | {row[3] for row in _token_rows()})
        if body["error"] in {"rate_limited", "refresh_backoff", "provider_unavailable"}:
            assert response["Retry-After"].isdigit(), body
    return body


def _assert_the_contracts_answer(world: EndpointWorld, response, body: dict, owner: User | None, slug: str) -> None:
    sent = response.wsgi_request
    if owner is None:
        assert body.get("error") == "invalid_key" and response["WWW-Authenticate"], body
    elif _clean_params(sent.GET.dict()):
        name = world.slugs.get(slug) if owner == world.bot else ("private" if slug in world.slugs else None)
        expected = {
            None: "not_found",
            "ready": None,
            "app": None,
            "pending": "not_connected",
            "mine": "not_connected",
            "disabled": "forbidden",
            "private": "forbidden",
        }[name]
        assert body.get("error") == expected, (slug, body)
    elif not re.search(r"[0-9]", sent.GET.get("min_validity", "60") or "x"):
        assert body.get("error") == "bad_request", body


def _assert_only_allowed_writes(world, response, body, slug, tokens, key_rows, used_key: int | None) -> None:
    """Only a successful request, or a refresh it attempted, changed a token; a key row changes only by its
    last use, and only when it authenticated."""
    if response.status_code == 200:
        assert body["connection"] == slug and "refresh_token" not in body
        assert body["access_token"] == shared_token(world.by_name[world.slugs[slug]]).access_token
        assert not any(row[4] and row[4] in response.content.decode() for row in _token_rows())
    if response.status_code != 200 and body.get("error") not in REFRESH_OUTCOMES:
        assert _token_rows() == tokens, body
    after = _key_rows()
    assert after.keys() == key_rows.keys()
    for pk, row in key_rows.items():
        if pk == used_key:
            assert after[pk][:6] == row[:6], "the key was changed beyond its last use"
        else:
            assert after[pk] == row, "a refused or unused key was written to"


def _ask_token_endpoint(world: EndpointWorld, path: str, header: str | None, query: str) -> None:
    extra = {"QUERY_STRING": query}
    if header is not None:
        extra["HTTP_AUTHORIZATION"] = _latin1(header.encode())
    # Not inside a transaction: a refresh the request makes calls the provider, never done inside one.
    tokens, key_rows = _token_rows(), _key_rows()
    stored_secrets = {value for row in tokens for value in row[3:5] if value}
    token_cache.report()  # the events of earlier answers from memory written now, not in this request
    calls, events = _provider_calls(world), _events_accounted()
    response = _send(_quiet_client(), "get", path, **extra)
    assert response.status_code != 500, (path, header, query)
    world.statuses[response.status_code] = world.statuses.get(response.status_code, 0) + 1
    if _too_many_fields(query):
        assert response.status_code == 400 and (_token_rows(), _key_rows()) == (tokens, key_rows)
        return
    try:
        match = resolve(response.wsgi_request.path_info)
    except Resolver404:
        match = None
    if match is None or match.url_name != "connection_token":
        # not the endpoint at all (a '/' in the slug, another suffix): Django's 404, nothing touched
        assert response.status_code == 404
        assert (_token_rows(), _key_rows()) == (tokens, key_rows)
        return
    body = _assert_contract_shape(world, response, stored_secrets)
    scheme, _, raw_key = response.wsgi_request.headers.get("Authorization", "").partition(" ")
    owner = world.working.get(raw_key.strip()) if scheme.lower() == "bearer" else None
    _assert_the_contracts_answer(world, response, body, owner, match.kwargs["slug"])
    used = world.key_pks[raw_key.strip()] if owner is not None else None
    _assert_only_allowed_writes(world, response, body, match.kwargs["slug"], tokens, key_rows, used)
    _assert_calls_and_events(world, response, body, owner, calls, events)


def _provider_calls(world: EndpointWorld) -> int:
    return sum(world.authserver.stats()["token_requests"].values())


def _events_accounted() -> int:
    """The events the audit log accounts for: a row each, but a rolled-up row of answers counts them all."""
    return AuditEvent.objects.aggregate(total=Sum("count"))["total"] or 0


def _assert_calls_and_events(world, response, body, owner: User | None, calls: int, events: int) -> None:
    """A refusal calls no provider (no refresh, no first client-credentials token) and writes at most one audit
    event, exactly one when the key authenticated (a failed authentication may be counted with others); an
    answer writes at most two (its own, and the first token it fetched), one from memory at the next report."""
    refused = response.status_code != 200 and body.get("error") not in REFRESH_OUTCOMES
    if refused:
        assert _provider_calls(world) == calls, body
    token_cache.report()
    written = _events_accounted() - events
    if refused:
        assert written == 1 if owner is not None else written in (0, 1), (written, body)
    else:
        assert written in (1, 2), (written, body)


# A wrong key gets 401 every time here, however often (the per-address limit is tested in tests/connections).
@override_settings(TOKEN_AUTH_FAILURES_PER_MINUTE=0)
def test_token_endpoint_never_crashes_never_leaks_and_a_refusal_changes_nothing(
    make_connection, make_user, manager_client, authserver
):
    # given connections in the states a bot can meet, and keys that work and keys that must not
    world = _endpoint_world(make_connection, make_user, manager_client, authserver)
    working_headers, hostile_headers = _endpoint_headers(world)
    paths, queries = _endpoint_paths(world), _endpoint_queries()

    # when anything is asked, then the contract's answer comes, and only what it allows is written
    def ask(path: str, header: str | None, query: str) -> None:
        _ask_token_endpoint(world, path, header, query)

    # A working key reaches every answer past authentication; anything else must stop at it.
    as_bot = given(path=paths, header=working_headers, query=queries)(ask)
    as_anyone = given(path=paths, header=hostile_headers, query=queries)(ask)
    settings(FUZZ, max_examples=300)(as_bot)()
    settings(FUZZ, max_examples=300)(as_anyone)()

    assert {200, 401, 403, 404, 409, 400} <= set(world.statuses), world.statuses


# ---------------------------------------------------------------------------------------------------------------
# 3. The connection admin form
# ---------------------------------------------------------------------------------------------------------------

PLACEHOLDER_OK = re.compile(r"^[A-Za-z0-9.-]+$")
CONNECTION_COLUMNS = [field.attname for field in Connection._meta.concrete_fields]


def _connection_rows() -> dict[int, dict]:
    rows = {row["id"]: row for row in Connection.objects.values(*CONNECTION_COLUMNS)}
    for connection_id, group_id in Connection.roles.through.objects.values_list("connection_id", "group_id"):
        rows[connection_id].setdefault("roles", set()).add(group_id)
    return rows


def _url_values() -> st.SearchStrategy[str]:
    hosts = [
        "127.0.0.1",
        "localhost",
        "[::1]",
        "auth.example.com",
        "evil.example",
        "10.0.0.1",
        "127.0.0.1.evil.example",
        "user:pw@evil.example",
        "<yourinstance>.example.com",
        "<tenant>",
        "",
        "ex ample.com",
        "éxample.com",
        "[::1",
        "[evil]",
    ]
    return st.one_of(
        st.builds(
            lambda scheme, host, path: f"{scheme}://{host}{path}",
            st.sampled_from(["https", "http", "HTTPS", "javascript", "ftp", "file", "data", ""]),
            st.sampled_from(hosts),
            st.sampled_from(["/oauth/token", "", "/../x", "/a?b=c#d", "/<tenant>/token", "/\x00", ":99999/x"]),
        ),
        st.sampled_from(["javascript:alert(1)", "//evil.example/x", "https:///x", "data:text/html,<b>", "/relative"]),
        st.sampled_from([" https://auth.example.com/x ", "https://auth.example.com/\x00", "https://a" * 100]),
        hostile_text(40),
    )


def _json_values() -> st.SearchStrategy[str]:
    simple = st.one_of(st.text(ANY_CHAR, max_size=10), st.integers(), st.booleans(), st.none(), st.floats())
    nested = st.recursive(
        simple, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner)
    )
    return st.one_of(
        st.dictionaries(
            st.text(ANY_CHAR, max_size=10), st.text(ANY_CHAR, max_size=20) | st.integers() | st.booleans()
        ).map(json.dumps),
        nested.map(lambda value: json.dumps(value, ensure_ascii=False)),
        st.sampled_from(
            ["", "{}", "[1, 2]", "null", '"text"', "1e400", '{"a": NaN}', '{"a": {"b": 1}}', "{", "{'a': 1}"]
        ),
        st.sampled_from(['{"a": "\\u0000"}', '{"\\ud800": "a"}', '{"a": ' + "7" * 5000 + "}", "[" * 5000 + "]" * 5000]),
        hostile_text(30),
    )


def _placeholder_values() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(["acme", "contoso", "a", "a-b.c", "127.0.0.1", "localhost", "a..b", "0"]),
        st.sampled_from(["evil.example/", "x@evil", "..", "a/../b", "a:1", "a b", "-a", "a-", "a\n", " acme ", "é"]),
        st.from_regex(r"[A-Za-z0-9][A-Za-z0-9.-]{0,20}[A-Za-z0-9]", fullmatch=True),
        hostile_text(20),
        long_text(250, 300),
    )


def _field_strategies(provider_ids: list[int], role_ids: list[int], names: list[str]) -> dict[str, Any]:
    grant_types = [grant.value for grant in GrantType]
    return {
        "name": st.one_of(text_values(40), st.sampled_from(names), st.sampled_from(["㎉" * 120, "Fuzz 2", "x" * 121])),
        "slug": st.one_of(st.sampled_from(["", "fuzz-2", "Has Space", "-", "a" * 121]), hostile_text(20)),
        "description": text_values(60),
        "provider": st.one_of(
            st.sampled_from(provider_ids).map(str), st.integers().map(str), hostile_text(8), st.just("٣")
        ),
        "grant_type": st.one_of(st.sampled_from(grant_types), hostile_text(12)),
        "token_type": st.one_of(st.sampled_from(["shared", "user_specific"]), hostile_text(12)),
        "client_id": text_values(40),
        "client_secret": st.one_of(st.just(""), text_values(40)),
        "authorization_url": _url_values(),
        "token_url": _url_values(),
        "revocation_url": _url_values(),
        "scopes": text_values(40),
        "extra_authorization_params": _json_values(),
        "default_token_lifetime": st.one_of(
            st.integers().map(str), st.sampled_from(["", "-1", "0", "1.5", "9" * 30]), hostile_text(8)
        ),
        "is_enabled": st.sampled_from(["on", "", "off", "false", "\x00"]),
        "roles": st.lists(st.one_of(st.sampled_from(role_ids).map(str), st.integers().map(str), hostile_text(5))),
        "placeholder__yourinstance": _placeholder_values(),
        "placeholder__tenant": _placeholder_values(),
        "placeholder__tenant-id": _placeholder_values(),
        "_continue": st.just("Save and continue editing"),
    }


DELETE = object()  # a field left out of the POST altogether


URL_FIELDS = ("authorization_url", "token_url", "revocation_url")
UNSTORABLE_JSON_TEXT = re.compile(r"\\u(0000|d[89a-f][0-9a-f]{2})", re.IGNORECASE)  # NUL, lone surrogates


# What every connection form posts, but for the fields a case sets (the token inline's management form included).
COMMON_FORM = {
    "description": "",
    "client_id": "fuzz-client",
    "client_secret": "fuzz-secret",
    "authorization_url": "",
    "token_url": "",
    "revocation_url": "",
    "scopes": "read,write",
    "extra_authorization_params": "{}",
    "default_token_lifetime": "",
    "is_enabled": "on",
    "token_type": "shared",
    "grant_type": "authorization_code",
    "tokens-TOTAL_FORMS": "0",
    "tokens-INITIAL_FORMS": "0",
    "tokens-MIN_NUM_FORMS": "0",
    "tokens-MAX_NUM_FORMS": "1000",
}


def _base_forms(existing: dict[str, Connection]) -> dict[str, dict[str, Any]]:
    def provider(slug: str) -> str:
        return str(Provider.objects.get(slug=slug).pk)

    common = COMMON_FORM
    forms = {
        "add custom": {
            **common,
            "name": "Fuzz custom",
            "slug": "",
            "provider": provider("custom"),
            "authorization_url": "https://auth.example.com/authorize",
            "token_url": "https://auth.example.com/token",
        },
        "add salesforce": {
            **common,
            "name": "Fuzz salesforce",
            "slug": "",
            "provider": provider("salesforce"),
            "placeholder__yourinstance": "acme",
        },
        "add entra": {
            **common,
            "name": "Fuzz entra",
            "slug": "fuzz-entra",
            "provider": provider("microsoft-entra"),
            "grant_type": "client_credentials",
            "placeholder__tenant": "contoso",
        },
    }
    for label, connection in existing.items():
        forms[f"change {label}"] = {
            **common,
            "name": connection.name,
            "slug": connection.slug,
            "provider": str(connection.provider_id),
            "grant_type": connection.grant_type,
            "client_id": connection.client_id,
            "client_secret": "",
            "authorization_url": connection.authorization_url,
            "token_url": connection.token_url,
            "revocation_url": connection.revocation_url,
            "scopes": connection.scopes,
            **{f"placeholder__{name}": value for name, value in connection.placeholders.items()},
        }
    return forms


def _check_accepted(connection: Connection, posted_secret: Any, secret_before: str | None) -> None:
    """What an accepted form must have stored: URLs the client will call, placeholders that cannot redirect."""
    provider = connection.provider
    assert connection.grant_type in provider.grant_types
    assert not (connection.grant_type == GrantType.CLIENT_CREDENTIALS and connection.is_user_specific)
    urls = {
        "authorization": connection.effective_authorization_url,
        "token": connection.effective_token_url,
        "revocation": connection.effective_revocation_url,
    }
    required = {"token"} | ({"authorization"} if connection.uses_authorization_code else set())
    for label, url in urls.items():
        assert not PLACEHOLDER_PATTERN.search(url), f"the {label} URL still holds a placeholder: {url!r}"
        if url or label in required:
            try:
                outbound.check_url(url)
            except errors.ProviderError as exc:
                pytest.fail(f"accepted a {label} URL the client refuses: {url!r} ({exc.message})")
    assert set(connection.placeholders) <= set(provider.placeholders), connection.placeholders
    for value in connection.placeholders.values():
        assert PLACEHOLDER_OK.fullmatch(value), f"placeholder {value!r}"
    assert issuing.SLUG_PATTERN.fullmatch(connection.slug), f"bots cannot ask for slug {connection.slug!r}"
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in connection.extra_authorization_params.items())
    typed = posted_secret.strip() if isinstance(posted_secret, str) else ""
    assert connection.client_secret == (typed or secret_before or ""), "the stored secret is not the one typed"
    if connection.uses_authorization_code:  # the URL Connect sends the browser to can be built
        oauth_client.authorization_url(tokens.connection_client_config(connection), state="s")


def test_connection_admin_form_never_crashes_and_stores_only_what_it_accepts(make_connection, manager_client):
    # given a manager, a role, and connections to edit: a Custom one and a Salesforce one with a placeholder
    manager_client.raise_request_exception = False
    role = Group.objects.create(name="Fuzz role")
    existing = {
        "custom": make_connection(register=False),
        "salesforce": make_connection(
            register=False,
            provider=Provider.objects.get(slug="salesforce"),
            authorization_url="",
            token_url="",
            revocation_url="",
            placeholders={"yourinstance": "acme"},
        ),
    }
    bases = _base_forms(existing)
    fields = _field_strategies(
        list(Provider.objects.values_list("pk", flat=True)), [role.pk], [c.name for c in existing.values()]
    )
    overrides = st.lists(st.sampled_from(sorted(fields)), unique=True, min_size=1, max_size=4).flatmap(
        lambda names: st.fixed_dictionaries({name: fields[name] | st.just(DELETE) for name in names})
    )
    outcomes = {"accepted": 0, "rejected": 0}

    @given(base=st.sampled_from(sorted(bases)), changes=overrides)
    @settings(FUZZ, max_examples=300)
    def post(base: str, changes: dict[str, Any]) -> None:
        data = {**bases[base], **changes}
        data = {name: value for name, value in data.items() if value is not DELETE}
        target = existing[base.split()[1]] if base.startswith("change") else None
        url = f"/admin/connections/connection/{target.pk}/change/" if target else "/admin/connections/connection/add/"
        with transaction.atomic():
            before, last_event = _connection_rows(), _last_event_id()
            # when the manager saves the form
            response = _send(manager_client, "post", url, data=data)
            # then it is either refused with the reasons shown, or saved and sent on: never a server error
            assert response.status_code in (200, 302), (response.status_code, data)
            after = _connection_rows()
            if response.status_code == 200:
                outcomes["rejected"] += 1
                assert response.context["errors"], "a 200 answer to a POST must show what is wrong"
                assert after == before, "a refused form changed a connection"
                assert not AuditEvent.objects.filter(pk__gt=last_event, action__startswith="connection_").exists()
            else:
                outcomes["accepted"] += 1
                changed = [pk for pk in after if after[pk] != before.get(pk)]
                assert len(changed) == 1 and (target is None or changed == [target.pk]), changed
                assert all(after[pk] == before[pk] for pk in before if pk not in changed), "another row changed"
                stored = Connection.objects.select_related("provider").get(pk=changed[0])
                _check_accepted(stored, data.get("client_secret"), before.get(changed[0], {}).get("client_secret"))
            transaction.set_rollback(True)  # every example starts from the same connections

    post()

    assert outcomes["accepted"] >= 20 and outcomes["rejected"] >= 50, outcomes


# ---------------------------------------------------------------------------------------------------------------
# Bugs the tests above found, kept as regression tests
# ---------------------------------------------------------------------------------------------------------------

# A pinned bug fails on its first examples; shrinking them again on every run would only cost time.
PINNED = settings(FUZZ, max_examples=25, phases=[Phase.generate], report_multiple_bugs=False)
ADD_URL = "/admin/connections/connection/add/"


def _add_form(base: str, **overrides: str) -> dict[str, Any]:
    return {**_base_forms({})[base], **overrides}


def _refused_with_error_on(response: Any, field: str) -> bool:
    return response.status_code == 200 and field in response.context["adminform"].form.errors


def test_connect_with_a_next_that_cannot_be_stored_falls_back_instead_of_crashing(
    make_connection, manager_client, authserver
):
    connection = make_connection()
    manager_client.raise_request_exception = False
    nexts = st.one_of(
        st.builds(lambda before, after: f"/{before}\x00{after}", hostile_text(10), hostile_text(10)),
        st.integers(501, 3000).map(lambda n: "/admin/" + "a" * (n - 7)),
    )

    @given(next_url=nexts)
    @PINNED
    def click(next_url: str) -> None:
        with transaction.atomic():
            response = _send(manager_client, "post", f"/oauth/connect/{connection.slug}/", data={"next": next_url})
            assert response.status_code == 302, (response.status_code, next_url[:40])
            transaction.set_rollback(True)

    click()


def test_admin_refuses_an_unparseable_url_without_crashing(manager_client):
    manager_client.raise_request_exception = False
    urls = st.one_of(
        st.builds(
            lambda scheme, inside, path: f"{scheme}://[{inside}{path}",
            st.sampled_from(["https", "http"]),
            st.text(st.characters(codec="ascii", exclude_characters="]/?#\x00"), max_size=10),
            st.sampled_from(["", "/token", "/a/b"]),
        ),
        st.builds(lambda host: f"https://[{host}]/token", st.from_regex(r"[g-z]{1,8}", fullmatch=True)),
    )

    @given(field=st.sampled_from(URL_FIELDS), url=urls)
    @PINNED
    def post(field: str, url: str) -> None:
        with transaction.atomic():
            response = _send(manager_client, "post", ADD_URL, data=_add_form("add custom", **{field: url}))
            assert _refused_with_error_on(response, field), (response.status_code, url)
            transaction.set_rollback(True)

    post()


def test_admin_refuses_json_text_postgresql_cannot_store(manager_client):
    manager_client.raise_request_exception = False
    bad = st.builds(
        lambda before, char, after: before + char + after,
        st.text(max_size=5),
        st.sampled_from(["\x00", "\ud800", "\udfff"]),
        st.text(max_size=5),
    )
    payloads = st.one_of(
        st.builds(lambda key, value: json.dumps({key: value}), bad, st.text(max_size=5)),
        st.builds(lambda key, value: json.dumps({key: value}), st.text(min_size=1, max_size=5), bad),
    )

    @given(payload=payloads)
    @PINNED
    def post(payload: str) -> None:
        with transaction.atomic():
            data = _add_form("add salesforce", extra_authorization_params=payload)
            response = _send(manager_client, "post", ADD_URL, data=data)
            assert _refused_with_error_on(response, "extra_authorization_params"), (response.status_code, payload)
            transaction.set_rollback(True)

    post()


def test_admin_refuses_json_python_cannot_parse_without_crashing(manager_client):
    manager_client.raise_request_exception = False
    payloads = st.one_of(
        st.integers(4301, 6000).map(lambda digits: '{"prompt": ' + "7" * digits + "}"),
        st.integers(2000, 20_000).map(lambda depth: "[" * depth + "]" * depth),
    )

    @given(payload=payloads)
    @PINNED
    def post(payload: str) -> None:
        with transaction.atomic():
            data = _add_form("add salesforce", extra_authorization_params=payload)
            response = _send(manager_client, "post", ADD_URL, data=data)
            assert _refused_with_error_on(response, "extra_authorization_params"), response.status_code
            transaction.set_rollback(True)

    post()


def test_admin_checks_the_url_it_stores_not_a_filled_in_copy(manager_client):
    manager_client.raise_request_exception = False
    urls = st.builds(
        lambda scheme, host, path: f"{scheme}://{host}{path}",
        st.sampled_from(["http", "https"]),
        st.sampled_from(["<yourinstance>", "<yourinstance>.example.com", "<tenant>.example.com", "auth.example.com"]),
        st.sampled_from(["/token", "/<yourinstance>/token", "/<tenant>/token"]),
    ).filter(lambda url: "<" in url)

    @given(
        field=st.sampled_from(["token_url", "authorization_url"]),
        url=urls,
        instance=st.sampled_from(["localhost", "127.0.0.1", "acme"]),
    )
    @PINNED
    def post(field: str, url: str, instance: str) -> None:
        with transaction.atomic():
            data = _add_form("add salesforce", placeholder__yourinstance=instance, **{field: url})
            response = _send(manager_client, "post", ADD_URL, data=data)
            assert response.status_code in (200, 302), response.status_code
            if response.status_code == 302:
                _check_accepted(Connection.objects.get(name=data["name"]), data["client_secret"], None)
            transaction.set_rollback(True)

    post()
