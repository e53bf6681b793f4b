"""The refresh engine: a lease so one process calls the provider per expiring token (single flight), fenced writes
of the outcome, failure classes with backoff and notifications, the beat sweep that claims due tokens, and the
scheduled refresh.

Rules kept here: no database transaction is open during a call to a provider; an outcome is written only while
the row is still what the refresher leased (a disconnect, a re-authorization or a newer refresh wins, and a late
result is revoked at the provider); a failure never discards a token that still works or a refresh token the
provider rotated to; every outcome writes an audit event, in the same transaction, or for a worker's batch
(connections.engine.batch) with one INSERT when the batch ends.
"""

import logging
import random
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.db import connection as db_connection
from django.db import transaction
from django.db.models import F, Q, QuerySet
from django.utils import timezone

from connections.audit.events import Action, Outcome, audit_event_row, audit_record
from connections.cache import invalidation
from connections.engine.store import (
    Fence,
    connection_client_config,
    token_store,
    token_store_refreshed,
    token_values_revoke,
)
from connections.errors import ProviderError, TokenGone
from connections.models import Connection, OAuthToken, TokenState
from connections.notify.managers import notify_managers
from connections.oauth import client as oauth_client
from connections.oauth.client import TokenResponse
from connections.ops import log_context, metrics

logger = logging.getLogger(__name__)


def lease_seconds() -> float:
    # A provider call ends by its deadline (OUTBOUND_TIMEOUT, connections.outbound.policy): the lease outlives it, and
    # the database work around it, so a live holder never loses it.
    return 2 * settings.OUTBOUND_TIMEOUT + 5


def claim_seconds() -> float:
    """How long a token the sweep claimed is not claimed again: its task runs within that, or has expired
    (claim_expiry_seconds) and the token is claimed afresh. So a token is never queued twice."""
    return lease_seconds() + 2 * settings.BEAT_INTERVAL


def claim_expiry_seconds() -> float:
    """How long a queued refresh may wait for a worker: it expires before its token can be claimed again."""
    return lease_seconds() + settings.BEAT_INTERVAL / 2


def backoff_seconds(failures: int) -> float:
    """Exponential backoff with full jitter, capped at 30 minutes (AWS architecture blog, 'Exponential Backoff
    And Jitter')."""
    return random.uniform(0.5, 1.0) * min(30 * 60, 15 * 2 ** max(failures - 1, 0))  # noqa: S311 - jitter, not a secret


def token_lease_take(token: OAuthToken, owner: str) -> tuple[Fence, OAuthToken] | None:
    """Take the token's lease if nobody holds it: the Fence its outcome will be written under, and the row as
    leased (nobody else writes it while the fence holds)."""
    now = timezone.now()
    free = Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now)
    taken = OAuthToken.objects.filter(free, pk=token.pk).update(
        lease_owner=owner, lease_expires_at=now + timedelta(seconds=lease_seconds())
    )
    leased = taken and OAuthToken.objects.filter(pk=token.pk, lease_owner=owner).first()
    if not leased:
        return None
    # Only the token's own row is read again (it is what the fence is about); its connection, provider type and
    # owner are the ones the caller read, which spares a refresh a join and a decryption of the client secret.
    leased.connection, leased.user = token.connection, token.user if token.user_id else None
    return Fence(token.pk, owner, leased.generation), leased


def tokens_lease_take(token_ids: Sequence[int], owner: str) -> list[tuple[Fence, OAuthToken]]:
    """Take the lease of each of these tokens that nobody holds, in two statements whatever their number: the
    Fence each outcome will be written under, and the rows as leased, with what a refresh reads of them."""
    now = timezone.now()
    free = Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now)
    lease_until = now + timedelta(seconds=lease_seconds())
    OAuthToken.objects.filter(free, pk__in=token_ids).update(lease_owner=owner, lease_expires_at=lease_until)
    leased = token_rows().filter(pk__in=token_ids, lease_owner=owner)
    return [(Fence(token.pk, owner, token.generation), token) for token in leased]


def tokens_lease_give_back(owner: str, token_ids: Sequence[int]) -> None:
    if token_ids:
        OAuthToken.objects.filter(pk__in=token_ids, lease_owner=owner).update(lease_owner="", lease_expires_at=None)


