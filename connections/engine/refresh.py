"""The refresh engine: renewing a token under its lease (connections.engine.lease) so one process calls the
provider per expiring token (single flight), waiting for another process's refresh and taking its result, the
scheduled refresh of what the sweep claimed (connections.engine.sweep), and a first token for the grants that need
nobody. Outcomes are written by connections.engine.outcomes.

Rules kept here: no database transaction is open during a call to a provider; an outcome is written only while
the row is still what the refresher leased (a disconnect, a re-authorization or a newer refresh wins, and a late
result is revoked at the provider); a failure never discards a token that still works or a refresh token the
provider rotated to; every outcome writes an audit event, in the same transaction, or for a worker's batch
(connections.engine.batch) with one INSERT when the batch ends.
"""

import logging
import time
import uuid
from datetime import datetime

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from connections.audit.events import Action, Outcome, audit_record
from connections.engine import rollover
from connections.engine.lease import lease_give_back, token_lease_take, token_rows
from connections.engine.outcomes import ResultBatch, token_refresh_complete, token_refresh_fail
from connections.engine.store import Fence, token_store
from connections.errors import ProviderError, TokenGone
from connections.models import Connection, OAuthToken, TokenState
from connections.oauth import client as oauth_client
from connections.oauth.client import TokenResponse
from connections.ops import log_context, metrics

logger = logging.getLogger(__name__)


def _current(token: OAuthToken) -> OAuthToken:
    current = token_rows().filter(pk=token.pk).first()
    if current is None:
        raise TokenGone()
    return current


def _fetch_new_token(connection: Connection, token: OAuthToken) -> TokenResponse:
    # With the next client secret or signing key when the current one is refused (connections.engine.rollover).
    if not connection.uses_authorization_code:
        return rollover.provider_call(connection, oauth_client.app_token)
    if not token.refresh_token:
        raise ProviderError(
            "The provider gave no refresh token, so this token cannot be renewed: authorize again.",
            error="no_refresh_token",
            permanent=True,
        )
    refresh_token = token.refresh_token
    return rollover.provider_call(connection, lambda config: oauth_client.refresh(config, refresh_token=refresh_token))


def _failed_since(token: OAuthToken, started: datetime) -> bool:
    return bool(token.last_error_at and token.last_error_at >= started)


def _shared_failure(token: OAuthToken) -> ProviderError:
    """Someone else's refresh failed while we waited: share their result rather than ask the provider again
    (a rejected refresh token must not be presented once per waiting caller)."""
    return ProviderError(
        token.last_error, error="shared_failure", permanent=token.state == TokenState.REAUTHORIZATION_REQUIRED
    )


def _lease_or_settled(
    token: OAuthToken, seen_generation: int, owner: str, wait_seconds: float, failed_since: datetime | None = None
) -> tuple[Fence, OAuthToken] | OAuthToken:
    """The lease and the row as leased, or the token someone else refreshed meanwhile (their failure is raised:
    one recorded since `failed_since`, the caller's read of the row, or since now)."""
    started = failed_since or timezone.now()
    deadline = time.monotonic() + wait_seconds
    while (leased := token_lease_take(token, owner)) is None:
        current = _current(token)
        if current.generation > seen_generation:
            return current
        if _failed_since(current, started):
            raise _shared_failure(current)
        if time.monotonic() > deadline:
            raise ProviderError(
                "Another process is refreshing this token and has not finished; try again shortly.",
                error="refresh_in_progress",
                permanent=False,
            )
        time.sleep(0.05)
    fence, current = leased
    if current.generation > seen_generation or _failed_since(current, started):
        lease_give_back(fence)  # settled while we took the lease: share that result
        if current.generation > seen_generation:
            return current
        raise _shared_failure(current)
    return leased


def token_refresh(
    *,
    token: OAuthToken,
    actor_label: str,
    min_generation: int | None = None,
    wait_seconds: float | None = None,
    failed_since: datetime | None = None,
) -> OAuthToken:
    """Get a new access token for `token`, with a lease so only one process calls the provider at a time.

    A caller that finds someone else refreshing waits for them and takes their result. When `min_generation`
    is given, a token already newer than it counts as fresh (the caller's request began before that refresh); a
    failure recorded since `failed_since` (when the caller read the row) is shared rather than asked again.
    Raises ProviderError when the provider call fails (TokenGone when the token was disconnected meanwhile);
    the stored token is kept either way. `wait_seconds` (default REFRESH_WAIT_SECONDS): how long to wait for
    another process's refresh before giving up with error "refresh_in_progress".
    """
    seen_generation = token.generation if min_generation is None else min_generation
    wait = settings.REFRESH_WAIT_SECONDS if wait_seconds is None else wait_seconds
    leased = _lease_or_settled(token, seen_generation, uuid.uuid4().hex, wait, failed_since)
    if isinstance(leased, OAuthToken):
        return leased
    fence, token = leased
    return token_refresh_leased(fence=fence, token=token, actor_label=actor_label)


