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
from connections.endpoint.bot_keys import LAST_USED_RESOLUTION, NOT_VALID, bot_key_check, presented_key
from connections.endpoint.read import TokenRequestRead, token_request_read
from connections.engine.refresh import app_token_obtain, token_refresh
from connections.errors import BotKeyRejected, ProviderError, TokenGone, TokenRequestError
from connections.models import BotKey, Connection, OAuthToken, TokenState, token_valid_for

MAX_MIN_VALIDITY = 24 * 3600
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
    raw_validity = params.get("min_validity", "60")
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


def _read(authorization: str, slug: str | None, remote_addr: str | None) -> TokenRequestRead:
    """Everything the answer needs, with the presented key checked; or a TokenRequestError: 401, or 429 once this
    address has failed too often this minute (counted before the answer, so a flood costs one cache increment
    each; a working key is never refused)."""
    try:
        presented = presented_key(authorization)
        read = token_request_read(presented.key_id, slug)
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


def _provider_failure(exc: ProviderError, token: OAuthToken | None) -> TokenRequestError:
    if exc.permanent:
        return TokenRequestError(
            409,
            "reauthorization_required",
            f"The provider rejected the grant ({exc.error}): an administrator or the user must authorize again.",
        )
    if exc.retry_after:  # the provider said when to ask again
        retry_after = math.ceil(exc.retry_after)
    else:
        retry_after = _retry_after(token) if token is not None else 30
    return TokenRequestError(
        503,
        "provider_unavailable",
        f"The provider is unavailable and no valid token is left: {exc.message}",
        retry_after,
    )


def _retry_after(token: OAuthToken) -> int:
    if token.next_refresh_at is None:
        return 30
    return max(1, math.ceil((token.next_refresh_at - timezone.now()).total_seconds()))


def _fresh_token(connection: Connection, token: OAuthToken, min_validity: int, force_refresh: bool) -> OAuthToken:
    if token.state == TokenState.REAUTHORIZATION_REQUIRED:
        raise TokenRequestError(
            409, "reauthorization_required", f"{connection.slug} must be authorized again: {token.last_error}"
        )
    if not force_refresh and token.is_valid(min_validity=min_validity):
        return token
    in_backoff = (
        token.state == TokenState.REFRESH_FAILING and token.next_refresh_at and token.next_refresh_at > timezone.now()
    )
    # A forced refresh asks the provider whatever the backoff says: the bot's token was just refused.
    if in_backoff and not force_refresh:
        if token.is_valid():
            return token  # refreshes are failing, but this token still works
        raise TokenRequestError(
            424,
            "refresh_backoff",
            f"Recent refreshes of {connection.slug} failed ({token.last_error}) and the token has expired.",
            _retry_after(token),
        )
    gone = TokenRequestError(409, "not_connected", f"{connection.slug} was disconnected meanwhile.")
    try:
        # The generation read at the start of this request: a refresh that finished since then is ours to take.
        return token_refresh(token=token, actor_label="token endpoint", min_generation=token.generation)
    except TokenGone:
        raise gone from None
    except ProviderError as exc:
        try:
            token.refresh_from_db()
        except OAuthToken.DoesNotExist:
            raise gone from None
        if not exc.permanent and token.is_valid():
            if force_refresh:  # the bot's token was refused: the same one back would be no answer
                raise _forced_refresh_failure(exc, token) from None
            return token
        raise _provider_failure(exc, token) from None


def _forced_refresh_failure(exc: ProviderError, token: OAuthToken) -> TokenRequestError:
    """A forced refresh that could not be made (the provider down, or another process's refresh unfinished): 503,
    saying until when the current token is valid, so that a bot may ask again without force_refresh."""
    until = f"until {token.expires_at:%Y-%m-%dT%H:%M:%SZ}" if token.expires_at else "with no expiry"
    retry_after = math.ceil(exc.retry_after) if exc.retry_after else _retry_after(token)
    return TokenRequestError(
        503,
        "provider_unavailable",
        f"The forced refresh failed: {exc.message} The current token is valid {until}; ask again without "
        "force_refresh to get it.",
        retry_after,
    )


