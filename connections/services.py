"""Everything that changes connections and tokens. Views, admin actions, tasks and commands call these.

Rules kept here: no database transaction is open during a call to a provider; a failure never discards a
token that still works or a refresh token that was not replaced; every outcome writes an audit event.
"""

import hashlib
import logging
import random
import secrets
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import Permission
from django.db import IntegrityError, transaction
from django.db import connection as db_connection
from django.db.models import F, Q
from django.utils import timezone

from connections import oauth_client, selectors, token_cache
from connections.models import (
    FEATURE_PERMISSIONS,
    AuditEvent,
    AuthorizationRequest,
    BeatHeartbeat,
    Connection,
    OAuthToken,
    Role,
    TokenState,
)
from connections.oauth_client import ClientConfig, ProviderError, TokenResponse

logger = logging.getLogger(__name__)

MAX_PROVIDER_TEXT = 200


class ConnectionActionError(Exception):
    """An action a person asked for could not be done; `message` says why and what to do."""

    def __init__(self, message: str, *, return_url: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.return_url = return_url


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _label(user: AbstractBaseUser | None) -> str:
    return user.get_username() if user is not None else "system"


def audit_record(
    *,
    action: str,
    outcome: str,
    connection: Connection | None = None,
    actor: AbstractBaseUser | None = None,
    actor_label: str = "",
    detail: str = "",
    remote_addr: str | None = None,
) -> AuditEvent:
    # Details quote what callers and providers sent; PostgreSQL text cannot hold NUL characters.
    return AuditEvent.objects.create(
        action=action,
        outcome=outcome,
        connection=connection,
        connection_label=connection.slug if connection else "",
        actor=actor if actor is not None and actor.pk else None,
        actor_label=(actor_label or _label(actor)).replace("\x00", "")[:150],
        detail=detail.replace("\x00", ""),
        remote_addr=remote_addr or None,
    )


def audit_queue_drain(*, batch_size: int = 1000) -> int:
    """Move the audit events the token endpoint queued in Redis (connections.token_cache) into the audit table.

    Returns how many were moved. A drainer that dies after its insert but before removing the batch from the
    queue leaves it to be inserted again: an event may then appear twice, but is never lost.
    """
    if not token_cache.enabled():
        return 0
    moved = 0
    with token_cache.audit_queue_lock() as lock:
        while lock is not None and (queued := token_cache.audit_queue_peek(batch_size)):
            _audit_events_insert(queued)
            token_cache.audit_queue_remove(len(queued))
            moved += len(queued)
            lock.reacquire()
    return moved


QUEUED_AUDIT_FIELDS = ("created_at", *token_cache.AUDIT_FIELDS, "remote_addr")


def _audit_events_insert(queued: list[dict]) -> None:
    """One executemany for a batch of queued events. bulk_create would prepare every field of every row in
    Python, four times the cost of this (bench/token_endpoint.py counts it in each answer); these values are
    plain already, and only the two that need it are adapted to the database by its backend's own hooks."""
    # A user or connection deleted since its event was queued: the event stays, with its labels.
    users = set(
        get_user_model().objects.filter(pk__in={event["actor_id"] for event in queued}).values_list("pk", flat=True)
    )
    connections = set(
        Connection.objects.filter(pk__in={event["connection_id"] for event in queued}).values_list("pk", flat=True)
    )
    ops = db_connection.ops
    rows = [
        {
            **event,
            "created_at": ops.adapt_datetimefield_value(datetime.fromisoformat(event["created_at"])),
            "actor_id": event["actor_id"] if event["actor_id"] in users else None,
            "connection_id": event["connection_id"] if event["connection_id"] in connections else None,
            "remote_addr": ops.adapt_ipaddressfield_value(event["remote_addr"]),
        }
        for event in queued
    ]
    columns = ", ".join(ops.quote_name(AuditEvent._meta.get_field(name).column) for name in QUEUED_AUDIT_FIELDS)
    placeholders = ", ".join(["%s"] * len(QUEUED_AUDIT_FIELDS))
    sql = f"INSERT INTO {ops.quote_name(AuditEvent._meta.db_table)} ({columns}) VALUES ({placeholders})"  # noqa: S608
    with transaction.atomic(), db_connection.cursor() as cursor:
        cursor.executemany(sql, [[row[name] for name in QUEUED_AUDIT_FIELDS] for row in rows])


def connection_client_config(connection: Connection) -> ClientConfig:
    return ClientConfig(
        client_id=connection.client_id,
        client_secret=connection.client_secret,
        authorization_url=connection.effective_authorization_url,
        token_url=connection.effective_token_url,
        revocation_url=connection.effective_revocation_url,
        scopes=tuple(connection.scope_list),
        scope_separator=connection.provider.scope_separator or " ",
        extra_authorization_params={
            **connection.provider.extra_authorization_params,
            **connection.extra_authorization_params,
        },
        client_auth_method=connection.provider.client_auth_method,
        redirect_uri=settings.OAUTH_REDIRECT_URI,
    )


def refresh_margin(connection: Connection, lifetime: int) -> int:
    """Refresh this long before expiry: the setting or the provider's, but never more than half the lifetime."""
    margin = connection.provider.refresh_margin or settings.TOKEN_REFRESH_MARGIN
    return min(margin, lifetime // 2)


def _expiry(connection: Connection, response: TokenResponse) -> tuple[datetime, datetime]:
    lifetime = response.expires_in if response.expires_in and response.expires_in > 0 else None
    lifetime = lifetime or connection.token_lifetime_default
    now = timezone.now()
    expires_at = now + timedelta(seconds=lifetime)
    return expires_at, expires_at - timedelta(seconds=refresh_margin(connection, lifetime))


def token_store(
    *,
    connection: Connection,
    user: AbstractBaseUser | None,
    response: TokenResponse,
    authorized_by: AbstractBaseUser | None = None,
) -> OAuthToken:
    """Write a new access token with its refresh token in one write; keep what the response leaves out."""
    try:
        return _token_write(connection, user, response, authorized_by)
    except IntegrityError:
        # Another process stored this connection's first token at the same moment; now there is a row to update.
        return _token_write(connection, user, response, authorized_by)


def _token_write(
    connection: Connection,
    user: AbstractBaseUser | None,
    response: TokenResponse,
    authorized_by: AbstractBaseUser | None,
) -> OAuthToken:
    expires_at, next_refresh_at = _expiry(connection, response)
    owner = user if connection.is_user_specific else None
    with transaction.atomic():
        token = OAuthToken.objects.select_for_update().filter(connection=connection, user=owner).first()
        if token is None:
            token = OAuthToken(connection=connection, user=owner, generation=0)
        token.access_token = response.access_token
        # A provider that does not rotate sends no refresh token: the one we hold stays valid (RFC 6749 6).
        token.refresh_token = response.refresh_token or token.refresh_token
        token.id_token = response.id_token or token.id_token
        token.token_type = response.token_type
        token.scope = response.scope or token.scope or " ".join(connection.scope_list)
        token.extra = {**token.extra, **response.extra}
        token.expires_at = expires_at
        token.next_refresh_at = next_refresh_at
        token.state = TokenState.ACTIVE
        token.consecutive_failures = 0
        token.last_error = ""
        token.last_error_at = None
        token.lease_owner = ""
        token.lease_expires_at = None
        token.generation += 1
        token.obtained_at = timezone.now()
        if authorized_by is not None:
            token.authorized_by = authorized_by
            token.authorized_at = timezone.now()
        else:
            token.refreshed_at = timezone.now()
        token.save()
    return token


def connection_authorize_start(
    *,
    connection: Connection,
    user: AbstractBaseUser,
    session_key: str,
    return_url: str,
    remote_addr: str | None = None,
) -> str:
    """Begin the authorization-code flow; returns the provider URL to send the browser to."""
    if not connection.is_enabled:
        raise ConnectionActionError(f"{connection} is disabled; enable it before connecting.")
    if not connection.uses_authorization_code:
        raise ConnectionActionError(
            f"{connection} uses the client credentials grant: use Save and test connection instead of Connect."
        )
    if not selectors.user_may_authorize(user, connection):
        raise ConnectionActionError(f"You are not allowed to authorize {connection}.")
    state = secrets.token_urlsafe(32)
    code_verifier = oauth_client.new_code_verifier() if connection.uses_pkce else ""
    try:
        url = oauth_client.authorization_url(
            connection_client_config(connection), state=state, code_verifier=code_verifier
        )
    except ProviderError as exc:
        audit_record(action="authorize_start", outcome="failure", connection=connection, actor=user, detail=exc.message)
        raise ConnectionActionError(exc.message) from None
    now = timezone.now()
    with transaction.atomic():
        AuthorizationRequest.objects.filter(expires_at__lt=now - timedelta(days=1)).delete()
        AuthorizationRequest.objects.create(
            state_digest=_digest(state),
            session_digest=_digest(session_key),
            connection=connection,
            user=user,
            for_user=connection.is_user_specific,
            code_verifier=code_verifier,
            return_url=return_url,
            expires_at=now + timedelta(seconds=settings.OAUTH_STATE_TTL),
        )
        audit_record(
            action="authorize_start",
            outcome="success",
            connection=connection,
            actor=user,
            detail="PKCE S256" if code_verifier else "",
            remote_addr=remote_addr,
        )
    return url


@dataclass(frozen=True)
class AuthorizationResult:
    connection: Connection
    token: OAuthToken
    return_url: str


def _claim_authorization_request(
    params: Mapping[str, str], session_key: str, default_return_url: str, remote_addr: str | None
) -> AuthorizationRequest:
    """Find the flow this callback belongs to and use it up; any doubt ends the flow with a clear message."""

    def fail(message: str, request: AuthorizationRequest | None = None) -> ConnectionActionError:
        audit_record(
            action="authorize_callback",
            outcome="failure",
            connection=request.connection if request else None,
            actor=request.user if request else None,
            actor_label="" if request else "anonymous browser",
            detail=message,
            remote_addr=remote_addr,
        )
        return ConnectionActionError(message, return_url=request.return_url if request else default_return_url)

    state = params.get("state", "")
    if not state:
        raise fail("The provider's answer carried no state, so it cannot be trusted. Start again with Connect.")
    request = (
        AuthorizationRequest.objects.select_related("connection__provider", "user")
        .filter(state_digest=_digest(state))
        .first()
    )
    if request is None:
        raise fail("This authorization answer is unknown (no flow was started with its state). Start again.")
    if request.used_at is not None:
        raise fail("This authorization answer was already used; it cannot be replayed. Start again.", request)
    if request.expires_at < timezone.now():
        minutes = settings.OAUTH_STATE_TTL // 60
        raise fail(f"This authorization took longer than {minutes} minutes and expired. Start again.", request)
    if not session_key or request.session_digest != _digest(session_key):
        raise fail(
            "This authorization was started in another browser session; finish it in the browser that began it.",
            request,
        )
    claimed = AuthorizationRequest.objects.filter(pk=request.pk, used_at__isnull=True).update(used_at=timezone.now())
    if not claimed:
        raise fail("This authorization answer was already used; it cannot be replayed. Start again.", request)
    error = params.get("error", "")
    if error == "access_denied":
        raise fail(f"Authorization of {request.connection} was cancelled at the provider (access_denied).", request)
    if error:
        description = params.get("error_description", "")[:MAX_PROVIDER_TEXT]
        raise fail(
            f"The provider refused to authorize {request.connection}: {error[:50]}"
            + (f" ({description})." if description else "."),
            request,
        )
    if not params.get("code"):
        raise fail("The provider's answer carried no authorization code. Start again.", request)
    return request


def connection_authorize_complete(
    *, params: Mapping[str, str], session_key: str, default_return_url: str, remote_addr: str | None = None
) -> AuthorizationResult:
    """The OAuth callback: check the state, exchange the code, store the tokens."""
    request = _claim_authorization_request(params, session_key, default_return_url, remote_addr)
    connection = request.connection
    try:
        response = oauth_client.exchange_code(
            connection_client_config(connection), code=params["code"], code_verifier=request.code_verifier
        )
    except ProviderError as exc:
        audit_record(
            action="authorize_callback",
            outcome="failure",
            connection=connection,
            actor=request.user,
            detail=exc.message,
            remote_addr=remote_addr,
        )
        raise ConnectionActionError(
            f"Could not connect {connection}: {exc.message} Nothing stored was changed.", return_url=request.return_url
        ) from None
    with transaction.atomic():
        token = token_store(
            connection=connection,
            user=request.user if request.for_user else None,
            response=response,
            authorized_by=request.user,
        )
        audit_record(
            action="authorize_callback",
            outcome="success",
            connection=connection,
            actor=request.user,
            detail=f"Authorized; scope: {token.scope or 'none reported'}.",
            remote_addr=remote_addr,
        )
    return AuthorizationResult(connection=connection, token=token, return_url=request.return_url)


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


def _backoff_seconds(failures: int) -> float:
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
            delay = _backoff_seconds(token.consecutive_failures + 1)
            tokens.update(state=TokenState.REFRESH_FAILING, next_refresh_at=now + timedelta(seconds=delay), **fields)
        token_cache.grants_changed(slug=connection.slug)
        audit_record(
            action="token_refresh",
            outcome="failure",
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
    from connections.notifications import notify_managers

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
            action="token_refresh",
            outcome="success",
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
            action="token_obtain",
            outcome="success",
            connection=connection,
            actor=authorized_by,
            actor_label="" if authorized_by else "token endpoint",
            detail="Client credentials token fetched.",
        )
    return token


def connection_test(*, connection: Connection, actor: AbstractBaseUser) -> str:
    """Save and test connection: prove the credentials work now. Returns a sentence for the admin."""
    if not connection.is_enabled:
        raise ConnectionActionError(f"{connection} is disabled; enable it to test it.")
    if not connection.uses_authorization_code:
        token = selectors.token_for(connection, None)
        if token is None:
            try:
                token = client_credentials_token_obtain(connection=connection, authorized_by=actor)
            except ProviderError as exc:
                audit_record(
                    action="connection_test", outcome="failure", connection=connection, actor=actor, detail=exc.message
                )
                raise ConnectionActionError(f"Test failed: {exc.message}") from None
            return f"Test passed: the provider issued an access token ({selectors.token_status(token).expiry_text})."
    elif connection.is_user_specific:
        token = selectors.token_for(connection, actor)
        if token is None:
            raise ConnectionActionError(
                "Authorization needed: each user authorizes their own token from My OAuth connections."
            )
    else:
        token = selectors.token_for(connection, None)
        if token is None or not token.refresh_token:
            raise ConnectionActionError("Authorization needed: click Connect to authorize this connection.")
    try:
        token = token_refresh(token=token, actor_label=_label(actor))
    except ProviderError as exc:
        raise ConnectionActionError(f"Test failed: {exc.message}") from None
    return f"Test passed: the token was refreshed ({selectors.token_status(token).expiry_text})."


def connection_refresh_now(*, connection: Connection, actor: AbstractBaseUser) -> str:
    """Refresh now: renew every token of the connection; returns a sentence for the admin."""
    tokens = list(connection.tokens.all())
    if not tokens:
        raise ConnectionActionError(f"{connection} has no token to refresh yet.")
    failures = []
    for token in tokens:
        try:
            token_refresh(token=token, actor_label=_label(actor))
        except ProviderError as exc:
            failures.append(exc.message)
    if failures:
        raise ConnectionActionError(
            f"Refresh of {connection} failed for {len(failures)} of {len(tokens)} token(s): {failures[0]} "
            "The current token is kept."
        )
    return f"Refreshed {len(tokens)} token(s) of {connection}."


def connection_disconnect(
    *, connection: Connection, actor: AbstractBaseUser, only_user: AbstractBaseUser | None = None
) -> str:
    """Revoke at the provider where it offers RFC 7009 revocation, then remove the stored tokens."""
    tokens = connection.tokens.all()
    if only_user is not None:
        tokens = tokens.filter(user=only_user)
    tokens = list(tokens)
    if not tokens:
        raise ConnectionActionError(f"{connection} has no stored token to disconnect.")
    config = connection_client_config(connection)
    problems: list[str] = []
    if config.revocation_url:
        for token in tokens:
            # Revoking the refresh token first ends the whole grant at most providers (RFC 7009 2.1).
            for value, hint in ((token.refresh_token, "refresh_token"), (token.access_token, "access_token")):
                if not value:
                    continue
                try:
                    oauth_client.revoke(config, token=value, token_type_hint=hint)
                except ProviderError as exc:
                    problems.append(exc.message)
    if problems:
        detail = f"Tokens removed; revocation at the provider failed: {problems[0]}"
    elif config.revocation_url:
        detail = "Tokens revoked at the provider and removed."
    else:
        detail = "Tokens removed; the provider offers no revocation endpoint, so the grant may live on there."
    with transaction.atomic():
        OAuthToken.objects.filter(pk__in=[token.pk for token in tokens]).delete()
        audit_record(action="disconnect", outcome="success", connection=connection, actor=actor, detail=detail)
    if problems:
        return f"Disconnected {connection}. {detail} Revoke the grant at the provider by hand."
    return f"Disconnected {connection}. {detail}"


def connection_save_audit(
    *, connection: Connection, actor: AbstractBaseUser, created: bool, changed: list[str]
) -> None:
    """Record an admin save; names the changed fields, never their values."""
    audit_record(
        action="connection_create" if created else "connection_update",
        outcome="success",
        connection=connection,
        actor=actor,
        detail=("Changed: " + ", ".join(changed)) if changed else "",
    )


def beat_heartbeat_record() -> None:
    BeatHeartbeat.objects.update_or_create(name="beat", defaults={"last_run_at": timezone.now()})


def role_update(
    *,
    role: Role,
    feature_permissions: list[str],
    members: list[AbstractBaseUser],
    connections: list[Connection],
    actor: AbstractBaseUser | None,
    actor_label: str = "",
) -> None:
    """Set a role's feature permissions, members and invited connections (other permissions are kept)."""
    wanted = set(feature_permissions) & set(FEATURE_PERMISSIONS)
    with transaction.atomic():
        features = Permission.objects.filter(content_type__app_label="connections", codename__in=FEATURE_PERMISSIONS)
        role.permissions.remove(*[permission for permission in features if permission.codename not in wanted])
        role.permissions.add(*[permission for permission in features if permission.codename in wanted])
        role.user_set.set(members)
        role.connections.set(connections)
        audit_record(
            action="role_update",
            outcome="success",
            actor=actor,
            actor_label=actor_label,
            detail=f"Role {role.name}: permissions {sorted(wanted) or 'none'}; {len(members)} member(s); "
            f"connections {[connection.slug for connection in connections] or 'none'}.",
        )
