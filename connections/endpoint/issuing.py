"""The token endpoint's logic: from a bot key and a connection slug to a valid access token, or an error code.

Error codes and statuses are the contract in connections/openapi.yaml. Every answer writes one audit event, never
the token. A request like one this process has just answered is answered from memory (token_from_memory, called
by connections.endpoint.middleware); the first, and every refusal, refresh or change, goes the full way through the
database (token_request).
"""

import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.conf import settings
from django.utils import timezone

from connections.audit.events import (
    Action,
    Outcome,
    audit_record,
    failed_authentication_count,
)
from connections.cache import token_cache
from connections.endpoint import freshness
from connections.endpoint.bot_keys import LAST_USED_RESOLUTION, NOT_VALID, bot_key_check, presented_key
from connections.endpoint.read import TokenRequestRead, token_request_read
from connections.errors import BotKeyRejected, TokenRequestError
from connections.models import AuditEvent, BotKey, Connection, OAuthToken, TokenAccess, TokenState, token_valid_for

MAX_MIN_VALIDITY = 24 * 3600
DEFAULT_MIN_VALIDITY = 60  # seconds a token given must still be valid for, unless the request says otherwise
SLUG_PATTERN = re.compile(r"[-a-zA-Z0-9_]{1,120}")
TRUE_VALUES, FALSE_VALUES = {"true", "1", "yes"}, {"false", "0", "no", ""}


@dataclass(frozen=True)
class IssuedToken:
    connection: str
    access_token: str = field(repr=False)
    token_type: str
    expires_at: datetime | None
    scope: str
    extra: dict[str, Any] = field(default_factory=dict)

    def as_json(self, now: datetime) -> dict[str, Any]:
        expires_in = None if self.expires_at is None else max(0, int((self.expires_at - now).total_seconds()))
        return {
            "connection": self.connection,
            "access_token": self.access_token,
            "token_type": self.token_type,
            "expires_at": self.expires_at.strftime("%Y-%m-%dT%H:%M:%SZ") if self.expires_at else None,
            "expires_in": expires_in,
            "scope": self.scope,
            "extra": self.extra,
        }


def _parse_params(params: Mapping[str, str]) -> tuple[int, bool]:
    raw_validity = params.get("min_validity", str(DEFAULT_MIN_VALIDITY))
    try:
        min_validity = int(raw_validity)
    except ValueError:
        min_validity = -1
    if not 0 <= min_validity <= MAX_MIN_VALIDITY:
        raise TokenRequestError(400, "bad_request", f"min_validity must be whole seconds from 0 to {MAX_MIN_VALIDITY}.")
    raw_force = params.get("force_refresh", "false").lower()
    if raw_force not in TRUE_VALUES | FALSE_VALUES:
        raise TokenRequestError(400, "bad_request", "force_refresh must be true or false.")
    return min_validity, raw_force in TRUE_VALUES


def _seconds_left_in_this_minute() -> int:
    return max(1, math.ceil(60 - time.time() % 60))


def _read(authorization: str, slug: str | None, remote_addr: str | None, for_proxy: bool) -> TokenRequestRead:
    """Everything the answer needs, with the presented key checked; or a TokenRequestError: 401, or 429 once this
    address has failed too often this minute (counted before the answer, so a flood costs one cache increment
    each; a working key is never refused)."""
    try:
        presented = presented_key(authorization)
        read = token_request_read(presented.key_id, slug, for_proxy=for_proxy)
        if read is None:  # no key has this id
            raise BotKeyRejected(NOT_VALID)
        bot_key_check(presented, read.key, remote_addr=remote_addr)
        return read
    except BotKeyRejected as exc:
        failures = failed_authentication_count(where="token-endpoint", remote_addr=remote_addr)
        limit = settings.TOKEN_AUTH_FAILURES_PER_MINUTE
        if limit and failures.count > limit:
            error = TokenRequestError(
                429,
                "rate_limited",
                "Too many failed authentications from this address; retry shortly with a valid key.",
                _seconds_left_in_this_minute(),
            )
        else:
            error = TokenRequestError(401, "invalid_key", str(exc))
        error.audited = failures.recorded_alone
        raise error from None


