"""Configuration as code: users, roles and connections from a YAML file (README "Configuration as code"), and back.

Apply checks the whole file first and writes nothing when anything is wrong, naming every problem with its
place in the file (line and path). Connections are validated by the admin's own form, so a file and a person in
the admin are held to the same rules. Secrets are only ever references: `client_secret_env` or
`client_secret_file`.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from django.contrib.auth import get_user_model
from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import Group
from django.db import transaction
from django.utils.text import slugify

from connections.audit.events import Action, Outcome, audit_record
from connections.config.references import reference_read, variable_name
from connections.models import FEATURE_PERMISSIONS, Connection
from connections.oauth import discovery
from connections.outbound.policy import ProviderError
from connections.services import role_update
from connections.web.forms import PLACEHOLDER_PREFIX, ConnectionForm
from providers.models import CLIENT_AUTH_METHOD_NAMES, Provider, split_scopes

USER_KEYS = {"username", "email", "first_name", "last_name"}
ROLE_KEYS = {"name", "permissions", "users", "connections"}
CONNECTION_KEYS = {
    "name", "slug", "description", "provider", "placeholders", "authorization_url", "token_url", "revocation_url",
    "issuer", "grant_type", "token_type", "client_id", "client_secret_env", "client_secret_file", "scopes",
    "extra_authorization_params", "default_token_lifetime", "enabled", "client_auth_method", "private_key_env",
    "private_key_file", "private_key_id", "jwt_subject", "device_authorization_url",
}  # fmt: skip
# The form's field a problem names, as the file's key.
REFERENCE_LABELS = {"client_secret": "client_secret_env", "private_key": "private_key_env", "__all__": "connection"}
LINE = "__line__"
CLIENT_AUTH_METHOD_VALUES = {name: method for method, name in CLIENT_AUTH_METHOD_NAMES.items()}


class ConfigError(Exception):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class _LineLoader(yaml.SafeLoader):
    """Remembers the line of every mapping, so a problem can say where it is."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[str, Any]:
        mapping = super().construct_mapping(node, deep=deep)
        mapping[LINE] = node.start_mark.line + 1
        return mapping


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
    connections: list[tuple[ConnectionForm, bool]] = field(default_factory=list)

    @property
    def has_changes(self) -> bool:
        return any(change.action != "unchanged" for change in self.changes)


def _where(section: str, index: int, item: dict[str, Any], label: str) -> str:
    return f"line {item.get(LINE, '?')}, {section}[{index}] ({label or 'unnamed'})"


def _list(document: dict[str, Any], section: str, problems: list[str]) -> list[dict[str, Any]]:
    items = document.get(section) or []
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        problems.append(f"{section}: must be a list of mappings.")
        return []
    return items


def _unknown_keys(item: dict[str, Any], allowed: set[str], where: str, problems: list[str]) -> None:
    unknown = sorted(set(item) - allowed - {LINE})
    if unknown:
        problems.append(f"{where}: unknown key(s) {', '.join(unknown)}.")


def config_parse(text: str) -> dict[str, Any]:
    try:
        document = yaml.load(text, Loader=_LineLoader)  # noqa: S506 - _LineLoader is a SafeLoader
    except yaml.YAMLError as exc:
        raise ConfigError([f"The file is not valid YAML: {exc}"]) from None
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ConfigError(["The file must be a mapping with users, roles and connections."])
    unknown = sorted(set(document) - {"users", "roles", "connections", LINE})
    if unknown:
        raise ConfigError([f"Unknown top-level key(s): {', '.join(unknown)} (expected users, roles, connections)."])
    return document


def _plan_users(document: dict[str, Any], plan: Plan, problems: list[str]) -> set[str]:
    user_model = get_user_model()
    names: set[str] = set()
    for index, item in enumerate(_list(document, "users", problems)):
        username = str(item.get("username") or "")
        where = _where("users", index, item, username)
        _unknown_keys(item, USER_KEYS, where, problems)
        if not username:
            problems.append(f"{where}: username is required.")
            continue
        if username in names:
            problems.append(f"{where}: user {username} is listed twice.")
        names.add(username)
        values = {key: str(item.get(key) or "") for key in USER_KEYS - {"username"} if key in item}
        existing = user_model.objects.filter(username=username).first()
        changed = [key for key, value in values.items() if existing and getattr(existing, key) != value]
        action = "create" if existing is None else ("update" if changed else "unchanged")
        plan.changes.append(Change("user", username, action, changed))
        plan.users.append({"username": username, "values": values})
    return names


