"""The administrator's actions on connections and roles: Save and test, Refresh now, Disconnect, Delete, the
audit of an admin save, and a role's permissions, members and invitations. The admin and apply_config call
these; each calls providers outside any database transaction."""

import uuid
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import Permission
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from connections import selectors, webhooks
from connections.audit import Action, Outcome, audit_record, user_label
from connections.errors import ConnectionActionError
from connections.models import FEATURE_PERMISSIONS, Connection, OAuthToken, Role
from connections.oauth_client import ProviderError
from connections.refresh import app_token_obtain, lease_seconds, token_refresh
from connections.tokens import token_values_revoke


def connection_test(*, connection: Connection, actor: AbstractBaseUser) -> str:
    """Save and test connection: prove the credentials work now. Returns a sentence for the admin."""
    if not connection.is_enabled:
        raise ConnectionActionError(f"{connection} is disabled; enable it to test it.")
    if not connection.uses_authorization_code:
        token = selectors.token_for(connection, None)
        if token is None:
            try:
                token = app_token_obtain(connection=connection, authorized_by=actor)
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
    tokens = _tokens_taken_over(list(tokens.values_list("pk", flat=True)))
    if not tokens:
        raise ConnectionActionError(f"{connection} has no stored token to disconnect.")
    detail, revoked_all = _tokens_revoke(connection, tokens)
    with transaction.atomic():
        OAuthToken.objects.filter(pk__in=[token.pk for token in tokens]).delete()
        audit_record(
            action=Action.DISCONNECT, outcome=Outcome.SUCCESS, connection=connection, actor=actor, detail=detail
        )
        whose = f" (the token of {only_user.get_username()})" if only_user is not None else ""
        webhooks.event_emit("connection.disconnected", connection, f"{connection} was disconnected{whose}. {detail}")
    if not revoked_all:
        return f"Disconnected {connection}. {detail} Revoke the grant at the provider by hand."
    return f"Disconnected {connection}. {detail}"


def _tokens_taken_over(token_ids: list[int]) -> list[OAuthToken]:
    """Take the tokens' lease for the disconnect and move their generation: a refresh in flight can no longer
    write its result (connections.tokens.Fence), and none starts. Read after that, so that what is revoked is
    what is stored, a refresh that just landed included."""
    calls = 2 * len(token_ids) + 1  # revocations, each ending by its deadline
    until = timezone.now() + timedelta(seconds=calls * settings.OUTBOUND_TIMEOUT + lease_seconds())
    OAuthToken.objects.filter(pk__in=token_ids).update(
        lease_owner=f"disconnect-{uuid.uuid4().hex}"[:64],
        lease_expires_at=until,
        generation=F("generation") + 1,
        next_refresh_at=None,
        refresh_due_at=None,
    )
    return list(OAuthToken.objects.filter(pk__in=token_ids))


def _tokens_revoke(connection: Connection, tokens: list[OAuthToken]) -> tuple[str, bool]:
    """Revoke the tokens at the provider; returns a sentence for the audit log and whether all went."""
    if not connection.effective_revocation_url:
        return "Tokens removed; the provider offers no revocation endpoint, so the grant may live on there.", False
    pairs = [((token.refresh_token, "refresh_token"), (token.access_token, "access_token")) for token in tokens]
    problems = token_values_revoke(connection, [pair for token_pairs in pairs for pair in token_pairs])
    if problems:
        return f"Tokens removed; revocation at the provider failed: {problems[0]}", False
    return "Tokens revoked at the provider and removed.", True


def connection_delete(*, connection: Connection, actor: AbstractBaseUser) -> str:
    """Delete a connection: its tokens are revoked at the provider first (outside any transaction), then the
    connection goes, with an audit event that outlives it."""
    tokens = _tokens_taken_over(list(connection.tokens.values_list("pk", flat=True)))
    detail = _tokens_revoke(connection, tokens)[0] if tokens else "No token was stored."
    with transaction.atomic():
        audit_record(
            action=Action.CONNECTION_DELETE,
            outcome=Outcome.SUCCESS,
            connection=connection,
            actor=actor,
            detail=f"Deleted. {detail}",
        )
        connection.delete()
    return f"Deleted {connection}. {detail}"


def connection_save_audit(
    *, connection: Connection, actor: AbstractBaseUser, created: bool, changed: list[str]
) -> None:
    """Record an admin save; names the changed fields, never their values."""
    audit_record(
        action=Action.CONNECTION_CREATE if created else Action.CONNECTION_UPDATE,
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