def _check_rate(key: BotKey) -> None:
    limit = settings.TOKEN_RATE_LIMIT_PER_MINUTE
    if not limit:
        return
    window = int(time.time() // 60)
    if token_cache.rate_take(key.key_id, window, limit):
        return  # no round trip to the cache: the next report counts it
    # At its limit as far as this process knows: count this request, and those this process has not reported
    # yet, with the other processes' now.
    count = token_cache.rate_count(key.key_id, window, 1 + token_cache.rate_unreported(key.key_id, window))
    token_cache.rate_total_seen(key.key_id, window, count)
    if count > limit:
        raise TokenRequestError(
            429,
            "rate_limited",
            f"This key may ask for {limit} tokens a minute; retry shortly.",
            _seconds_left_in_this_minute(),
        )


def _connection_for(read: TokenRequestRead, slug: str | None) -> Connection:
    if slug is None:  # not a slug's shape: nothing can be named so
        raise TokenRequestError(404, "not_found", "No connection has that name.")
    connection, key = read.connection, read.key
    if connection is None:
        raise TokenRequestError(404, "not_found", f"No connection is named {slug!r}.")
    if not read.invited:
        raise TokenRequestError(
            403, "forbidden", f"None of the roles of {key.user.get_username()} is invited to use {slug}."
        )
    if not connection.is_enabled:
        raise TokenRequestError(403, "forbidden", f"{slug} is disabled by an administrator.")
    return connection


def token_from_memory(
    *, authorization: str, slug: str, params: Mapping[str, str], remote_addr: str | None = None
) -> IssuedToken | None:
    """The answer kept from an earlier request (counted and audited like any answer), or None when the full path
    (token_request) must answer this one."""
    try:
        min_validity, force_refresh = _parse_params(params)
    except TokenRequestError:
        return None
    if force_refresh:
        return None
    cached = answer_from_memory(authorization, slug, min_validity, remote_addr=remote_addr)
    return cached.answer if cached is not None else None


def answer_from_memory(
    authorization: str, slug: str, min_validity: int, *, remote_addr: str | None, for_proxy: bool = False
) -> token_cache.CachedAnswer | None:
    """What this process kept from the full path's answer to the same key for the same connection, while it still
    holds and the key is under its limit (the request is then counted, and a token answer audited); else None."""
    try:
        presented = presented_key(authorization)
    except BotKeyRejected:
        return None
    cached = token_cache.find(presented.key_id, slug, for_proxy=for_proxy)
    if cached is None:
        return None
    now = timezone.now()
    usable = (
        presented.matches(cached.digest)
        and (cached.key_expires_at is None or cached.key_expires_at > now)
        and now - cached.last_used_at <= LAST_USED_RESOLUTION  # else the full path writes last-used
        and token_valid_for(cached.token_expires_at, now, min_validity)
    )
    if not usable:
        return None
    return cached if token_cache.use(cached, now=now, remote_addr=remote_addr) else None


def answer_remember(
    read: TokenRequestRead, read_at: float, token: OAuthToken, answer: Any, audit: dict[str, Any], for_proxy: bool
) -> None:
    """Keep the full path's answer (an IssuedToken, or what the API proxy calls with) for the key's next request."""
    key = read.key
    # bot_key_check noted the key's use: an answer from memory is given only while that is recent.
    if token.state != TokenState.ACTIVE or not settings.TOKEN_CACHE_ENABLED or key.last_used_at is None:
        return
    cached = token_cache.CachedAnswer(
        key_id=key.key_id,
        digest=key.digest,
        key_expires_at=key.expires_at,
        last_used_at=key.last_used_at,
        token_expires_at=token.expires_at,
        answer=answer,
        audit=audit,
        identity=read.identity,
        read_at=read_at,
        token_id=token.pk,
        token_version=(token.generation, token.state),
        for_proxy=for_proxy,
    )
    token_cache.remember(cached)


@dataclass(frozen=True)
class CheckedToken:
    """A request that passed every check (key, rate, invitation, the connection's token access), with the token to
    use: what the token endpoint answers with, and what the API proxy calls with."""

    read: TokenRequestRead
    connection: Connection
    token: OAuthToken = field(repr=False)


# The token access that refuses each way of using a token (Connection.token_access).
REFUSING_ACCESS = {Action.TOKEN_REQUEST: TokenAccess.PROXY, Action.PROXY_REQUEST: TokenAccess.TOKEN}


def _check_access(connection: Connection, action: Action) -> None:
    if connection.token_access != REFUSING_ACCESS[action]:
        return
    if action == Action.TOKEN_REQUEST:
        detail = (
            f"{connection.slug} is for the API proxy only: no bot may hold its token. Call its API through "
            f"/api/v1/connections/{connection.slug}/proxy/<path> instead."
        )
    else:
        detail = f"{connection.slug} gives its token to bots (token endpoint only): the API proxy is closed for it."
    raise TokenRequestError(403, "forbidden", detail)


def token_checked(
    *,
    authorization: str,
    slug: str,
    params: Mapping[str, str],
    remote_addr: str | None = None,
    action: Action = Action.TOKEN_REQUEST,
    counted: bool = False,
) -> CheckedToken:
    """The token endpoint's checks and its token, shared with the API proxy (action: whose refusals these are, and
    which token access refuses it; counted: the request was counted against the key's rate limit already). A
    refusal is audited here, under `action`; a success is the caller's to audit."""
    possible_slug = slug if SLUG_PATTERN.fullmatch(slug) else None
    key: BotKey | None = None
    connection: Connection | None = None
    checked: CheckedToken | None = None
    detail, audited = "", True
    try:
        read = _read(authorization, possible_slug, remote_addr, for_proxy=action == Action.PROXY_REQUEST)
        key = read.key
        if not counted:
            _check_rate(key)
        min_validity, force_refresh = _parse_params(params)
        connection = _connection_for(read, possible_slug)
        _check_access(connection, action)
        checked = CheckedToken(read, connection, freshness.token_to_give(connection, read, min_validity, force_refresh))
        return checked
    except TokenRequestError as exc:
        detail, audited = f"{exc.status} {exc.error}: {exc.detail}", exc.audited
        raise
    finally:
        # A refusal is written now, in the request (an unexpected error too); False: a failed authentication
        # counted with others (connections.audit.events).
        if checked is None and audited:
            _refusal_record(action, key, connection, slug, possible_slug, detail, remote_addr)


def token_forced(checked: CheckedToken) -> OAuthToken:
    """A token the API refused (401): refreshed as force_refresh=true does, through the single flight, so that
    a refresh finished since this request read its token is taken instead of another."""
    return freshness.token_fresh(checked.connection, checked.token, 0, True, checked.read.read_at)


def token_request(
    *, authorization: str, slug: str, params: Mapping[str, str], remote_addr: str | None = None
) -> IssuedToken:
    """Answer one bot's request for a token through the database (token_from_memory first, for a request like one
    just answered). Raises TokenRequestError for every refusal."""
    read_at = token_cache.clock()  # no later than the read the answer may be kept under
    checked = token_checked(authorization=authorization, slug=slug, params=params, remote_addr=remote_addr)
    read, connection, token = checked.read, checked.connection, checked.token
    detail = f"Token expiring {token.expires_at:%Y-%m-%d %H:%M:%S}" if token.expires_at else ""
    answer = IssuedToken(
        connection=connection.slug,
        access_token=token.access_token,
        token_type=token.token_type or "Bearer",
        expires_at=token.expires_at,
        scope=token.scope,
        extra=token.extra,
    )
    # An answer is written by this process's next report, with those it gives from memory
    # (connections.cache.token_cache).
    event = {
        **audit_subject(checked),
        "action": Action.TOKEN_REQUEST.value,
        "outcome": Outcome.SUCCESS.value,
        "detail": detail,
        "kind": AuditEvent.Kind.FULL.value,  # rolled up with the key's other answers (connections.audit.rows)
    }
    token_cache.audit_later(event, timezone.now(), remote_addr)
    from_memory = {**event, "kind": AuditEvent.Kind.MEMORY.value}
    answer_remember(read, read_at, token, answer, from_memory, for_proxy=False)
    return answer


def _refusal_record(
    action: Action,
    key: BotKey | None,
    connection: Connection | None,
    slug: str,
    possible_slug: str | None,
    detail: str,
    remote_addr: str | None,
) -> None:
    """A refused request's audit event. When no connection is linked (none has that slug, or the key may not use
    it), the slug asked for is still its connection label, so that the audit list's connection filter finds it;
    a name that is not a slug's shape is only quoted, cut short, in the detail."""
    audit_record(
        action=action,
        outcome=Outcome.FAILURE,
        connection=connection,
        # SLUG_PATTERN bounds a possible slug to the column's length.
        connection_label=possible_slug or "",
        actor=key.user if key else None,
        actor_label=actor_label(key),
        detail=detail if connection or possible_slug or not slug else f"{detail} [{slug[:60]!r}]",
        remote_addr=remote_addr,
    )


def audit_subject(checked: CheckedToken) -> dict[str, Any]:
    """Who asked for what: the fields of an answer's audit event that a request's outcome does not change."""
    key, connection = checked.read.key, checked.connection
    return {
        "actor_id": key.user.pk,
        "actor_label": actor_label(key),
        "connection_id": connection.pk,
        "connection_label": connection.slug,
    }


def actor_label(key: BotKey | None) -> str:
    return f"{key.user.get_username()[:120]} (key {key.key_id})" if key else "unknown key"
