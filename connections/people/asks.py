"""Authorization requests: a manager asks a role's members to authorize their own token of a user-specific
connection. Each member without a token is e-mailed a link straight to that connection on My connections (and a
lifecycle webhook event `authorization.requested` goes out); someone asked less than a day ago is not asked again
yet; the ask is audited. The connection page lists, for every member of its invited roles, who has authorized, who
has not, and when they were asked."""

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlencode

from django.conf import settings
from django.contrib.auth.models import Group, User
from django.core.mail import send_mail
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from connections.audit.events import Action, Outcome, audit_record
from connections.errors import ConnectionActionError
from connections.models import AuthorizationAsk, Connection, OAuthToken
from connections.notify import webhooks

logger = logging.getLogger(__name__)

EVENT = "authorization.requested"
REMINDER_INTERVAL = timedelta(days=1)  # a member is asked again at most once a day


def authorize_link(connection: Connection) -> str:
    """My connections, showing only this connection and its Authorize button."""
    return f"{settings.PUBLIC_URL}{reverse('my_connections')}?{urlencode({'connection': connection.slug})}"


def _members(role: Group) -> list[User]:
    """The role's people: active, and not bot accounts (a bot never signs in to authorize)."""
    return list(User.objects.filter(groups=role, is_active=True, bot_account__isnull=True).order_by("username"))


def _names(users: list[User]) -> str:
    return ", ".join(user.get_username() for user in users) or "none"


def authorization_members_ask(*, connection: Connection, role: Group, actor: User) -> str:
    """Ask the role's members who have no token of the connection to authorize it; a sentence for the manager."""
    if not connection.is_user_specific:
        raise ConnectionActionError(f"{connection} has one shared token: there is nobody to ask but its managers.")
    if not connection.roles.filter(pk=role.pk).exists():
        raise ConnectionActionError(f"The role {role.name} is not invited to use {connection}: invite it first.")
    members = _members(role)
    authorized = set(OAuthToken.objects.filter(connection=connection, user__in=members).values_list("user", flat=True))
    now = timezone.now()
    asked, not_yet = [], []
    with transaction.atomic():
        earlier = {
            ask.user_id: ask
            for ask in AuthorizationAsk.objects.select_for_update().filter(connection=connection, user__in=members)
        }
        for member in (member for member in members if member.pk not in authorized):
            ask = earlier.get(member.pk)
            if ask is not None and ask.last_asked_at > now - REMINDER_INTERVAL:
                not_yet.append(member)
                continue
            if ask is None:
                AuthorizationAsk.objects.create(
                    connection=connection, user=member, role=role, asked_by=actor, first_asked_at=now, last_asked_at=now
                )
            else:
                ask.role, ask.asked_by, ask.last_asked_at, ask.times_asked = role, actor, now, ask.times_asked + 1
                ask.save(update_fields=["role", "asked_by", "last_asked_at", "times_asked"])
            asked.append(member)
            webhooks.event_emit(
                EVENT, connection, f"{member.get_username()} was asked to authorize {connection} (role {role.name})."
            )
        detail = (
            f"Members of {role.name} asked to authorize: {_names(asked)}; asked less than a day ago, not asked again "
            f"yet: {_names(not_yet)}; already authorized: {len(authorized)}."
        )
        audit_record(
            action=Action.AUTHORIZATION_ASK, outcome=Outcome.SUCCESS, connection=connection, actor=actor, detail=detail
        )
    unmailed = [member for member in asked if not _asked_by_mail(member, connection, actor)]
    return _report(role, asked, not_yet, len(authorized), unmailed)


def _asked_by_mail(member: User, connection: Connection, actor: User) -> bool:
    """E-mail the member the link; False when they have no address or the mail could not be sent."""
    if not member.email:
        return False
    message = (
        f"{actor.get_full_name() or actor.get_username()} asks you to authorize the connection {connection} with your "
        f"own account, so that the bots running as you can use it.\n\nOpen {authorize_link(connection)} and click "
        "Authorize: you will sign in at the provider and approve Control Room's access.\n"
    )
    try:
        send_mail(f"[Control Room] Please authorize {connection}", message, None, [member.email])
    except Exception:  # the SMTP server: the ask stands, the manager is told who was not reached
        logger.exception("Could not e-mail %s the request to authorize %s", member.get_username(), connection.slug)
        return False
    return True


def _report(role: Group, asked: list[User], not_yet: list[User], authorized: int, unmailed: list[User]) -> str:
    parts = [f"Asked {len(asked)} member(s) of {role.name} to authorize" + (f": {_names(asked)}." if asked else ".")]
    if not_yet:
        parts.append(f"Not asked again yet (asked less than a day ago): {_names(not_yet)}.")
    if authorized:
        parts.append(f"{authorized} member(s) have authorized already.")
    if unmailed:
        parts.append(f"No e-mail reached {_names(unmailed)} (no address, or the mail server refused): tell them.")
    return " ".join(parts)


@dataclass(frozen=True)
class MemberAuthorization:
    """A row of the connection page's list: one member of an invited role."""

    user: User
    roles: list[str]
    authorized_at: datetime | None
    asked_at: datetime | None
    times_asked: int


def connection_members_authorizations(connection: Connection) -> list[MemberAuthorization]:
    """Every member of the connection's invited roles, who has authorized first, then who has not, by name."""
    roles = {role.pk: role.name for role in connection.roles.all()}
    users = User.objects.filter(groups__in=roles, is_active=True, bot_account__isnull=True).distinct()
    memberships: dict[int, list[str]] = {}
    for user_id, role_id in User.groups.through.objects.filter(group__in=roles, user__in=users).values_list(
        "user_id", "group_id"
    ):
        memberships.setdefault(user_id, []).append(roles[role_id])
    tokens = dict(OAuthToken.objects.filter(connection=connection, user__in=users).values_list("user", "authorized_at"))
    asks = {ask.user_id: ask for ask in AuthorizationAsk.objects.filter(connection=connection, user__in=users)}
    rows = [
        MemberAuthorization(
            user=user,
            roles=sorted(memberships.get(user.pk, [])),
            authorized_at=tokens.get(user.pk),
            asked_at=asks[user.pk].last_asked_at if user.pk in asks else None,
            times_asked=asks[user.pk].times_asked if user.pk in asks else 0,
        )
        for user in users
    ]
    return sorted(rows, key=lambda row: (row.authorized_at is None, row.user.get_username()))
