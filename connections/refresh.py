"""The refresh engine: a lease so one process calls the provider per expiring token (single flight), failure
classes with backoff and notifications, the beat sweep that claims due tokens, and the scheduled refresh.

Rules kept here: no database transaction is open during a call to a provider; a failure never discards a
token that still works or a refresh token that was not replaced; every outcome writes an audit event.
"""

import logging
import random
import time
import uuid
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from connections import oauth_client, signals
from connections.audit import Action, Outcome, audit_record
from connections.models import Connection, OAuthToken, TokenState
from connections.notifications import notify_managers
from connections.oauth_client import ProviderError, TokenResponse
from connections.tokens import connection_client_config, token_store

logger = logging.getLogger(__name__)


def _try_lease(token_id: int, owner: str, seconds: float) -> bool:
    now = timezone.now()
    return bool(
        OAuthToken.objects.filter(pk=token_id)
        .filter(Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now))
        .update(lease_owner=owner, lease_expires_at=now + timedelta(seconds=seconds))
    )


def _lease_seconds() -> float:
    # Longer than the slowest provider call (connect + read timeouts), so a live holder never loses it.
    return 2 * settings.OUTBOUND_TIMEOUT + 5


def backoff_seconds(failures: int) -> float:
    """Exponential backoff with full jitter, capped at 30 minutes (AWS architecture blog, 'Exponential Backoff
    And Jitter')."""
    return random.uniform(0.5, 1.0) * min(30 * 60, 15 * 2 ** max(failures - 1, 0))  # noqa: S311 - jitter, not a secret


def _fetch_new_token(connection: Connection, token: OAuthToken) -> TokenResponse:
    config = connection_client_config(connection)
    if not connection.uses_authorization_code:
        return oauth_client.client_credentials(config)
    if not token.refresh_token:
        raise ProviderError(
            "The provider gave no refresh token, so this token cannot be renewed: authorize again.",
            error="no_refresh_token",
            permanent=True,
        )
    return oauth_client.refresh(config, refresh_token=token.refresh_token)


def _record_refresh_failure(token: OAuthToken, exc: ProviderError, actor_label: str) -> OAuthToken:
    """Keep the token, note the failure, and schedule the next try (transient) or stop trying (permanent)."""
    connection = token.connection
    now = timezone.now()
    with transaction.atomic():
        fields = {
            "last_error": exc.message,
            "last_error_at": now,
            "consecutive_failures": F("consecutive_failures") + 1,
            "lease_owner": "",
            "lease_expires_at": None,
        }
        tokens = OAuthToken.objects.filter(pk=token.pk)
        became_permanent = 0
        if exc.permanent:
            # Only the change into this state notifies, so however many callers fail, managers hear it once.
            became_permanent = tokens.exclude(state=TokenState.REAUTHORIZATION_REQUIRED).update(
                state=TokenState.REAUTHORIZATION_REQUIRED, next_refresh_at=None, **fields
            )
            if not became_permanent:
                tokens.update(**fields)  # already waiting for a person: only the latest error is noted
        else:
            delay = backoff_seconds(token.consecutive_failures + 1)
            tokens.update(state=TokenState.REFRESH_FAILING, next_refresh_at=now + timedelta(seconds=delay), **fields)
        signals.token_rows_changed(connection.slug)
        audit_record(
            action=Action.TOKEN_REFRESH,
            outcome=Outcome.FAILURE,
            connection=connection,
            actor_label=actor_label,
            detail=f"{'Permanent' if exc.permanent else 'Transient'} failure: {exc.message}",
        )
        token.refresh_from_db()
        owner = f" (the token of {token.user.get_username()})" if token.user_id else ""
        if exc.permanent and became_permanent:
            _notify_on_commit(
                "reauthorization_required",
                connection,
                f"{connection} needs to be authorized again",
                f"The provider rejected the refresh of {connection}{owner}: {exc.message}\n\n"
                "Bots get no token for it until someone authorizes it again (Connect / Re-authorize).",
            )
        elif not exc.permanent and token.consecutive_failures == settings.REFRESH_FAILURE_NOTIFY_THRESHOLD:
            _notify_on_commit(
                "refresh_failing",
                connection,
                f"Refreshing {connection} keeps failing",
                f"{token.consecutive_failures} refreshes of {connection}{owner} failed in a row; the last: "
                f"{exc.message}\n\nThe current token is served while it is valid, and refreshing is retried "
                "with backoff. You will get a notice when it works again.",
            )
    return token


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


