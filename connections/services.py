"""The administrator's actions on connections and roles: Save and test, Refresh now, Disconnect, Delete, the
audit of an admin save, and a role's permissions, members and invitations. The admin and apply_config call
these; each calls providers outside any database transaction."""

import uuid
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission, User
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from connections import selectors
from connections.audit.events import Action, Outcome, audit_record, user_label
from connections.engine.lease import lease_seconds
from connections.engine.refresh import app_token_obtain, token_refresh
from connections.engine.store import token_values_revoke
from connections.errors import ConnectionActionError, ProviderError
from connections.flows.attempts import connection_attempt_failure_record, connection_attempt_succeeded
from connections.models import FEATURE_PERMISSIONS, Connection, OAuthToken, Role
from connections.notify import webhooks


def connection_test(*, connection: Connection, actor: User) -> str:
    """Save and test connection: prove the credentials work now. Returns a sentence for the admin."""
    if not connection.is_enabled:
        raise ConnectionActionError(f"{connection} is disabled; enable it to test it.")
    started_at = timezone.now()
    if not connection.uses_authorization_code:
        token = selectors.token_for(connection, None)
        if token is None:
            try:
                token = app_token_obtain(connection=connection, authorized_by=actor)
            except ProviderError as exc:
                # No token holds this failure: the connection keeps it (its page and list show it).
                connection_attempt_failure_record(
                    action=Action.CONNECTION_TEST,
                    connection=connection,
                    actor=actor,
                    detail=exc.message,
                    failure=f"Save and test: {exc.message}",
                )
                raise ConnectionActionError(f"Test failed: {exc.message}") from None
            connection_attempt_succeeded(connection=connection, started_at=started_at)
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
    except ProviderError as exc:  # the token keeps this failure (connections.engine.refresh)
        raise ConnectionActionError(f"Test failed: {exc.message}") from None
    connection_attempt_succeeded(connection=connection, started_at=started_at)
    return f"Test passed: the token was refreshed ({selectors.token_status(token).expiry_text})."


def connection_refresh_now(*, connection: Connection, actor: User) -> str:
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


def connection_disconnect(*, connection: Connection, actor: User, only_user: User | None = None) -> str:
    """Revoke at the provider where it offers RFC 7009 revocation, then remove the stored tokens."""
    stored = connection.tokens.all()
    if only_user is not None:
        stored = stored.filter(user=only_user)
    owner, tokens = _tokens_taken_over(list(stored.values_list("pk", flat=True)))
    if not tokens:
        raise ConnectionActionError(f"{connection} has no stored token to disconnect.")
    detail, revoked_all = _tokens_revoke(connection, tokens)
    with transaction.atomic():
        kept = len(tokens) - _tokens_remove(owner, tokens)
        if kept:  # authorized again while the revocation calls ran: that new grant is someone's, not revoked
            detail += f" {kept} token(s) authorized again meanwhile are kept, not revoked."
        audit_record(
            action=Action.DISCONNECT, outcome=Outcome.SUCCESS, connection=connection, actor=actor, detail=detail
        )
        whose = f" (the token of {only_user.get_username()})" if only_user is not None else ""
        webhooks.event_emit("connection.disconnected", connection, f"{connection} was disconnected{whose}. {detail}")
    if not revoked_all:
        return f"Disconnected {connection}. {detail} Revoke the grant at the provider by hand."
    return f"Disconnected {connection}. {detail}"


def _tokens_taken_over(token_ids: list[int]) -> tuple[str, list[OAuthToken]]:
    """Take the tokens' lease for the disconnect and move their generation: a refresh in flight can no longer
    write its result (connections.engine.store.Fence), and none starts. Read after that, so that what is revoked is
    what is stored, a refresh that just landed included. Returns the lease's owner and the rows it holds (a row a
    new authorization wrote meanwhile is not held: it is someone's new grant)."""
    calls = 2 * len(token_ids) + 1  # revocations, each ending by its deadline
    until = timezone.now() + timedelta(seconds=calls * settings.OUTBOUND_TIMEOUT + lease_seconds())
    owner = f"disconnect-{uuid.uuid4().hex}"[:64]
    OAuthToken.objects.filter(pk__in=token_ids).update(
        lease_owner=owner,
        lease_expires_at=until,
        generation=F("generation") + 1,
        next_refresh_at=None,
        refresh_due_at=None,
    )
    return owner, list(OAuthToken.objects.filter(pk__in=token_ids, lease_owner=owner))