def _plain(mapping: Any) -> Any:
    """A nested mapping without the line marker the loader added."""
    return {key: value for key, value in mapping.items() if key != LINE} if isinstance(mapping, dict) else mapping


def _scope_list(value: Any) -> list[str]:
    """Scopes as in the seed ("api,refresh_token"), space-separated, or a YAML list."""
    if isinstance(value, list):
        return [str(scope) for scope in value if str(scope).strip()]
    return split_scopes(str(value or ""))


def _connection_form_data(
    item: dict[str, Any], provider: Provider, secret: str | None, private_key: str | None
) -> dict[str, Any]:
    placeholders = _plain(item.get("placeholders") or {})
    data: dict[str, Any] = {
        "name": item.get("name") or "",
        "slug": item.get("slug") or "",
        "description": item.get("description") or "",
        "provider": provider.pk,
        "grant_type": item.get("grant_type") or "authorization_code",
        "token_type": item.get("token_type") or "shared",
        "client_id": item.get("client_id") or "",
        "client_secret": secret or "",
        "private_key": private_key or "",
        "private_key_id": item.get("private_key_id") or "",
        "jwt_subject": item.get("jwt_subject") or "",
        "client_auth_method": CLIENT_AUTH_METHOD_VALUES.get(str(item.get("client_auth_method") or ""), ""),
        "authorization_url": item.get("authorization_url") or "",
        "token_url": item.get("token_url") or "",
        "revocation_url": item.get("revocation_url") or "",
        "device_authorization_url": item.get("device_authorization_url") or "",
        "issuer": item.get("issuer") or "",
        "scopes": ",".join(_scope_list(item.get("scopes"))),
        "extra_authorization_params": json.dumps(_plain(item.get("extra_authorization_params") or {})),
        "default_token_lifetime": item.get("default_token_lifetime") or "",
    }
    if item.get("enabled", True):
        data["is_enabled"] = "on"
    if isinstance(placeholders, dict):
        data.update({PLACEHOLDER_PREFIX + str(name): str(value) for name, value in placeholders.items()})
    return data


class ConfigConnectionForm(ConnectionForm):
    """The admin's connection form without the roles field: in the file, roles name their connections."""

    class Meta(ConnectionForm.Meta):
        fields = [name for name in ConnectionForm.Meta.fields if name != "roles"]


def _connection_values(connection: Connection) -> dict[str, Any]:
    """What a file can say about a connection, to tell an update from no change."""
    return {
        "name": connection.name,
        "description": connection.description,
        "provider": connection.provider_id,
        "placeholders": connection.placeholders,
        "grant_type": connection.grant_type,
        "token_type": connection.token_type,
        "client_id": connection.client_id,
        "client_secret": connection.client_secret,
        "client_auth_method": connection.client_auth_method,
        "private_key": connection.private_key,
        "private_key_id": connection.private_key_id,
        "jwt_subject": connection.jwt_subject,
        "authorization_url": connection.authorization_url,
        "token_url": connection.token_url,
        "revocation_url": connection.revocation_url,
        "device_authorization_url": connection.device_authorization_url,
        "issuer": connection.issuer,
        "scopes": connection.scopes,
        "extra_authorization_params": connection.extra_authorization_params,
        "default_token_lifetime": connection.default_token_lifetime,
        "is_enabled": connection.is_enabled,
    }


