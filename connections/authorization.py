"""The authorization-code flow: start it (single-use state bound to the session, PKCE) and complete it at the
callback (check the state, exchange the code, store the tokens)."""

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from connections import oauth_client, selectors
from connections.audit import Action, Outcome, audit_record
from connections.errors import ConnectionActionError
from connections.models import AuthorizationRequest, Connection, OAuthToken, sha256_digest
from connections.oauth_client import ProviderError
from connections.tokens import connection_client_config, token_store

MAX_PROVIDER_TEXT = 200


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
        audit_record(
            action=Action.AUTHORIZE_START,
            outcome=Outcome.FAILURE,
            connection=connection,
            actor=user,
            detail=exc.message,
        )
        raise ConnectionActionError(exc.message) from None
    now = timezone.now()
    with transaction.atomic():
        AuthorizationRequest.objects.filter(expires_at__lt=now - timedelta(days=1)).delete()
        AuthorizationRequest.objects.create(
            state_digest=sha256_digest(state),
            session_digest=sha256_digest(session_key),
            connection=connection,
            user=user,
            for_user=connection.is_user_specific,
            code_verifier=code_verifier,
            return_url=return_url,
            expires_at=now + timedelta(seconds=settings.OAUTH_STATE_TTL),
        )
        audit_record(
            action=Action.AUTHORIZE_START,
            outcome=Outcome.SUCCESS,
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
            action=Action.AUTHORIZE_CALLBACK,
            outcome=Outcome.FAILURE,
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
        .filter(state_digest=sha256_digest(state))
        .first()
    )
    if request is None:
        raise fail("This authorization answer is unknown (no flow was started with its state). Start again.")
    if request.used_at is not None:
        raise fail("This authorization answer was already used; it cannot be replayed. Start again.", request)
    if request.expires_at < timezone.now():
        minutes = settings.OAUTH_STATE_TTL // 60
        raise fail(f"This authorization took longer than {minutes} minutes and expired. Start again.", request)
    if not session_key or request.session_digest != sha256_digest(session_key):
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
            action=Action.AUTHORIZE_CALLBACK,
            outcome=Outcome.FAILURE,
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
            action=Action.AUTHORIZE_CALLBACK,
            outcome=Outcome.SUCCESS,
            connection=connection,
            actor=request.user,
            detail=f"Authorized; scope: {token.scope or 'none reported'}.",
            remote_addr=remote_addr,
        )
    return AuthorizationResult(connection=connection, token=token, return_url=request.return_url)