def token_refresh_leased(
    *,
    fence: Fence,
    token: OAuthToken,
    actor_label: str,
    audit: list[dict] | None = None,
    results: ResultBatch | None = None,
) -> OAuthToken:
    """Call the provider for a token whose lease is held, and write the outcome under the fence (its audit
    event recorded with it, or added to `audit`; a new token written with the other results of a worker's batch
    when `results` is given). Raises ProviderError when the call fails."""
    provider, started = token.connection.provider.slug, time.monotonic()
    try:
        with log_context.about_connection(token.connection.slug):
            response = _fetch_new_token(token.connection, token)
    except ProviderError as exc:
        kind = (
            "rate_limited" if exc.error == oauth_client.RATE_LIMITED else "permanent" if exc.permanent else "transient"
        )
        metrics.refresh_counted(provider, kind, time.monotonic() - started)
        token_refresh_fail(fence=fence, token=token, exc=exc, actor_label=actor_label, audit=audit)
        raise
    except BaseException:
        lease_give_back(fence)  # nothing known about the outcome: the next caller tries
        raise
    metrics.refresh_counted(provider, "success", time.monotonic() - started)
    if results is not None:
        stored = results.store(fence, token, response)
    else:
        stored = token_refresh_complete(
            fence=fence, token=token, response=response, actor_label=actor_label, audit=audit
        )
    return stored if stored is not None else _current(token)


def token_refresh_scheduled(*, token_id: int, generation: int, queued_at: datetime | None = None) -> None:
    """A queued refresh of one token: token_refresh_queued() with its row read now (gone: nothing to do)."""
    token = token_rows().filter(pk=token_id).first()
    if token is not None:
        token_refresh_queued(token=token, generation=generation, queued_at=queued_at)


def token_refresh_queued(*, token: OAuthToken, generation: int, queued_at: datetime | None = None) -> None:
    """A queued refresh of `token` (a row of token_rows() read after it was queued): renew it unless someone did
    since it was queued, or tried and failed since (the backoff that failure set rules). Failures are recorded,
    not raised: the sweep retries them on the backoff schedule. A refresh another process is making is left to
    it."""
    if not token_refresh_wanted(token, generation=None, queued_at=queued_at):
        return
    try:
        token_refresh(token=token, actor_label="refresh worker", min_generation=generation, wait_seconds=0)
    except ProviderError as exc:
        log = logger.info if exc.error == "refresh_in_progress" else logger.warning
        log("Refresh of %s failed: %s", token.connection.slug, exc.message)


def token_refresh_wanted(token: OAuthToken, *, generation: int | None, queued_at: datetime | None) -> bool:
    """Whether a refresh queued for `token` (claimed at `generation`, queued at `queued_at`) is still to be made:
    not if the token needs a person, its connection is off, someone renewed it since it was claimed, or tried
    and failed since it was queued (the backoff that failure set rules)."""
    if token.state == TokenState.REAUTHORIZATION_REQUIRED or not token.connection.is_enabled:
        return False
    if generation is not None and token.generation > generation:
        return False
    return queued_at is None or not _failed_since(token, queued_at)


def app_token_obtain(*, connection: Connection, authorized_by: User | None = None) -> OAuthToken:
    """A client-credentials or JWT bearer connection needs no person to authorize it: fetch and store a token now."""
    response = rollover.provider_call(connection, oauth_client.app_token)
    with transaction.atomic():
        token = token_store(connection=connection, user=None, response=response, authorized_by=authorized_by)
        audit_record(
            action=Action.TOKEN_OBTAIN,
            outcome=Outcome.SUCCESS,
            connection=connection,
            actor=authorized_by,
            actor_label="" if authorized_by else "token endpoint",
            detail=f"{connection.get_grant_type_display()} token fetched.",
        )
    return token
