"""The Device Code grant (RFC 8628): ask the provider for a user code that a person approves at its verification
page (on any device), then poll the token URL from a worker, never from a web request, until they approve or
deny, or the code expires. The page that shows the code reads the authorization's status as the worker writes it."""

from datetime import timedelta

from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from connections.audit.events import Action, Outcome, audit_record
from connections.engine import rollover
from connections.engine.store import (
    connection_client_config,
    token_replaced_revoke,
    token_store_replacing,
    token_values_drop,
)
from connections.errors import ConnectionActionError, ProviderError
from connections.flows.attempts import connection_attempt_failure_record
from connections.flows.permission import authorization_refusal
from connections.models import Connection, DeviceAuthorization
from connections.notify import webhooks
from connections.oauth import client as oauth_client

SLOW_DOWN_STEP = 5  # seconds added to the interval at each slow_down (RFC 8628 3.5)
EXPIRED = "The user code expired before anyone approved it: connect again."
REPLACED = "A newer device authorization replaced this one."  # not a failure of the connection
Status = DeviceAuthorization.Status


def device_authorization_start(*, connection: Connection, user: User) -> DeviceAuthorization:
    """Ask the provider for a device code and a user code; the caller queues the polling. The user's earlier
    authorization of this connection still waiting, if any, ends: one poller at the provider per person."""
    if refusal := authorization_refusal(connection, user, device=True):
        raise ConnectionActionError(f"{connection} cannot be connected now: {refusal}.")
    try:
        answer = oauth_client.device_authorization(connection_client_config(connection))
    except ProviderError as exc:
        message = f"Could not start the device authorization of {connection}: {exc.message}"
        connection_attempt_failure_record(
            action=Action.AUTHORIZE_START,
            connection=connection,
            actor=user,
            detail=exc.message,
            failure=f"Connect: {message}",
        )
        raise ConnectionActionError(message) from None
    for earlier in DeviceAuthorization.objects.filter(connection=connection, started_by=user, status=Status.PENDING):
        _finish(earlier, Status.FAILED, REPLACED)
    with transaction.atomic():
        authorization = DeviceAuthorization.objects.create(
            connection=connection,
            user=user if connection.is_user_specific else None,
            started_by=user,
            device_code=answer["device_code"],
            user_code=answer["user_code"],
            verification_uri=answer["verification_uri"],
            verification_uri_complete=answer["verification_uri_complete"],
            interval=answer["interval"],
            expires_at=timezone.now() + timedelta(seconds=answer["expires_in"]),
        )
        # Not the user code: whoever reads the audit log could approve it with their own account meanwhile.
        audit_record(
            action=Action.AUTHORIZE_START,
            outcome=Outcome.SUCCESS,
            connection=connection,
            actor=user,
            detail="Device authorization started: waiting for approval at the provider.",
        )
    return authorization


def device_authorization_poll(authorization_id: int) -> int | None:
    """One poll of the token URL; the seconds to wait before the next one, or None when it is over (approved and
    stored, denied, expired or failed: the status and message say which)."""
    authorization = (
        DeviceAuthorization.objects.select_related("connection__provider", "user", "started_by")
        .filter(pk=authorization_id, status=Status.PENDING)
        .first()
    )
    if authorization is None:
        return None
    if timezone.now() >= authorization.expires_at:
        _finish(authorization, Status.EXPIRED, EXPIRED)
        return None
    if problem := _changed_since(authorization):
        _finish(authorization, Status.FAILED, problem)
        return None
    connection = authorization.connection
    try:
        device_code = authorization.device_code  # with the next client secret if the current one is refused
        response = rollover.provider_call(
            connection, lambda config: oauth_client.device_token(config, device_code=device_code)
        )
    except ProviderError as exc:
        return _poll_failed(authorization, exc)
    with transaction.atomic():
        # Asked again where the token is stored, on the connection as it is now (locked until it is stored).
        current = Connection.objects.select_for_update().select_related("provider").filter(pk=connection.pk).first()
        if current is not None:
            authorization.connection = connection = current
        problem = "The connection was deleted meanwhile." if current is None else _changed_since(authorization)
        if not problem:
            if not _finish(authorization, Status.APPROVED, f"{connection} is connected."):
                return None  # another poll of it (a redelivered task) finished it first
            webhooks.event_emit("connection.connected", connection, f"{connection} was authorized on a device.")
            _, replaced = token_store_replacing(
                connection=connection,
                user=authorization.user,
                response=response,
                authorized_by=authorization.started_by,
            )
    if problem:  # nobody will hold what the provider just issued: ended there too, where that ends it alone
        _finish(authorization, Status.FAILED, problem)
        values = [(response.refresh_token, "refresh_token"), (response.access_token, "access_token")]
        token_values_drop(
            connection, values, f"What a device approval of {connection.slug} that may no longer complete got"
        )
        return None
    # The grant this one replaces is nobody's any more (as after Connect): ended at the provider where that is safe.
    token_replaced_revoke(connection, replaced)
    return None