def _tokens_remove(owner: str, tokens: list[OAuthToken]) -> int:
    """Delete the rows the disconnect still holds as it read them (a fenced delete: a re-authorization that landed
    during the revocation calls wrote a new grant, which stays); how many went."""
    held = Q(pk__in=[])
    for token in tokens:
        held |= Q(pk=token.pk, lease_owner=owner, generation=token.generation)
    _, by_model = OAuthToken.objects.filter(held).delete()
    return by_model.get(OAuthToken._meta.label, 0)


def _tokens_revoke(connection: Connection, tokens: list[OAuthToken]) -> tuple[str, bool]:
    """Revoke the tokens at the provider; returns a sentence for the audit log and whether all went."""
    if not connection.effective_revocation_url:
        return "Tokens removed; the provider offers no revocation endpoint, so the grant may live on there.", False
    pairs = [((token.refresh_token, "refresh_token"), (token.access_token, "access_token")) for token in tokens]
    problems = token_values_revoke(connection, [pair for token_pairs in pairs for pair in token_pairs])
    if problems:
        return f"Tokens removed; revocation at the provider failed: {problems[0]}", False
    return "Tokens revoked at the provider and removed.", True


def connection_delete(*, connection: Connection, actor: User) -> str:
    """Delete a connection: its tokens are revoked at the provider first (outside any transaction), then the
    connection goes, with an audit event that outlives it."""
    _, tokens = _tokens_taken_over(list(connection.tokens.values_list("pk", flat=True)))
    detail = _tokens_revoke(connection, tokens)[0] if tokens else "No token was stored."
    # A grant authorized while those calls ran goes with the connection: it is revoked too, and said.
    newer = list(connection.tokens.exclude(pk__in=[token.pk for token in tokens]))
    if newer:
        _tokens_revoke(connection, newer)
        detail += f" {len(newer)} token(s) authorized meanwhile were revoked too."
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


# Written by the engine and the flows (connections.audit.rows, connections.flows.attempts), never by a save of the
# connection's settings: a page or a file read before they were written must not put back what they were.
ENGINE_FIELDS = ("last_token_issued_at", "last_failure", "last_failure_at", "failures_in_a_row")


def connection_save(*, connection: Connection, created: bool) -> None:
    """Store a connection's settings as a person (the admin) or a configuration file (apply_config) set them,
    leaving alone what the engine wrote since they were read (ENGINE_FIELDS)."""
    if created:
        connection.save()
        return
    settings_fields = [
        field.name
        for field in Connection._meta.concrete_fields
        if not field.primary_key and field.name not in ENGINE_FIELDS
    ]
    connection.save(update_fields=settings_fields)


def connection_save_audit(*, connection: Connection, actor: User, created: bool, changed: list[str]) -> None:
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
    role: Group,  # a Role, or the group apply_config got or created (Role is a proxy: the same row)
    feature_permissions: list[str],
    members: list[User],
    connections: list[Connection],
    actor: User | None,
    actor_label: str = "",
    created: bool = False,
    renamed_from: str = "",
) -> None:
    """Set a role's feature permissions, members and invited connections (other permissions are kept), and audit
    what changed: on creation everything it holds, later who joined or left and the permissions and connections
    that changed (by name; never anything secret)."""
    wanted = set(feature_permissions) & set(FEATURE_PERMISSIONS)
    with transaction.atomic():
        before = RoleSnapshot.of(role)
        features = Permission.objects.filter(content_type__app_label="connections", codename__in=FEATURE_PERMISSIONS)
        role.permissions.remove(*[permission for permission in features if permission.codename not in wanted])
        role.permissions.add(*[permission for permission in features if permission.codename in wanted])
        role.user_set.set(members)
        role.connections.set(connections)
        after = RoleSnapshot.of(role)
        name = f"{role.name} (renamed from {renamed_from})" if renamed_from and renamed_from != role.name else role.name
        if created:
            detail = (
                f"Role {role.name} created: permissions {_listed(after.permissions)}; members "
                f"{_listed(after.members)}; connections {_listed(after.connections)}."
            )
        else:
            detail = _role_change_detail(name, before, after)
        audit_record(
            action=Action.ROLE_UPDATE, outcome=Outcome.SUCCESS, actor=actor, actor_label=actor_label, detail=detail
        )


