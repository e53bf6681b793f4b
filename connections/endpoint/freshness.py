"""The token a request gets: the stored one while it lasts long enough, else refreshed through the single flight
(connections.engine.refresh), or the refusal that says why there is none (connections/openapi.yaml's codes)."""

import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from datetime import datetime

from django.conf import settings
from django.utils import timezone

from connections.endpoint.read import TokenRequestRead
from connections.engine.refresh import app_token_obtain, token_refresh
from connections.errors import ProviderError, TokenGone, TokenRequestError
from connections.models import Connection, OAuthToken, TokenState


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


BUSY_RETRY_AFTER = 2  # seconds: what a request turned away from a busy refresh is told to wait
_refreshing: dict[int, int] = {}  # connection id -> this process's request threads in a refresh of its tokens
_refreshing_lock = threading.Lock()


def requests_refreshing(connection_id: int) -> int:
    """How many of this process's request threads are in a refresh of this connection's tokens (calling its
    provider, or waiting for whoever does)."""
    with _refreshing_lock:
        return _refreshing.get(connection_id, 0)


@contextmanager
def _refresh_slot(connection: Connection) -> Iterator[None]:
    """A forced refresh's place in a refresh of this connection's tokens: at most REFRESH_WAITERS_PER_CONNECTION
    request threads at once in a process, so that a storm of forced refreshes at a provider slow to answer holds no
    more of its threads, and bots of every other connection still find one free. Past the bound the request does as
    when a wait for another's refresh runs out (ProviderError "refresh_in_progress"): 503 with Retry-After, saying
    until when the current token is valid. A token that expired is waited for by every caller, bounded in time by
    REFRESH_WAIT_SECONDS, not in number: single flight promises them the one refresh's result."""
    with _refreshing_lock:
        busy = _refreshing.get(connection.pk, 0)
        if busy >= settings.REFRESH_WAITERS_PER_CONNECTION:
            raise ProviderError(
                f"{busy} requests already wait for a refresh of {connection.slug}; try again shortly.",
                error="refresh_in_progress",
                permanent=False,
                retry_after=BUSY_RETRY_AFTER,
            )
        _refreshing[connection.pk] = busy + 1
    try:
        yield
    finally:
        with _refreshing_lock:
            if _refreshing[connection.pk] <= 1:
                del _refreshing[connection.pk]
            else:
                _refreshing[connection.pk] -= 1


def token_fresh(
    connection: Connection, token: OAuthToken, min_validity: int, force_refresh: bool, read_at: datetime | None = None
) -> OAuthToken:
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
        # The generation read at the start of this request: a refresh that finished since then is ours to take,
        # and one that failed since `read_at` ours to share.
        with _refresh_slot(connection) if force_refresh else nullcontext():
            return token_refresh(
                token=token, actor_label="token endpoint", min_generation=token.generation, failed_since=read_at
            )
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


def token_to_give(connection: Connection, read: TokenRequestRead, min_validity: int, force_refresh: bool) -> OAuthToken:
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
    return token_fresh(connection, token, min_validity, force_refresh, read.read_at)