def _changed_since(authorization: DeviceAuthorization) -> str:
    """Why the connection must not take this approval any more ("" when it may): the same rule as the
    authorization code's callback, since a token stored now goes to whoever the connection serves now."""
    connection, for_user = authorization.connection, authorization.user_id is not None
    if refusal := authorization_refusal(connection, authorization.started_by, device=True, for_user=for_user):
        return f"{connection} was changed while waiting for approval ({refusal}): nothing was stored."
    return ""


def _poll_failed(authorization: DeviceAuthorization, exc: ProviderError) -> int | None:
    if exc.error == "authorization_pending":
        return authorization.interval
    if exc.error == "slow_down":
        interval = authorization.interval + SLOW_DOWN_STEP
        DeviceAuthorization.objects.filter(pk=authorization.pk, status=Status.PENDING).update(interval=interval)
        return interval
    if exc.error == "access_denied":
        _finish(authorization, Status.DENIED, "The authorization was denied at the provider.")
    elif exc.error == "expired_token":
        _finish(authorization, Status.EXPIRED, EXPIRED)
    elif exc.permanent:
        _finish(authorization, Status.FAILED, exc.message)
    else:
        return authorization.interval  # a transient failure: the next poll may work
    return None


def device_authorization_end(authorization_id: int, message: str) -> None:
    """End one that can go no further (its polling could not be queued, or died): said on its page."""
    authorization = DeviceAuthorization.objects.select_related("connection", "started_by").filter(pk=authorization_id)
    if found := authorization.first():
        _finish(found, Status.FAILED, message)


def device_authorization_expired(authorization: DeviceAuthorization) -> DeviceAuthorization:
    """The authorization as its page shows it: one still waiting past its expiry has expired, poll or not."""
    if authorization.status == Status.PENDING and timezone.now() >= authorization.expires_at:
        _finish(authorization, Status.EXPIRED, EXPIRED)
        authorization.refresh_from_db()
    return authorization


def _finish(authorization: DeviceAuthorization, status: str, message: str) -> bool:
    """End it, if it is still waiting (a conditional UPDATE: of two polls finishing at once, one does), and clear
    its device code, of no use any more; False when something else ended it first."""
    ended = DeviceAuthorization.objects.filter(pk=authorization.pk, status=Status.PENDING).update(
        status=status, message=message, device_code="", updated_at=timezone.now()
    )
    if not ended:
        return False
    authorization.status, authorization.message, authorization.device_code = status, message, ""
    action, connection, actor = Action.AUTHORIZE_CALLBACK, authorization.connection, authorization.started_by
    detail = f"Device authorization: {message}"
    if status == Status.APPROVED or message == REPLACED:
        outcome = Outcome.SUCCESS if status == Status.APPROVED else Outcome.FAILURE
        audit_record(action=action, outcome=outcome, connection=connection, actor=actor, detail=detail)
    else:  # denied, expired or refused: kept on the connection, like a failed Connect (connections.flows.attempts)
        connection_attempt_failure_record(
            action=action,
            connection=connection,
            actor=actor,
            detail=detail,
            failure=f"Connect (device code): {message}",
        )
    return True