def token_lease_keep(fence: Fence, taken_at: float) -> bool:
    """Before a provider call under a lease taken at `taken_at` (time.monotonic()): the lease must outlast the
    call (OUTBOUND_TIMEOUT) and the write after it, or a slow call could end after someone else took the lease
    and presented the same refresh token. A lease held that long already (a batch queued behind a slow
    provider) is renewed; False if it was lost meanwhile."""
    if time.monotonic() - taken_at < lease_seconds() - settings.OUTBOUND_TIMEOUT - 5:
        return True
    return bool(fence.update(lease_expires_at=timezone.now() + timedelta(seconds=lease_seconds())))


def token_rows() -> QuerySet[OAuthToken]:
    """Tokens with what a refresh reads of them: the connection, its provider type and the owner."""
    return OAuthToken.objects.select_related("connection__provider", "user")


def _lease_give_back(fence: Fence) -> None:
    fence.update(lease_owner="", lease_expires_at=None)


def _current(token: OAuthToken) -> OAuthToken:
    current = token_rows().filter(pk=token.pk).first()
    if current is None:
        raise TokenGone()
    return current


def _fetch_new_token(connection: Connection, token: OAuthToken) -> TokenResponse:
    config = connection_client_config(connection)
    if not connection.uses_authorization_code:
        return oauth_client.app_token(config)
    if not token.refresh_token:
        raise ProviderError(
            "The provider gave no refresh token, so this token cannot be renewed: authorize again.",
            error="no_refresh_token",
            permanent=True,
        )
    return oauth_client.refresh(config, refresh_token=token.refresh_token)


def _audit(audit: list[dict] | None, **event: Any) -> None:
    """Record the event now, or add it to the batch's `audit` (written at the batch's end: audit_events_write)."""
    if audit is None:
        audit_record(**event)
    else:
        audit.append(audit_event_row(**event))


def token_refresh_complete(
    *, fence: Fence, token: OAuthToken, response: TokenResponse, actor_label: str, audit: list[dict] | None = None
) -> OAuthToken | None:
    """Store a refresh's result under its fence; None when the fence was lost (the result is then revoked at
    the provider: nobody holds its tokens)."""
    connection, failures = token.connection, token.consecutive_failures
    # With its audit event alongside, an outcome is one transaction; with the event left to the batch, one UPDATE.
    with transaction.atomic() if audit is None else nullcontext():
        stored = token_store_refreshed(fence=fence, token=token, response=response)
        if stored is not None:
            _audit(
                audit,
                action=Action.TOKEN_REFRESH,
                outcome=Outcome.SUCCESS,
                connection=connection,
                actor_label=actor_label,
                detail=f"Recovered after {failures} failure(s)." if failures else "",
            )
            if failures >= settings.REFRESH_FAILURE_NOTIFY_THRESHOLD:
                _notify_on_commit(
                    "token.refresh_recovered",
                    connection,
                    f"Refreshing {connection} works again",
                    f"{connection} was refreshed successfully after {failures} failures in a row.",
                )
    if stored is None:
        logger.warning(
            "A refresh of %s finished after the token was disconnected, authorized again or refreshed by another "
            "process; its result is dropped and revoked at the provider.",
            connection.slug,
        )
        dropped = [(response.refresh_token, "refresh_token"), (response.access_token, "access_token")]
        for problem in token_values_revoke(connection, dropped):
            logger.warning("Could not revoke the dropped result of a refresh of %s: %s", connection.slug, problem)
    return stored