def token_refresh(*, token: OAuthToken, actor_label: str, min_generation: int | None = None) -> OAuthToken:
    """Get a new access token for `token`, with a lease so only one process calls the provider at a time.

    A caller that finds someone else refreshing waits for them and takes their result. When `min_generation`
    is given, a token already newer than it counts as fresh (the caller's request began before that refresh).
    Raises ProviderError when the provider call fails; the stored token is kept either way.
    """
    connection = token.connection
    seen_generation = token.generation if min_generation is None else min_generation
    owner = uuid.uuid4().hex
    started = timezone.now()
    deadline = time.monotonic() + settings.REFRESH_WAIT_SECONDS
    while not _try_lease(token.pk, owner, _lease_seconds()):
        token.refresh_from_db()
        if token.generation > seen_generation:
            return token
        if _failed_since(token, started):
            raise _shared_failure(token)
        if time.monotonic() > deadline:
            raise ProviderError(
                "Another process is refreshing this token and has not finished; try again shortly.",
                error="refresh_in_progress",
                permanent=False,
            )
        time.sleep(0.05)
    token.refresh_from_db()
    if token.generation > seen_generation or _failed_since(token, started):
        # Settled while we took the lease: give it back and share that result.
        OAuthToken.objects.filter(pk=token.pk, lease_owner=owner).update(lease_owner="", lease_expires_at=None)
        if token.generation > seen_generation:
            return token
        raise _shared_failure(token)
    try:
        response = _fetch_new_token(connection, token)
    except ProviderError as exc:
        _record_refresh_failure(token, exc, actor_label)
        raise
    failures = token.consecutive_failures
    with transaction.atomic():
        token = token_store(connection=connection, user=token.user, response=response)
        audit_record(
            action=Action.TOKEN_REFRESH,
            outcome=Outcome.SUCCESS,
            connection=connection,
            actor_label=actor_label,
            detail=f"Recovered after {failures} failure(s)." if failures else "",
        )
        if failures >= settings.REFRESH_FAILURE_NOTIFY_THRESHOLD:
            _notify_on_commit(
                "refresh_recovered",
                connection,
                f"Refreshing {connection} works again",
                f"{connection} was refreshed successfully after {failures} failures in a row.",
            )
    return token


def token_refresh_claim_due(*, now: datetime | None = None) -> list[tuple[int, int]]:
    """The beat sweep: claim the tokens due for refresh and return (token id, generation) pairs to queue.

    Due means due before the next sweep, so no token waits a whole interval past its refresh time. Claiming
    moves the next refresh time a lease length past that: the sweeps in between do not queue it twice, and a
    task that is lost (its worker killed) is queued again after that.
    """
    now = now or timezone.now()
    cutoff = now + timedelta(seconds=settings.BEAT_INTERVAL)
    due = list(
        OAuthToken.objects.filter(next_refresh_at__lte=cutoff, connection__is_enabled=True)
        .order_by("next_refresh_at")
        .values_list("id", "generation")[: settings.REFRESH_SWEEP_BATCH]
    )
    if due:
        OAuthToken.objects.filter(pk__in=[token_id for token_id, _ in due], next_refresh_at__lte=cutoff).update(
            next_refresh_at=cutoff + timedelta(seconds=_lease_seconds())
        )
    return due


def token_refresh_scheduled(*, token_id: int, generation: int) -> None:
    """A queued refresh: renew the token unless someone did since it was queued. Failures are recorded, not
    raised: the sweep retries them on the backoff schedule."""
    token = OAuthToken.objects.select_related("connection__provider", "user").filter(pk=token_id).first()
    if token is None or token.state == TokenState.REAUTHORIZATION_REQUIRED or not token.connection.is_enabled:
        return
    try:
        token_refresh(token=token, actor_label="refresh worker", min_generation=generation)
    except ProviderError as exc:
        logger.warning("Refresh of %s failed: %s", token.connection.slug, exc.message)


def client_credentials_token_obtain(
    *, connection: Connection, authorized_by: AbstractBaseUser | None = None
) -> OAuthToken:
    """A client-credentials connection needs no person to authorize it: fetch and store a token now."""
    response = oauth_client.client_credentials(connection_client_config(connection))
    with transaction.atomic():
        token = token_store(connection=connection, user=None, response=response, authorized_by=authorized_by)
        audit_record(
            action=Action.TOKEN_OBTAIN,
            outcome=Outcome.SUCCESS,
            connection=connection,
            actor=authorized_by,
            actor_label="" if authorized_by else "token endpoint",
            detail="Client credentials token fetched.",
        )
    return token
