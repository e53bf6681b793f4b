"""A connection entry of a configuration file, made into the connection it describes and held to the rules the
admin's form applies (connections.validation): the same checks, the same sentences, each with its place in the
file and the file's own key names."""

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.core.exceptions import ValidationError
from django.utils.text import slugify

from connections import validation
from connections.config.document import plain, unknown_keys
from connections.config.references import reference_read
from connections.errors import ProviderError
from connections.models import Connection
from connections.oauth import discovery
from providers.models import CLIENT_AUTH_METHOD_NAMES, Provider, split_scopes

CONNECTION_KEYS = {
    "name", "slug", "description", "provider", "placeholders", "authorization_url", "token_url", "revocation_url",
    "issuer", "grant_type", "token_type", "client_id", "client_secret_env", "client_secret_file", "scopes",
    "extra_authorization_params", "default_token_lifetime", "enabled", "client_auth_method", "private_key_env",
    "private_key_file", "private_key_id", "jwt_subject", "device_authorization_url", "api_base_url", "token_access",
    "next_client_secret_env", "next_client_secret_file",
}  # fmt: skip
TEXT_FIELDS = (
    "description", "client_id", "private_key_id", "jwt_subject", "authorization_url", "token_url", "revocation_url",
    "device_authorization_url", "issuer", "api_base_url",
)  # fmt: skip
# A problem's field, as the file names it.
FILE_KEYS = {
    "client_secret": "client_secret_env",
    "next_client_secret": "next_client_secret_env",
    "private_key": "private_key_env",
    "is_enabled": "enabled",
    validation.NON_FIELD: "connection",
}
CLIENT_AUTH_METHOD_VALUES = {name: method for method, name in CLIENT_AUTH_METHOD_NAMES.items()}
# Set by the engine and the flows, or by the admin alone: a file says nothing of them.
NOT_FROM_FILES = ["created_by", "last_failure", "last_failure_at", "failures_in_a_row", "last_token_issued_at"]


@dataclass
class PlannedConnection:
    connection: Connection  # as the file leaves it, checked, not saved yet
    created: bool
    changed: list[str] = field(default_factory=list)  # the fields an update changes, in words


def _scope_list(value: Any) -> list[str]:
    """Scopes as in the seed ("api,refresh_token"), space-separated, or a YAML list."""
    if isinstance(value, list):
        return [str(scope) for scope in value if str(scope).strip()]
    return split_scopes(str(value or ""))


def _values(item: dict[str, Any], provider: Provider, slug: str) -> dict[str, Any]:
    """The model fields an entry sets (the preset applies to what it leaves out)."""
    values: dict[str, Any] = {name: str(item.get(name) or "") for name in TEXT_FIELDS}
    values["issuer"] = values["issuer"].strip()
    lifetime = item.get("default_token_lifetime")
    return {
        **values,
        "name": str(item.get("name") or ""),
        "slug": slug,
        "provider": provider,
        "grant_type": str(item.get("grant_type") or "authorization_code"),
        "token_type": str(item.get("token_type") or "shared"),
        "token_access": str(item.get("token_access") or "both"),
        "client_auth_method": CLIENT_AUTH_METHOD_VALUES.get(str(item.get("client_auth_method") or ""), ""),
        "scopes": ",".join(_scope_list(item.get("scopes"))),
        "default_token_lifetime": lifetime if lifetime not in (None, "") else None,
        "is_enabled": bool(item.get("enabled", True)),
    }


