"""The administrator's actions on connections and roles: Save and test, Refresh now, Disconnect, the audit of
an admin save, and a role's permissions, members and invitations. The admin and apply_config call these."""

from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import Permission
from django.db import transaction

from connections import oauth_client, selectors
from connections.audit import Action, Outcome, audit_record, user_label
from connections.errors import ConnectionActionError
from connections.models import FEATURE_PERMISSIONS, Connection, OAuthToken, Role
from connections.oauth_client import ProviderError
from connections.refresh import client_credentials_token_obtain, token_refresh
from connections.tokens import connection_client_config


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
                    action=Action.CONNECTION_TEST,
                    outcome=Outcome.FAILURE,
                    connection=connection,
                    actor=actor,
                    detail=exc.message,
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
        token = token_refresh(token=token, actor_label=user_label(actor))
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
            token_refresh(token=token, actor_label=user_label(actor))
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
        audit_record(
            action=Action.DISCONNECT, outcome=Outcome.SUCCESS, connection=connection, actor=actor, detail=detail
        )
    if problems:
        return f"Disconnected {connection}. {detail} Revoke the grant at the provider by hand."
    return f"Disconnected {connection}. {detail}"


def connection_save_audit(
    *, connection: Connection, actor: AbstractBaseUser, created: bool, changed: list[str]
) -> None:
    """Record an admin save; names the changed fields, never their values."""
    audit_record(
        action=Action.CONNECTION_CREATE if created else "connection_update",
        outcome=Outcome.SUCCESS,
        connection=connection,
        actor=actor,
        detail=("Changed: " + ", ".join(changed)) if changed else "",
    )


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
            action=Action.ROLE_UPDATE,
            outcome=Outcome.SUCCESS,
            actor=actor,
            actor_label=actor_label,
            detail=f"Role {role.name}: permissions {sorted(wanted) or 'none'}; {len(members)} member(s); "
            f"connections {[connection.slug for connection in connections] or 'none'}.",
        )