def user_roles_set(*, user: User, roles: list[Role], actor: User | None, actor_label: str = "") -> None:
    """Set a user's roles (the user page of the admin): one audit event per role whose membership changed, the same
    event role_update writes when only its members change."""
    with transaction.atomic():
        held = {role.pk: role for role in Role.objects.filter(user=user)}
        wanted = {role.pk: role for role in roles}
        user.groups.set(list(wanted.values()))
        username = user.get_username()
        changed = sorted((held | wanted).values(), key=lambda role: role.name)
        for role in changed:
            if (role.pk in held) == (role.pk in wanted):
                continue
            joined = role.pk in wanted
            before = RoleSnapshot(members=frozenset() if joined else frozenset({username}))
            after = RoleSnapshot(members=frozenset({username}) if joined else frozenset())
            audit_record(
                action=Action.ROLE_UPDATE,
                outcome=Outcome.SUCCESS,
                actor=actor,
                actor_label=actor_label,
                detail=_role_change_detail(role.name, before, after),
            )


def role_delete(*, role: Role, actor: User | None) -> None:
    """Delete a role, recording first what it held (members, permissions, invitations): the history of who could
    get tokens has no gap when a role goes."""
    with transaction.atomic():
        held = RoleSnapshot.of(role)
        audit_record(
            action=Action.ROLE_UPDATE,
            outcome=Outcome.SUCCESS,
            actor=actor,
            detail=f"Role {role.name} deleted: permissions {_listed(held.permissions)}; members "
            f"{_listed(held.members)}; connections {_listed(held.connections)}.",
        )
        role.delete()


def user_delete(*, user: User, actor: User) -> str:
    """Delete a user: their own tokens are revoked at the provider first (outside any transaction, each a
    Disconnect), then they leave their roles, audited as from the role page, and go with their bot keys. Returns
    a sentence for the admin."""
    disconnected = []
    for connection in Connection.objects.filter(tokens__user=user).distinct().select_related("provider"):
        try:
            disconnected.append(connection_disconnect(connection=connection, actor=actor, only_user=user))
        except ConnectionActionError:
            continue  # disconnected meanwhile
    with transaction.atomic():
        user_roles_set(user=user, roles=[], actor=actor)
        user.delete()
    return " ".join([f"Deleted the user {user.get_username()}.", *disconnected])


@dataclass(frozen=True)
class RoleSnapshot:
    """What a role's audit event speaks of, by name: member usernames, feature permissions, connection slugs."""

    members: frozenset[str] = frozenset()
    permissions: frozenset[str] | None = None  # None: not looked at (a change of members only)
    connections: frozenset[str] | None = None

    @classmethod
    def of(cls, role: Group) -> "RoleSnapshot":
        user_model = get_user_model()
        return cls(
            members=frozenset(user_model.objects.filter(groups=role).values_list(user_model.USERNAME_FIELD, flat=True)),
            permissions=frozenset(
                role.permissions.filter(
                    content_type__app_label="connections", codename__in=FEATURE_PERMISSIONS
                ).values_list("codename", flat=True)
            ),
            connections=frozenset(role.connections.values_list("slug", flat=True)),
        )


def _listed(names: frozenset[str] | None) -> str:
    return ", ".join(sorted(names or ())) or "none"


def _role_change_detail(name: str, before: RoleSnapshot, after: RoleSnapshot) -> str:
    """'Role Finance bots: members added alice; members removed bob; connections now a, b (were a).' Only what
    changed; from the role page and the user page alike, so the same change reads the same."""
    parts = []
    if added := after.members - before.members:
        parts.append(f"members added {_listed(added)}")
    if removed := before.members - after.members:
        parts.append(f"members removed {_listed(removed)}")
    for label, was, now in (
        ("permissions", before.permissions, after.permissions),
        ("connections", before.connections, after.connections),
    ):
        if was != now:
            parts.append(f"{label} now {_listed(now)} (were {_listed(was)})")
    if not parts:
        return f"Role {name} saved; its members, permissions and connections are unchanged."
    return f"Role {name}: {'; '.join(parts)}."