def token_refresh_fail(
    *, fence: Fence, token: OAuthToken, exc: ProviderError, actor_label: str, audit: list[dict] | None = None
) -> bool:
    """Keep the token, note the failure under the fence, and schedule the next try (transient: with backoff;
    rate limited: when the provider said) or stop trying (permanent). False when the fence was lost: a newer
    grant is not the one that failed."""
    connection, rate_limited = token.connection, exc.error == oauth_client.RATE_LIMITED
    now = timezone.now()
    fields = {
        "last_error": exc.message,
        "last_error_at": now,
        "consecutive_failures": F("consecutive_failures") + 1,
        "lease_owner": "",
        "lease_expires_at": None,
    }
    if exc.refresh_token:
        fields["refresh_token"] = exc.refresh_token  # the provider rotated to it: the old one is spent
    if rate_limited:
        # The provider asked for fewer calls: nobody asks it again before it said (the token endpoint's backoff
        # rule holds too), and it does not count against the token (no failure count, no notification).
        del fields["consecutive_failures"]
        delay = exc.retry_after or oauth_client.RETRY_AFTER_DEFAULT
        fields.update(state=TokenState.REFRESH_FAILING, next_refresh_at=now + timedelta(seconds=delay))
    elif exc.permanent:
        fields.update(state=TokenState.REAUTHORIZATION_REQUIRED, next_refresh_at=None)
    else:
        delay = backoff_seconds(token.consecutive_failures + 1)
        fields.update(state=TokenState.REFRESH_FAILING, next_refresh_at=now + timedelta(seconds=delay))
    fields["refresh_due_at"] = fields["next_refresh_at"]
    with transaction.atomic() if audit is None else nullcontext():
        if not fence.rows().update(**fields):
            logger.info("A failed refresh of %s was superseded meanwhile; its failure is not recorded.", token.pk)
            return False
        invalidation.token_rows_changed(connection.slug)
        _audit(
            audit,
            action=Action.TOKEN_REFRESH,
            outcome=Outcome.FAILURE,
            connection=connection,
            actor_label=actor_label,
            detail=f"{_failure_kind(exc)}: {exc.message}",
        )
        if not rate_limited:
            _notify_failure(token, exc)
    return True


def _failure_kind(exc: ProviderError) -> str:
    if exc.error == oauth_client.RATE_LIMITED:
        return "Rate limited"
    return "Permanent failure" if exc.permanent else "Transient failure"


def _notify_failure(token: OAuthToken, exc: ProviderError) -> None:
    """The change into 'reauthorization required' notifies once; a transient failure when it becomes sustained."""
    connection, failures = token.connection, token.consecutive_failures + 1
    owner = f" (the token of {token.user.get_username()})" if token.user_id else ""
    if exc.permanent and token.state != TokenState.REAUTHORIZATION_REQUIRED:
        _notify_on_commit(
            "token.reauthorization_required",
            connection,
            f"{connection} needs to be authorized again",
            f"The provider rejected the refresh of {connection}{owner}: {exc.message}\n\n"
            "Bots get no token for it until someone authorizes it again (Connect / Re-authorize).",
        )
    elif not exc.permanent and failures == settings.REFRESH_FAILURE_NOTIFY_THRESHOLD:
        _notify_on_commit(
            "token.refresh_failing",
            connection,
            f"Refreshing {connection} keeps failing",
            f"{failures} refreshes of {connection}{owner} failed in a row; the last: {exc.message}\n\n"
            "The current token is served while it is valid, and refreshing is retried with backoff. You will get "
            "a notice when it works again.",
        )


def _notify_on_commit(event: str, connection: Connection, subject: str, message: str) -> None:
    transaction.on_commit(lambda: notify_managers(event=event, connection=connection, subject=subject, message=message))


def _failed_since(token: OAuthToken, started: datetime) -> bool:
    return bool(token.last_error_at and token.last_error_at >= started)


def _shared_failure(token: OAuthToken) -> ProviderError:
    """Someone else's refresh failed while we waited: share their result rather than ask the provider again
    (a rejected refresh token must not be presented once per waiting caller)."""
    return ProviderError(
        token.last_error, error="shared_failure", permanent=token.state == TokenState.REAUTHORIZATION_REQUIRED
    )


def _lease_or_settled(
    token: OAuthToken, seen_generation: int, owner: str, wait_seconds: float
) -> tuple[Fence, OAuthToken] | OAuthToken:
    """The lease and the row as leased, or the token someone else refreshed meanwhile (their failure is raised)."""
    started = timezone.now()
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
        _lease_give_back(fence)  # settled while we took the lease: share that result
        if current.generation > seen_generation:
            return current
        raise _shared_failure(current)
    return leased


