"""Storing a token response: expiry and refresh margin, rotation-safe writes, and the client configuration a
connection hands to connections.oauth_client."""

from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.utils import timezone

from connections.models import Connection, OAuthToken, TokenState
from connections.oauth_client import ClientConfig, TokenResponse


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