def _plan_connections(document: dict[str, Any], plan: Plan, base_dir: Path, problems: list[str]) -> set[str]:
    providers = {provider.slug: provider for provider in Provider.objects.all()}
    slugs: set[str] = set()
    for index, item in enumerate(_list(document, "connections", problems)):
        name = str(item.get("name") or "")
        where = _where("connections", index, item, name)
        _unknown_keys(item, CONNECTION_KEYS | {"client_secret"}, where, problems)
        slug = str(item.get("slug") or slugify(name))
        if slug in slugs:
            problems.append(f"{where}: slug {slug} is used by another connection in this file.")
        slugs.add(slug)
        provider = providers.get(str(item.get("provider") or ""))
        if provider is None:
            problems.append(
                f"{where}: provider {item.get('provider')!r} is not a provider type; use one of "
                f"{', '.join(sorted(providers))}."
            )
        if "placeholders" in item and not isinstance(item["placeholders"], dict):
            problems.append(f"{where}: placeholders must be a mapping, e.g. {{yourinstance: acme}}.")
        if "extra_authorization_params" in item and not isinstance(item["extra_authorization_params"], dict):
            problems.append(f"{where}: extra_authorization_params must be a mapping.")
        if item.get("client_auth_method", "") not in ("", *CLIENT_AUTH_METHOD_VALUES):
            problems.append(f"{where}: client_auth_method must be one of {', '.join(CLIENT_AUTH_METHOD_VALUES)}.")
        secret = reference_read(item, "client_secret", where, base_dir, problems)
        private_key = reference_read(item, "private_key", where, base_dir, problems)
        if provider is None:
            continue
        existing = Connection.objects.filter(slug=slug).first()
        data = _connection_form_data({**item, "slug": slug}, provider, secret, private_key)
        try:
            data.update(discovery.discovered_form_data(data, provider))
        except ProviderError as exc:
            problems.append(f"{where}: issuer: {exc.message}")
            continue
        form = ConfigConnectionForm(data=data, instance=existing or Connection())
        if not form.is_valid():
            for field_name, errors in form.errors.items():
                key = field_name.removeprefix(PLACEHOLDER_PREFIX)
                label = f"placeholders.{key}" if field_name.startswith(PLACEHOLDER_PREFIX) else key
                label = REFERENCE_LABELS.get(label, label)
                problems.extend(f"{where}: {label}: {error}" for error in errors)
            continue
        if existing is None:
            plan.changes.append(Change("connection", slug, "create"))
        else:
            before = _connection_values(Connection.objects.get(pk=existing.pk))
            after = _connection_values(form.instance)
            changed = [key for key in before if before[key] != after[key]]
            changed = ["client secret" if key == "client_secret" else key for key in changed]
            plan.changes.append(Change("connection", slug, "update" if changed else "unchanged", changed))
        plan.connections.append((form, existing is None))
    return slugs


def _plan_roles(
    document: dict[str, Any], plan: Plan, usernames: set[str], slugs: set[str], problems: list[str]
) -> None:
    user_model = get_user_model()
    names: set[str] = set()
    for index, item in enumerate(_list(document, "roles", problems)):
        name = str(item.get("name") or "")
        where = _where("roles", index, item, name)
        _unknown_keys(item, ROLE_KEYS, where, problems)
        if not name:
            problems.append(f"{where}: name is required.")
            continue
        if name in names:
            problems.append(f"{where}: role {name} is listed twice.")
        names.add(name)
        permissions = [str(value) for value in item.get("permissions") or []]
        members = [str(value) for value in item.get("users") or []]
        connection_slugs = [str(value) for value in item.get("connections") or []]
        for permission in permissions:
            if permission not in FEATURE_PERMISSIONS:
                problems.append(f"{where}: unknown permission {permission!r} (use {' or '.join(FEATURE_PERMISSIONS)}).")
        known_users = usernames | set(
            user_model.objects.filter(username__in=members).values_list("username", flat=True)
        )
        for member in members:
            if member not in known_users:
                problems.append(f"{where}: user {member!r} is neither in the users section nor in the database.")
        known_slugs = slugs | set(Connection.objects.filter(slug__in=connection_slugs).values_list("slug", flat=True))
        for slug in connection_slugs:
            if slug not in known_slugs:
                problems.append(
                    f"{where}: connection {slug!r} is neither in the connections section nor in the database."
                )
        role = Group.objects.filter(name=name).first()
        wanted = {
            "permissions": sorted(set(permissions)),
            "users": sorted(set(members)),
            "connections": sorted(set(connection_slugs)),
        }
        if role is None:
            plan.changes.append(Change("role", name, "create"))
        else:
            current = {
                "permissions": sorted(
                    role.permissions.filter(codename__in=FEATURE_PERMISSIONS).values_list("codename", flat=True)
                ),
                "users": sorted(role.user_set.values_list("username", flat=True)),
                "connections": sorted(role.connections.values_list("slug", flat=True)),
            }
            changed = [key for key in wanted if wanted[key] != current[key]]
            plan.changes.append(Change("role", name, "update" if changed else "unchanged", changed))
        plan.roles.append({"name": name, **wanted})