def token_refresh(
    *, token: OAuthToken, actor_label: str, min_generation: int | None = None, wait_seconds: float | None = None
) -> OAuthToken:
    """Get a new access token for `token`, with a lease so only one process calls the provider at a time.

    A caller that finds someone else refreshing waits for them and takes their result. When `min_generation`
    is given, a token already newer than it counts as fresh (the caller's request began before that refresh).
    Raises ProviderError when the provider call fails (TokenGone when the token was disconnected meanwhile);
    the stored token is kept either way. `wait_seconds` (default REFRESH_WAIT_SECONDS): how long to wait for
    another process's refresh before giving up with error "refresh_in_progress".
    """
    seen_generation = token.generation if min_generation is None else min_generation
    wait = settings.REFRESH_WAIT_SECONDS if wait_seconds is None else wait_seconds
    leased = _lease_or_settled(token, seen_generation, uuid.uuid4().hex, wait)
    if isinstance(leased, OAuthToken):
        return leased
    fence, token = leased
    return token_refresh_leased(fence=fence, token=token, actor_label=actor_label)


def token_refresh_leased(
    *, fence: Fence, token: OAuthToken, actor_label: str, audit: list[dict] | None = None
) -> OAuthToken:
    """Call the provider for a token whose lease is held, and write the outcome under the fence (its audit
    event recorded with it, or added to `audit`). Raises ProviderError when the call fails."""
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
        _lease_give_back(fence)  # nothing known about the outcome: the next caller tries
        raise
    metrics.refresh_counted(provider, "success", time.monotonic() - started)
    stored = token_refresh_complete(fence=fence, token=token, response=response, actor_label=actor_label, audit=audit)
    return stored if stored is not None else _current(token)


def token_refresh_claim_due(*, now: datetime | None = None) -> list[tuple[int, int]]:
    """The beat sweep's claim: up to REFRESH_SWEEP_BATCH tokens due for refresh, as (token id, generation) pairs
    to queue. token_refresh_claims() claims them all, batch after batch.

    Due means due before the next sweep, so no token waits a whole interval past its refresh time. Claiming
    moves the next refresh time claim_seconds() ahead: the sweeps in between do not queue it again, and a task
    that is lost (its worker killed, or expired in the queue) is queued again after that.
    """
    now = now or timezone.now()
    cutoff = now + timedelta(seconds=settings.BEAT_INTERVAL)
    claimed_until = now + timedelta(seconds=claim_seconds())
    if db_connection.vendor == "postgresql":
        return _claim_batch_postgresql(cutoff, claimed_until, settings.REFRESH_SWEEP_BATCH)
    due = list(
        OAuthToken.objects.filter(next_refresh_at__lte=cutoff, connection__is_enabled=True)
        .order_by("next_refresh_at")
        .values_list("id", "generation")[: settings.REFRESH_SWEEP_BATCH]
    )
    if due:
        OAuthToken.objects.filter(pk__in=[token_id for token_id, _ in due], next_refresh_at__lte=cutoff).update(
            next_refresh_at=claimed_until
        )
    return due


def _claim_batch_postgresql(cutoff: datetime, claimed_until: datetime, size: int) -> list[tuple[int, int]]:
    # One statement a batch. SKIP LOCKED: a row a refresh is writing right now is claimed by the next sweep
    # rather than waited for (two sweeps, or a sweep and a refresh, never block each other).
    tokens, connections = OAuthToken._meta.db_table, Connection._meta.db_table
    with db_connection.cursor() as cursor:
        cursor.execute(
            f"""
            UPDATE {tokens} SET next_refresh_at = %s
            WHERE id IN (
                SELECT token.id FROM {tokens} token JOIN {connections} conn ON conn.id = token.connection_id
                WHERE token.next_refresh_at <= %s AND conn.is_enabled
                ORDER BY token.next_refresh_at LIMIT %s
                FOR UPDATE OF token SKIP LOCKED
            )
            RETURNING id, generation
            """,  # noqa: S608 - the table names are the models' own; every value is a parameter
            [claimed_until, cutoff, size],
        )
        return [(token_id, generation) for token_id, generation in cursor.fetchall()]


def token_refresh_claims(*, now: datetime | None = None) -> Iterator[list[tuple[int, int]]]:
    """Claim every token due, REFRESH_SWEEP_BATCH at a time, until none is left: the sweep's throughput follows
    the work, not its configuration."""
    while batch := token_refresh_claim_due(now=now):
        yield batch
        if len(batch) < settings.REFRESH_SWEEP_BATCH:
            return


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


def app_token_obtain(*, connection: Connection, authorized_by: AbstractBaseUser | None = None) -> OAuthToken:
    """A client-credentials or JWT bearer connection needs no person to authorize it: fetch and store a token now."""
    response = oauth_client.app_token(connection_client_config(connection))
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
