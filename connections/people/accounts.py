"""A person signed in by the identity provider: found by the ID token's `sub` (created on first sign-in), and given
at each sign-in exactly the roles their groups map to (when OIDC_ROLE_MAP is set; without it roles are given in
Control Room), staff and superuser status only where OIDC_STAFF_GROUPS / OIDC_SUPERUSER_GROUPS say so. Role joins
and leaves are audited as the admin's are."""

import logging
import os
from typing import Any, cast

from django.conf import settings
from django.contrib.auth.models import Group, User
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from connections.audit.events import Action, Outcome, audit_record, failed_authentication_count
from connections.models import IdentityProviderGroup, PersonIdentity, Role
from connections.services import user_roles_set

logger = logging.getLogger(__name__)

ACTOR_LABEL = "identity provider"


def claimed_groups(claims: dict[str, Any]) -> set[str]:
    """The group claim's values (a list, or one string). Keycloak may send full paths: a top-level group's /finance
    counts as finance too, but a nested group only by its full path (/partners/acme/admins is not "admins", which
    could be a group OIDC_SUPERUSER_GROUPS names)."""
    raw = claims.get(settings.OIDC_GROUPS_CLAIM)
    values = [raw] if isinstance(raw, str) else raw if isinstance(raw, list) else []
    groups = {str(value) for value in values if isinstance(value, str | int)}
    return groups | {group[1:] for group in groups if group.startswith("/") and group.count("/") == 1}


def roles_are_mapped() -> bool:
    """Whether roles come from groups at all (OIDC_ROLE_MAP, or apply_config's identity_provider_groups)."""
    return bool(settings.OIDC_ROLE_MAP) or IdentityProviderGroup.objects.exists()


def mapped_roles(groups: set[str]) -> list[Role]:
    """The roles these groups map to, by OIDC_ROLE_MAP and by apply_config's identity_provider_groups. A role named
    in OIDC_ROLE_MAP that does not exist is left out, and logged: roles (and what they may do) are made by the
    administrators or apply_config, never by a claim."""
    names = {name for group in groups for name in settings.OIDC_ROLE_MAP.get(group, [])}
    stored = IdentityProviderGroup.objects.filter(group__in=groups).values_list("role", flat=True)
    # the proxy's manager is typed as Group's
    roles = cast(list[Role], list(Role.objects.filter(Q(name__in=names) | Q(pk__in=stored)).order_by("name")))
    if missing := names - {role.name for role in roles}:
        logger.warning("OIDC_ROLE_MAP names roles that do not exist: %s", ", ".join(sorted(missing)))
    return roles


def role_identity_provider_groups_set(*, role: Group, groups: list[str], actor: User | None, actor_label: str) -> None:
    """The identity provider's groups whose members get this role at sign-in (apply_config), audited when they
    change."""
    with transaction.atomic():
        before = sorted(IdentityProviderGroup.objects.filter(role=role).values_list("group", flat=True))
        wanted = sorted(set(groups))
        if before == wanted:
            return
        IdentityProviderGroup.objects.filter(role=role).exclude(group__in=wanted).delete()
        for group in set(wanted) - set(before):
            IdentityProviderGroup.objects.create(role=role, group=group)
        audit_record(
            action=Action.ROLE_UPDATE,
            outcome=Outcome.SUCCESS,
            actor=actor,
            actor_label=actor_label,
            detail=f"Role {role.name}: identity provider groups now {', '.join(wanted) or 'none'} "
            f"(were {', '.join(before) or 'none'}).",
        )


def _new_username(claims: dict[str, Any]) -> str:
    """A readable, unused username: preferred_username, else the e-mail, else the subject (made unique). Never the
    administrator's or the break-glass account's name, even before that account exists: the identity provider's
    preferred_username is the person's choice at some providers, and whoever holds such a name gets its powers when
    that account is made (ensure_admin) or its password sign-in (PASSWORD_SIGN_IN=break-glass:<username>)."""
    reserved = {"admin", os.environ.get("DJANGO_SUPERUSER_USERNAME", "admin"), settings.BREAK_GLASS_USERNAME} - {""}
    wanted = str(claims.get("preferred_username") or claims.get("email") or claims["sub"])[:140]
    username, number = wanted, 1
    while username in reserved or User.objects.filter(username=username).exists():
        number += 1
        username = f"{wanted}-{number}"
    return username


