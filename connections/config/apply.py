"""Configuration as code: users, roles and connections from a YAML file, and back (docs/operations.md,
"Configuration as code").

Apply checks the whole file first and writes nothing when anything is wrong, naming every problem with its
place in the file (line and path). Connections are held to the rules the admin's form applies
(connections.config.connection_entries). Secrets are only ever references: `client_secret_env` or
`client_secret_file`. The export is connections.config.export.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, User
from django.db import transaction
from django.db.models import Q
from django.utils.text import slugify

from connections.audit.events import Action, Outcome, audit_record
from connections.config.connection_entries import PlannedConnection, connection_planned
from connections.config.document import config_parse, entries, unknown_keys, where
from connections.errors import ConfigError
from connections.models import FEATURE_PERMISSIONS, Connection, IdentityProviderGroup
from connections.people.accounts import role_identity_provider_groups_set
from connections.services import connection_save, role_update
from providers.models import Provider

USER_KEYS = {"username", "email", "first_name", "last_name"}
ROLE_KEYS = {"name", "permissions", "users", "connections", "identity_provider_groups"}


@dataclass
class Change:
    kind: str  # user, role, connection
    name: str
    action: str  # create, update, unchanged
    fields: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        changed = f" ({', '.join(self.fields)})" if self.fields and self.action == "update" else ""
        return f"{self.action:9} {self.kind} {self.name}{changed}"


@dataclass
class Plan:
    changes: list[Change] = field(default_factory=list)
    users: list[dict[str, Any]] = field(default_factory=list)
    roles: list[dict[str, Any]] = field(default_factory=list)
    connections: list[PlannedConnection] = field(default_factory=list)

    @property
    def has_changes(self) -> bool:
        return any(change.action != "unchanged" for change in self.changes)


def _plan_users(document: dict[str, Any], plan: Plan, problems: list[str]) -> set[str]:
    user_model = get_user_model()
    names: set[str] = set()
    for index, item in enumerate(entries(document, "users", problems)):
        username = str(item.get("username") or "")
        place = where("users", index, item, username)
        unknown_keys(item, USER_KEYS, place, problems)
        if not username:
            problems.append(f"{place}: username is required.")
            continue
        if username in names:
            problems.append(f"{place}: user {username} is listed twice.")
        names.add(username)
        values = {key: str(item.get(key) or "") for key in USER_KEYS - {"username"} if key in item}
        existing = user_model.objects.filter(username=username).first()
        changed = [key for key, value in values.items() if existing and getattr(existing, key) != value]
        action = "create" if existing is None else ("update" if changed else "unchanged")
        plan.changes.append(Change("user", username, action, changed))
        plan.users.append({"username": username, "values": values})
    return names


def _plan_connections(document: dict[str, Any], plan: Plan, base_dir: Path, problems: list[str]) -> set[str]:
    providers = {provider.slug: provider for provider in Provider.objects.all()}
    slugs: set[str] = set()
    for index, item in enumerate(entries(document, "connections", problems)):
        name = str(item.get("name") or "")
        place = where("connections", index, item, name)
        slug = str(item.get("slug") or slugify(name))
        if slug in slugs:
            problems.append(f"{place}: slug {slug} is used by another connection in this file.")
        slugs.add(slug)
        provider = providers.get(str(item.get("provider") or ""))
        if provider is None:
            problems.append(
                f"{place}: provider {item.get('provider')!r} is not a provider type; use one of "
                f"{', '.join(sorted(providers))}."
            )
            continue
        planned = connection_planned(item, place, provider, base_dir, problems)
        if planned is None:
            continue
        if planned.created:
            plan.changes.append(Change("connection", slug, "create"))
        else:
            action = "update" if planned.changed else "unchanged"
            plan.changes.append(Change("connection", slug, action, planned.changed))
        plan.connections.append(planned)
    return slugs


def _plan_roles(
    document: dict[str, Any], plan: Plan, usernames: set[str], slugs: set[str], problems: list[str]
) -> None:
    user_model = get_user_model()
    names: set[str] = set()
    for index, item in enumerate(entries(document, "roles", problems)):
        name = str(item.get("name") or "")
        place = where("roles", index, item, name)
        unknown_keys(item, ROLE_KEYS, place, problems)
        if not name:
            problems.append(f"{place}: name is required.")
            continue
        if name in names:
            problems.append(f"{place}: role {name} is listed twice.")
        names.add(name)
        permissions = [str(value) for value in item.get("permissions") or []]
        members = [str(value) for value in item.get("users") or []]
        connection_slugs = [str(value) for value in item.get("connections") or []]
        for permission in permissions:
            if permission not in FEATURE_PERMISSIONS:
                problems.append(f"{place}: unknown permission {permission!r} (use {' or '.join(FEATURE_PERMISSIONS)}).")
        known_users = usernames | set(
            user_model.objects.filter(username__in=members).values_list("username", flat=True)
        )
        for member in members:
            if member not in known_users:
                problems.append(f"{place}: user {member!r} is neither in the users section nor in the database.")
        known_slugs = slugs | set(Connection.objects.filter(slug__in=connection_slugs).values_list("slug", flat=True))
        for slug in connection_slugs:
            if slug not in known_slugs:
                problems.append(
                    f"{place}: connection {slug!r} is neither in the connections section nor in the database."
                )
        role = Group.objects.filter(name=name).first()
        wanted = {
            "permissions": sorted(set(permissions)),
            "users": sorted(set(members)),
            "connections": sorted(set(connection_slugs)),
            # People signing in with the identity provider get the role while in one of these groups (docs/sso.md).
            "identity_provider_groups": sorted({str(value) for value in item.get("identity_provider_groups") or []}),
        }
        filled = _filled_by_identity_provider(name, role, wanted["identity_provider_groups"])
        if role is None:
            plan.changes.append(Change("role", name, "create"))
        else:
            compared = {**wanted, "users": _not_signed_in_by_provider(wanted["users"])} if filled else wanted
            current = _role_current(role, filled=filled)
            changed = [key for key in wanted if compared[key] != current[key]]
            plan.changes.append(Change("role", name, "update" if changed else "unchanged", changed))
        plan.roles.append({"name": name, **wanted, "filled_by_identity_provider": filled})


def _filled_by_identity_provider(name: str, role: Group | None, groups: list[str]) -> bool:
    """Whether the identity provider gives the role to the people it signs in (identity_provider_groups, in the file
    or still in the database, or OIDC_ROLE_MAP): their membership is then the sign-in's to set, not the file's."""
    mapped = any(name in roles for roles in settings.OIDC_ROLE_MAP.values())
    return bool(groups) or mapped or (role is not None and IdentityProviderGroup.objects.filter(role=role).exists())


def _not_signed_in_by_provider(usernames: list[str]) -> list[str]:
    provided = get_user_model().objects.filter(username__in=usernames, identity__isnull=False)
    return sorted(set(usernames) - set(provided.values_list("username", flat=True)))


def _role_current(role: Group, *, filled: bool) -> dict[str, list[str]]:
    """What the database holds of the role, as the file says it (without the members the identity provider gave it
    the role to, when it fills the role)."""
    members = role.user_set.filter(identity__isnull=True) if filled else role.user_set.all()
    return {
        "permissions": sorted(
            role.permissions.filter(codename__in=FEATURE_PERMISSIONS).values_list("codename", flat=True)
        ),
        "users": sorted(members.values_list("username", flat=True)),
        "connections": sorted(role.connections.values_list("slug", flat=True)),
        "identity_provider_groups": sorted(
            IdentityProviderGroup.objects.filter(role=role).values_list("group", flat=True)
        ),
    }


def config_plan(text: str, *, base_dir: Path) -> Plan:
    """Check a whole file against the database; raises ConfigError listing every problem."""
    document = config_parse(text)
    plan = Plan()
    problems: list[str] = []
    usernames = _plan_users(document, plan, problems)
    slugs = _plan_connections(document, plan, base_dir, problems)
    _plan_roles(document, plan, usernames, slugs, problems)
    if problems:
        raise ConfigError(problems)
    return plan


def config_apply(plan: Plan, *, actor: User | None = None) -> None:
    """Write a checked plan in one transaction, with an audit event per created or updated object (roles get
    theirs from role_update)."""
    user_model = get_user_model()
    actions = {(change.kind, change.name): change for change in plan.changes}
    with transaction.atomic():
        for user in plan.users:
            account, created = user_model.objects.get_or_create(username=user["username"], defaults=user["values"])
            if created:
                account.set_unusable_password()  # bot runners authenticate with bot keys, people through SSO
            for key, value in user["values"].items():
                setattr(account, key, value)
            account.save()
        for planned in plan.connections:
            connection_save(connection=planned.connection, created=planned.created)
        for role_values in plan.roles:
            if actions[("role", role_values["name"])].action == "unchanged":
                continue
            role, created = Group.objects.get_or_create(name=role_values["name"])
            members = user_model.objects.filter(username__in=role_values["users"])
            if role_values["filled_by_identity_provider"]:  # its people signed in by the provider stay as they are
                provided = role.user_set.filter(identity__isnull=False).values("pk")
                members = user_model.objects.filter(
                    Q(username__in=role_values["users"], identity__isnull=True) | Q(pk__in=provided)
                )
            role_update(
                role=role,
                feature_permissions=role_values["permissions"],
                members=list(members),
                connections=list(Connection.objects.filter(slug__in=role_values["connections"])),
                actor=actor,
                actor_label="" if actor else "apply_config",
                created=created,
            )
            role_identity_provider_groups_set(
                role=role,
                groups=role_values["identity_provider_groups"],
                actor=actor,
                actor_label="" if actor else "apply_config",
            )
        for change in actions.values():
            if change.action == "unchanged" or change.kind == "role":  # role_update recorded those
                continue
            connection = Connection.objects.filter(slug=change.name).first() if change.kind == "connection" else None
            audit_record(
                action=Action(f"config_{change.action}"),
                outcome=Outcome.SUCCESS,
                connection=connection,
                actor=actor,
                actor_label="" if actor else "apply_config",
                detail=str(change).strip(),
            )
