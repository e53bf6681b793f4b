"""The Device Code grant (RFC 8628): ask the provider for a user code that a person approves at its verification
page (on any device), then poll the token URL from a worker, never from a web request, until they approve or
deny, or the code expires. The page that shows the code reads the authorization's status as the worker writes it."""

import logging
from datetime import timedelta

from django.contrib.auth.base_user import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from connections import oauth_client, selectors
from connections.audit import Action, Outcome, audit_record
from connections.errors import ConnectionActionError
from connections.models import Connection, DeviceAuthorization
from connections.oauth_client import ProviderError
from connections.tokens import connection_client_config, token_store_replacing, token_values_revoke

logger = logging.getLogger(__name__)

SLOW_DOWN_STEP = 5  # seconds added to the interval at each slow_down (RFC 8628 3.5)
Status = DeviceAuthorization.Status


def device_authorization_start(*, connection: Connection, user: AbstractBaseUser) -> DeviceAuthorization:
    """Ask the provider for a device code and a user code; the caller queues the polling."""
    if not connection.is_enabled:
        raise ConnectionActionError(f"{connection} is disabled; enable it before connecting.")
    if not selectors.user_may_authorize(user, connection):
        raise ConnectionActionError(f"You are not allowed to authorize {connection}.")
    try:
        answer = oauth_client.device_authorization(connection_client_config(connection))
    except ProviderError as exc:
        audit_record(
            action=Action.AUTHORIZE_START,
            outcome=Outcome.FAILURE,
            connection=connection,
            actor=user,
            detail=exc.message,
        )
        message = f"Could not start the device authorization of {connection}: {exc.message}"
        raise ConnectionActionError(message) from None
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
        audit_record(
            action=Action.AUTHORIZE_START,
            outcome=Outcome.SUCCESS,
            connection=connection,
            actor=user,
            detail=f"Device authorization started: user code {authorization.user_code}.",
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
        _finish(authorization, Status.EXPIRED, "The user code expired before anyone approved it: connect again.")
        return None
    connection = authorization.connection
    if not connection.is_enabled or not connection.uses_device_code:
        _finish(authorization, Status.FAILED, f"{connection} was disabled or changed meanwhile: nothing was stored.")
        return None
    try:
        response = oauth_client.device_token(
            connection_client_config(connection), device_code=authorization.device_code
        )
    except ProviderError as exc:
        return _poll_failed(authorization, exc)
    with transaction.atomic():
        _, replaced = token_store_replacing(
            connection=connection,
            user=authorization.user,
            response=response,
            authorized_by=authorization.started_by,
        )
        _finish(authorization, Status.APPROVED, f"{connection} is connected.")
    # The grant this one replaces is nobody's any more (as after Connect): end it at the provider too.
    for problem in token_values_revoke(connection, [(replaced, "refresh_token")]):
        logger.warning("Could not revoke the replaced grant of %s: %s", connection.slug, problem)
    return None


def _poll_failed(authorization: DeviceAuthorization, exc: ProviderError) -> int | None:
    if exc.error == "authorization_pending":
        return authorization.interval
    if exc.error == "slow_down":
        authorization.interval += SLOW_DOWN_STEP
        authorization.save(update_fields=["interval", "updated_at"])
        return authorization.interval
    if exc.error == "access_denied":
        _finish(authorization, Status.DENIED, "The authorization was denied at the provider.")
    elif exc.error == "expired_token":
        _finish(authorization, Status.EXPIRED, "The user code expired before anyone approved it: connect again.")
    elif exc.permanent:
        _finish(authorization, Status.FAILED, exc.message)
    else:
        return authorization.interval  # a transient failure: the next poll may work
    return None


def _finish(authorization: DeviceAuthorization, status: str, message: str) -> None:
    authorization.status, authorization.message = status, message
    authorization.device_code = ""  # of no use any more: not kept
    authorization.save(update_fields=["status", "message", "device_code", "updated_at"])
    approved = status == Status.APPROVED
    audit_record(
        action=Action.AUTHORIZE_CALLBACK,
        outcome=Outcome.SUCCESS if approved else Outcome.FAILURE,
        connection=authorization.connection,
        actor=authorization.started_by,
        detail=f"Device authorization: {message}",
    )