def person_find(claims: dict[str, Any]) -> User | None:
    identity = PersonIdentity.objects.filter(issuer=settings.OIDC_ISSUER, subject=str(claims["sub"]))
    found = identity.select_related("user").first()
    return found.user if found is not None else None


def person_create(claims: dict[str, Any]) -> User:
    """A user for a person signing in for the first time (just in time): no usable password, no role yet."""
    with transaction.atomic():
        user = User.objects.create_user(_new_username(claims), email=str(claims.get("email") or ""))
        user.set_unusable_password()
        user.save(update_fields=["password"])
        PersonIdentity.objects.create(user=user, issuer=settings.OIDC_ISSUER, subject=str(claims["sub"]))
        audit_record(
            action=Action.SIGN_IN,
            outcome=Outcome.SUCCESS,
            actor=user,
            actor_label=ACTOR_LABEL,
            detail=f"User {user.get_username()} created on first sign-in with {settings.OIDC_PROVIDER_NAME}.",
        )
    return user


def person_sign_in_apply(*, user: User, claims: dict[str, Any], renewal: bool = False) -> User:
    """What the identity provider says of the person now: name, e-mail, roles, staff and superuser status. A silent
    renewal of a session is audited only when it changed the person's status or roles (it happens every
    OIDC_RENEW_SECONDS)."""
    groups = claimed_groups(claims)
    with transaction.atomic():
        roles_before = set(user.groups.values_list("pk", flat=True))
        user.email = str(claims.get("email") or user.email)
        user.first_name = str(claims.get("given_name") or user.first_name)[:150]
        user.last_name = str(claims.get("family_name") or user.last_name)[:150]
        changed = []
        for flag, listed in (
            ("is_staff", settings.OIDC_STAFF_GROUPS),
            ("is_superuser", settings.OIDC_SUPERUSER_GROUPS),
        ):
            if not listed:
                continue  # not mapped: the flag stays as an administrator set it
            wanted = bool(groups & set(listed))
            if getattr(user, flag) != wanted:
                setattr(user, flag, wanted)
                changed.append(f"{flag.removeprefix('is_')} {'granted' if wanted else 'removed'}")
        user.save()
        if roles_are_mapped():  # else roles are given in Control Room (Google sends no groups, for one)
            user_roles_set(user=user, roles=mapped_roles(groups), actor=None, actor_label=ACTOR_LABEL)
        PersonIdentity.objects.filter(user=user).update(last_signed_in_at=timezone.now())
        if renewal and not changed and set(user.groups.values_list("pk", flat=True)) == roles_before:
            return user
        audit_record(
            action=Action.SIGN_IN,
            outcome=Outcome.SUCCESS,
            actor=user,
            actor_label=user.get_username(),
            detail=f"{'Session renewed' if renewal else 'Signed in'} with {settings.OIDC_PROVIDER_NAME}"
            + (f" ({'; '.join(changed)} by the groups)" if changed else "")
            + ".",
        )
    return user


def sign_in_refusal_record(*, reason: str, remote_addr: str | None) -> None:
    """Audited one by one while few, then counted (connections.audit.events): anyone may start sign-ins that fail."""
    if not failed_authentication_count(where="sign-in", remote_addr=remote_addr).recorded_alone:
        return
    audit_record(
        action=Action.SIGN_IN,
        outcome=Outcome.FAILURE,
        actor_label=ACTOR_LABEL,
        detail=f"Sign-in with {settings.OIDC_PROVIDER_NAME} refused: {reason}",
        remote_addr=remote_addr,
    )


def password_sign_in_allowed(username: str) -> bool:
    """PASSWORD_SIGN_IN: on for everyone, off for everyone, or only for the break-glass account."""
    allows = settings.PASSWORD_SIGN_IN_ALLOWS
    return allows == "everyone" or (allows == "break-glass" and username == settings.BREAK_GLASS_USERNAME)