def token_from_memory(
    *, authorization: str, slug: str, params: Mapping[str, str], remote_addr: str | None = None
) -> IssuedToken | None:
    """The answer kept from an earlier request (counted and audited like any answer), or None when the full path
    (token_request) must answer this one."""
    try:
        presented = presented_key(authorization)
    except BotKeyRejected:
        return None
    now = timezone.now()
    cached = token_cache.find(presented.key_id, slug)
    if cached is None:
        return None
    try:
        min_validity, force_refresh = _parse_params(params)
    except TokenRequestError:
        return None
    usable = (
        not force_refresh
        and presented.matches(cached.digest)
        and (cached.key_expires_at is None or cached.key_expires_at > now)
        and now - cached.last_used_at <= LAST_USED_RESOLUTION  # else the full path writes last-used
        and token_valid_for(cached.token_expires_at, now, min_validity)
    )
    if not usable:
        return None
    return cached.answer if token_cache.use(cached, now=now, remote_addr=remote_addr) else None


def _answer_remember(
    read: TokenRequestRead, read_at: float, token: OAuthToken, answer: IssuedToken, audit: dict[str, Any]
) -> None:
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
    )
    token_cache.remember(cached)


def _token_to_give(
    connection: Connection, read: TokenRequestRead, min_validity: int, force_refresh: bool
) -> OAuthToken:
    """The stored token (obtained first for client credentials), refreshed if it would not last long enough."""
    token = read.token
    if token is None and not connection.uses_authorization_code:
        try:
            token = app_token_obtain(connection=connection)
        except ProviderError as exc:
            raise _provider_failure(exc, None) from None
    if token is None:
        who = f"{read.key.user.get_username()} has not" if connection.is_user_specific else "nobody has"
        raise TokenRequestError(409, "not_connected", f"{connection.slug} is not connected: {who} authorized it yet.")
    return _fresh_token(connection, token, min_validity, force_refresh)


def token_request(
    *, authorization: str, slug: str, params: Mapping[str, str], remote_addr: str | None = None
) -> IssuedToken:
    """Answer one bot's request for a token through the database (token_from_memory first, for a request like one
    just answered). Raises TokenRequestError for every refusal."""
    read_at = time.monotonic()  # no later than the read the answer may be kept under
    possible_slug = slug if SLUG_PATTERN.fullmatch(slug) else None
    key: BotKey | None = None
    connection: Connection | None = None
    outcome, detail, audited = Outcome.FAILURE, "", True
    try:
        read = _read(authorization, possible_slug, remote_addr)
        key = read.key
        _check_rate(key)
        min_validity, force_refresh = _parse_params(params)
        connection = _connection_for(read, possible_slug)
        token = _token_to_give(connection, read, min_validity, force_refresh)
        outcome = Outcome.SUCCESS
        detail = f"Token expiring {token.expires_at:%Y-%m-%d %H:%M:%S}" if token.expires_at else ""
        answer = IssuedToken(
            connection=connection.slug,
            access_token=token.access_token,
            token_type=token.token_type or "Bearer",
            expires_at=token.expires_at,
            scope=token.scope,
            extra=token.extra,
        )
    except TokenRequestError as exc:
        detail, audited = f"{exc.status} {exc.error}: {exc.detail}", exc.audited
        raise
    finally:
        # A refusal is written now, in the request (an unexpected error too); False: a failed authentication
        # counted with others (connections.audit.events).
        if outcome != Outcome.SUCCESS and audited:
            _refusal_record(key, connection, slug, possible_slug, detail, remote_addr)
    # An answer is written by this process's next report, with those it gives from memory
    # (connections.cache.token_cache).
    event = {
        "actor_id": read.key.user.pk,
        "actor_label": _actor_label(read.key),
        "connection_id": connection.pk,
        "connection_label": connection.slug,
        "action": Action.TOKEN_REQUEST.value,
        "outcome": Outcome.SUCCESS.value,
        "detail": detail,
    }
    token_cache.audit_later(event, timezone.now(), remote_addr)
    from_memory = {**event, "detail": f"{detail} {token_cache.FROM_MEMORY}".lstrip()}
    _answer_remember(read, read_at, token, answer, from_memory)
    return answer


def _refusal_record(
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
        action=Action.TOKEN_REQUEST,
        outcome=Outcome.FAILURE,
        connection=connection,
        # SLUG_PATTERN bounds a possible slug to the column's length.
        connection_label=possible_slug or "",
        actor=key.user if key else None,
        actor_label=_actor_label(key),
        detail=detail if connection or possible_slug or not slug else f"{detail} [{slug[:60]!r}]",
        remote_addr=remote_addr,
    )


def _actor_label(key: BotKey | None) -> str:
    return f"{key.user.get_username()[:120]} (key {key.key_id})" if key else "unknown key"
