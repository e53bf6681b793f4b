"""The authorization-code flow: start it (single-use state bound to the session, PKCE) and complete it at the
callback (check the state, exchange the code, store the tokens)."""

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from connections.audit.events import (
    Action,
    Outcome,
    audit_record,
    failed_authentication_count,
)
from connections.engine import rollover
from connections.engine.store import (
    connection_client_config,
    token_replaced_revoke,
    token_store_replacing,
    token_values_drop,
)
from connections.errors import ConnectionActionError, ProviderError
from connections.flows.attempts import connection_attempt_failure_record, connection_attempt_succeeded
from connections.flows.permission import authorization_refusal
from connections.models import AuthorizationRequest, Connection, OAuthToken, sha256_digest
from connections.notify import webhooks
from connections.oauth import client as oauth_client
from connections.oauth.client import provider_text

REPLAYED = "This authorization answer was already used; it cannot be replayed. Start again."
OTHER_SESSION = "This authorization was started in another browser session; finish it in the browser that began it."
# Said by a flow that may have succeeded (a reloaded callback, another tab): not a failure of the connection.
NOT_THE_CONNECTIONS_FAILURE = (REPLAYED, OTHER_SESSION)


def connection_authorize_start(
    *,
    connection: Connection,
    user: User,
    session_key: str,
    return_url: str,
    remote_addr: str | None = None,
) -> str:
    """Begin the authorization-code flow; returns the provider URL to send the browser to."""
    if refusal := authorization_refusal(connection, user, device=False):
        raise ConnectionActionError(f"{connection} cannot be connected now: {refusal}.")
    state = secrets.token_urlsafe(32)
    code_verifier = oauth_client.new_code_verifier() if connection.uses_pkce else ""
    try:
        url = oauth_client.authorization_url(
            connection_client_config(connection), state=state, code_verifier=code_verifier
        )
    except ProviderError as exc:
        connection_attempt_failure_record(
            action=Action.AUTHORIZE_START,
            connection=connection,
            actor=user,
            detail=exc.message,
            failure=_connect_failure(connection, user, exc.message),
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


def _flow_failure(
    message: str, request: AuthorizationRequest, remote_addr: str | None, *, shown: str = ""
) -> ConnectionActionError:
    """Audit why the flow ended, and keep it on the connection unless the flow may have succeeded; the error shows
    `shown` to the person, or the message itself."""
    connection, user = request.connection, request.user
    if message in NOT_THE_CONNECTIONS_FAILURE:
        audit_record(
            action=Action.AUTHORIZE_CALLBACK,
            outcome=Outcome.FAILURE,
            connection=connection,
            actor=user,
            detail=message,
            remote_addr=remote_addr,
        )
    else:
        connection_attempt_failure_record(
            action=Action.AUTHORIZE_CALLBACK,
            connection=connection,
            actor=user,
            detail=message,
            failure=_connect_failure(connection, user, message),
            remote_addr=remote_addr,
        )
    return ConnectionActionError(shown or message, return_url=request.return_url)


def _connect_failure(connection: Connection, user: User, message: str) -> str:
    whose = f" ({user.get_username()}'s own token)" if connection.is_user_specific else ""
    return f"Connect{whose}: {message}"


def _anonymous_failure(message: str, return_url: str, remote_addr: str | None) -> ConnectionActionError:
    """An answer no flow of ours started: counted per address, recorded one by one only for the first few."""
    if failed_authentication_count(where="oauth-callback", remote_addr=remote_addr).recorded_alone:
        audit_record(
            action=Action.AUTHORIZE_CALLBACK,
            outcome=Outcome.FAILURE,
            actor_label="anonymous browser",
            detail=message,
            remote_addr=remote_addr,
        )
    return ConnectionActionError(message, return_url=return_url)


def _flow_problem(request: AuthorizationRequest, session_key: str) -> str:
    """Why this flow cannot be completed from this browser now ("" if it can)."""
    if request.used_at is not None:
        return REPLAYED
    if request.expires_at < timezone.now():
        return f"This authorization took longer than {settings.OAUTH_STATE_TTL // 60} minutes and expired. Start again."
    if not session_key or request.session_digest != sha256_digest(session_key):
        return OTHER_SESSION
    return ""


def _answer_problem(request: AuthorizationRequest, params: Mapping[str, str]) -> str:
    """Why the provider's answer cannot be used ("" if it can)."""
    connection, error = request.connection, params.get("error", "")
    if error == "access_denied":
        return f"Authorization of {connection} was cancelled at the provider (access_denied)."
    if error:
        description = provider_text(params.get("error_description", ""))
        return f"The provider refused to authorize {connection}: {provider_text(error)[:50]}" + (
            f" ({description})." if description else "."
        )
    issuer = params.get("iss")
    if issuer is not None and connection.issuer and issuer != connection.issuer:
        # RFC 9207: several providers share our redirect URI; this answer comes from another one (mix-up attack).
        return (
            f"This answer names the issuer {provider_text(issuer)!r}, not {connection}'s issuer "
            f"{connection.issuer!r}: it is not used. Start again."
        )
    if not params.get("code"):
        return "The provider's answer carried no authorization code. Start again."
    return _changed_since(request)


def _changed_since(request: AuthorizationRequest) -> str:
    """The connection as it is now must still allow what the flow started for: a user-specific authorization
    must not become the shared token every bot receives."""
    connection = request.connection
    if refusal := authorization_refusal(connection, request.user, device=False, for_user=request.for_user):
        return f"{connection} was changed while you were authorizing it ({refusal}): nothing was stored."
    return ""


def _claim_authorization_request(
    params: Mapping[str, str], session_key: str, default_return_url: str, remote_addr: str | None
) -> AuthorizationRequest:
    """Find the flow this callback belongs to and use it up; any doubt ends the flow with a clear message."""
    state = params.get("state", "")
    if not state:
        message = "The provider's answer carried no state, so it cannot be trusted. Start again with Connect."
        raise _anonymous_failure(message, default_return_url, remote_addr)
    request = (
        AuthorizationRequest.objects.select_related("connection__provider", "user")
        .filter(state_digest=sha256_digest(state))
        .first()
    )
    if request is None:
        message = "This authorization answer is unknown (no flow was started with its state). Start again."
        raise _anonymous_failure(message, default_return_url, remote_addr)
    if problem := _flow_problem(request, session_key):
        raise _flow_failure(problem, request, remote_addr)
    claimed = AuthorizationRequest.objects.filter(pk=request.pk, used_at__isnull=True).update(used_at=timezone.now())
    if not claimed:
        raise _flow_failure(REPLAYED, request, remote_addr)  # another callback used it meanwhile
    if problem := _answer_problem(request, params):
        raise _flow_failure(problem, request, remote_addr)
    return request


class _ChangedMeanwhile(Exception):
    """The connection or the person's roles changed while the code was exchanged: nothing is stored."""


def _still_allowed(request: AuthorizationRequest) -> Connection:
    """The connection as it is now, locked until the token is stored, if it still allows what the flow started
    for (_ChangedMeanwhile if not)."""
    current = Connection.objects.select_for_update().select_related("provider").filter(pk=request.connection_id).first()
    if current is None:
        raise _ChangedMeanwhile(f"{request.connection} was deleted while you were authorizing it: nothing was stored.")
    request.connection = current
    if problem := _changed_since(request):
        raise _ChangedMeanwhile(problem)
    return current


def _authorized_record(
    request: AuthorizationRequest,
    connection: Connection,
    token: OAuthToken,
    started_at: datetime,
    remote_addr: str | None,
) -> None:
    audit_record(
        action=Action.AUTHORIZE_CALLBACK,
        outcome=Outcome.SUCCESS,
        connection=connection,
        actor=request.user,
        detail=f"Authorized; scope: {token.scope or 'none reported'}.",
        remote_addr=remote_addr,
    )
    connection_attempt_succeeded(connection=connection, started_at=started_at)
    whose = f"{request.user.get_username()}'s own token" if request.for_user else "its shared token"
    webhooks.event_emit("connection.connected", connection, f"{connection} was authorized ({whose}).")


def connection_authorize_complete(
    *, params: Mapping[str, str], session_key: str, default_return_url: str, remote_addr: str | None = None
) -> AuthorizationResult:
    """The OAuth callback: check the state, exchange the code, store the tokens."""
    request = _claim_authorization_request(params, session_key, default_return_url, remote_addr)
    connection = request.connection
    started_at = timezone.now()
    try:
        response = rollover.provider_call(  # with the next client secret if the current one is refused
            connection,
            lambda config: oauth_client.exchange_code(config, code=params["code"], code_verifier=request.code_verifier),
        )
    except ProviderError as exc:
        shown = f"Could not connect {connection}: {exc.message} Nothing stored was changed."
        raise _flow_failure(exc.message, request, remote_addr, shown=shown) from None
    owner = request.user if request.for_user else None
    try:
        with transaction.atomic():
            connection = _still_allowed(request)  # asked again where the token is stored: it may have changed
            token, replaced = token_store_replacing(
                connection=connection, user=owner, response=response, authorized_by=request.user
            )
            _authorized_record(request, connection, token, started_at, remote_addr)
    except _ChangedMeanwhile as changed:
        # Nobody will hold the tokens the provider just issued: ended there too, where that ends them alone.
        values = [(response.refresh_token, "refresh_token"), (response.access_token, "access_token")]
        token_values_drop(
            connection, values, f"What an authorization of {connection.slug} that may no longer complete got"
        )
        raise _flow_failure(str(changed), request, remote_addr) from None
    # The grant this one replaces is nobody's any more: ended at the provider too, where that ends it alone.
    token_replaced_revoke(connection, replaced)
    return AuthorizationResult(connection=connection, token=token, return_url=request.return_url)