def connection_planned(
    item: dict[str, Any], place: str, provider: Provider, base_dir: Path, problems: list[str]
) -> PlannedConnection | None:
    """The connection an entry describes (the one with its slug, or a new one), checked; None when the entry has
    a problem (each added to `problems` with its place)."""
    found: validation.Problems = {}
    unknown_keys(item, CONNECTION_KEYS | {"client_secret", "next_client_secret"}, place, problems)
    if "placeholders" in item and not isinstance(item["placeholders"], dict):
        problems.append(f"{place}: placeholders must be a mapping, e.g. {{yourinstance: acme}}.")
    if "extra_authorization_params" in item and not isinstance(item["extra_authorization_params"], dict):
        problems.append(f"{place}: extra_authorization_params must be a mapping.")
    if item.get("client_auth_method", "") not in ("", *CLIENT_AUTH_METHOD_VALUES):
        problems.append(f"{place}: client_auth_method must be one of {', '.join(CLIENT_AUTH_METHOD_VALUES)}.")
    secret = reference_read(item, "client_secret", place, base_dir, problems)
    private_key = reference_read(item, "private_key", place, base_dir, problems)
    next_secret = reference_read(item, "next_client_secret", place, base_dir, problems)
    existing = Connection.objects.filter(slug=str(item.get("slug") or slugify(str(item.get("name") or "")))).first()
    slug, slug_problem = validation.slug_for(
        str(item.get("slug") or ""), str(item.get("name") or ""), pk=existing.pk if existing else None
    )
    values = _values(item, provider, slug)
    try:
        values.update(discovery.discovered_form_data(values, provider))
    except ProviderError as exc:
        problems.append(f"{place}: issuer: {exc.message}")
        return None
    connection = copy.copy(existing) if existing else Connection()
    for name, value in values.items():
        setattr(connection, name, value)
    connection.extra_authorization_params, params_problem = validation.authorization_params_checked(
        plain(item.get("extra_authorization_params") or {})
    )
    for name, problem in (
        ("slug", slug_problem),
        ("issuer", validation.issuer_problem(values["issuer"])),
        ("extra_authorization_params", params_problem),
    ):
        if problem:
            found[name] = [problem]
    _model_check(connection, found)
    if not found:
        credentials = validation.Credentials(
            client_secret=secret, private_key=private_key, private_key_id_given="private_key_id" in item
        )
        placeholders = {str(name): str(value) for name, value in (plain(item.get("placeholders")) or {}).items()}
        changes, found = validation.connection_check(connection, credentials=credentials, placeholders=placeholders)
        changes.apply_to(connection)
        _next_secret_apply(connection, next_secret)
    for name, messages in found.items():
        problems.extend(f"{place}: {FILE_KEYS.get(name, name)}: {message}" for message in messages)
    if found:
        return None
    return PlannedConnection(connection, existing is None, _changed(existing, connection) if existing else [])


def _next_secret_apply(connection: Connection, next_secret: str | None) -> None:
    """A next client secret by reference (rollover without an outage, connections.engine.rollover); none given keeps
    the stored one. One that is already the current secret was promoted since: applying the same file again leaves
    it current, not next as well."""
    if next_secret is not None and next_secret != connection.client_secret:
        connection.next_client_secret = next_secret


def _model_check(connection: Connection, found: validation.Problems) -> None:
    """The model's own rules (choices, lengths, numbers, a unique name), as the admin's form applies them."""
    try:
        connection.full_clean(exclude=[*NOT_FROM_FILES, *found])
    except ValidationError as exc:
        for name, messages in exc.message_dict.items():
            found.setdefault(name, []).extend(messages)


def _changed(before: Connection, after: Connection) -> list[str]:
    """What a file can say about a connection that differs from the stored one, in words (never a value)."""
    names = ["name", "description", "provider_id", "placeholders", "grant_type", "token_type", "client_id"]
    names += [
        "client_secret",
        "next_client_secret",
        "client_auth_method",
        "private_key",
        "private_key_id",
        "jwt_subject",
        "issuer",
    ]
    names += ["authorization_url", "token_url", "revocation_url", "device_authorization_url", "scopes"]
    names += ["extra_authorization_params", "api_base_url", "token_access", "default_token_lifetime", "is_enabled"]
    words = {"client_secret": "client secret", "next_client_secret": "next client secret", "provider_id": "provider"}
    return [words.get(name, name) for name in names if getattr(before, name) != getattr(after, name)]