def config_plan(text: str, *, base_dir: Path) -> Plan:
    """Check a whole file against the database; raises ConfigError listing every problem."""
    document = config_parse(text)
    plan, problems = Plan(), []
    usernames = _plan_users(document, plan, problems)
    slugs = _plan_connections(document, plan, base_dir, problems)
    _plan_roles(document, plan, usernames, slugs, problems)
    if problems:
        raise ConfigError(problems)
    return plan


def config_apply(plan: Plan, *, actor: AbstractBaseUser | None = None) -> None:
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
        for form, _ in plan.connections:
            form.save()
        for role_values in plan.roles:
            if actions[("role", role_values["name"])].action == "unchanged":
                continue
            role, created = Group.objects.get_or_create(name=role_values["name"])
            role_update(
                role=role,
                feature_permissions=role_values["permissions"],
                members=list(user_model.objects.filter(username__in=role_values["users"])),
                connections=list(Connection.objects.filter(slug__in=role_values["connections"])),
                actor=actor,
                actor_label="" if actor else "apply_config",
                created=created,
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


def config_export() -> dict[str, Any]:
    """The same YAML structure for what exists, with secrets as references for the operator to fill in."""
    roles = list(Group.objects.prefetch_related("permissions", "user_set", "connections").order_by("name"))
    members = sorted({user for role in roles for user in role.user_set.all()}, key=lambda user: user.username)
    return {
        "users": [{"username": user.username, **({"email": user.email} if user.email else {})} for user in members],
        "roles": [
            {
                "name": role.name,
                "permissions": sorted(p.codename for p in role.permissions.all() if p.codename in FEATURE_PERMISSIONS),
                "users": sorted(user.username for user in role.user_set.all()),
                "connections": sorted(connection.slug for connection in role.connections.all()),
            }
            for role in roles
        ],
        "connections": [_export_connection(connection) for connection in Connection.objects.select_related("provider")],
    }


def _export_connection(connection: Connection) -> dict[str, Any]:
    item: dict[str, Any] = {
        "name": connection.name,
        "slug": connection.slug,
        "description": connection.description,
        "provider": connection.provider.slug,
    }
    if connection.placeholders:
        item["placeholders"] = dict(connection.placeholders)
    for key in ("authorization_url", "token_url", "revocation_url", "device_authorization_url", "issuer"):
        if getattr(connection, key):  # only overrides; otherwise the preset applies
            item[key] = getattr(connection, key)
    item.update(grant_type=connection.grant_type, token_type=connection.token_type, client_id=connection.client_id)
    if connection.client_auth_method:
        item["client_auth_method"] = CLIENT_AUTH_METHOD_NAMES[connection.client_auth_method]
    if connection.client_secret:
        item["client_secret_env"] = variable_name(connection.slug, "client_secret")
    if connection.private_key:
        item["private_key_env"] = variable_name(connection.slug, "private_key")
    for key in ("private_key_id", "jwt_subject"):
        if getattr(connection, key):
            item[key] = getattr(connection, key)
    item["scopes"] = connection.scopes
    if connection.extra_authorization_params:
        item["extra_authorization_params"] = dict(connection.extra_authorization_params)
    if connection.default_token_lifetime:
        item["default_token_lifetime"] = connection.default_token_lifetime
    if not connection.is_enabled:
        item["enabled"] = False
    return item
