"""export_config: the YAML of apply_config for what exists, with every secret as a reference for the operator to
fill in (docs/operations.md, "Configuration as code")."""

from typing import Any

from django.contrib.auth.models import Group

from connections.config.references import variable_name
from connections.models import FEATURE_PERMISSIONS, Connection, TokenAccess
from providers.models import CLIENT_AUTH_METHOD_NAMES


def config_export() -> dict[str, Any]:
    """The same YAML structure for what exists, with secrets as references for the operator to fill in."""
    roles = list(
        Group.objects.prefetch_related("permissions", "user_set", "connections", "identity_provider_groups").order_by(
            "name"
        )
    )
    members = sorted({user for role in roles for user in role.user_set.all()}, key=lambda user: user.username)
    return {
        "users": [{"username": user.username, **({"email": user.email} if user.email else {})} for user in members],
        "roles": [
            {
                "name": role.name,
                "permissions": sorted(p.codename for p in role.permissions.all() if p.codename in FEATURE_PERMISSIONS),
                "users": sorted(user.username for user in role.user_set.all()),
                "connections": sorted(connection.slug for connection in role.connections.all()),
                **_identity_provider_groups(role),
            }
            for role in roles
        ],
        "connections": [_export_connection(connection) for connection in Connection.objects.select_related("provider")],
    }


def _identity_provider_groups(role: Group) -> dict[str, list[str]]:
    groups = sorted(mapping.group for mapping in role.identity_provider_groups.all())
    return {"identity_provider_groups": groups} if groups else {}


def _export_connection(connection: Connection) -> dict[str, Any]:
    item: dict[str, Any] = {
        "name": connection.name,
        "slug": connection.slug,
        "description": connection.description,
        "provider": connection.provider.slug,
    }
    if connection.placeholders:
        item["placeholders"] = dict(connection.placeholders)
    for key in (
        "authorization_url",
        "token_url",
        "revocation_url",
        "device_authorization_url",
        "issuer",
        "api_base_url",
    ):
        if getattr(connection, key):  # only overrides; otherwise the preset applies
            item[key] = getattr(connection, key)
    item.update(grant_type=connection.grant_type, token_type=connection.token_type, client_id=connection.client_id)
    if connection.client_auth_method:
        item["client_auth_method"] = CLIENT_AUTH_METHOD_NAMES[connection.client_auth_method]
    if connection.client_secret:
        item["client_secret_env"] = variable_name(connection.slug, "client_secret")
    if connection.next_client_secret:
        item["next_client_secret_env"] = variable_name(connection.slug, "next_client_secret")
    if connection.private_key:
        item["private_key_env"] = variable_name(connection.slug, "private_key")
    for key in ("private_key_id", "jwt_subject"):
        if getattr(connection, key):
            item[key] = getattr(connection, key)
    item["scopes"] = connection.scopes
    if connection.extra_authorization_params:
        item["extra_authorization_params"] = dict(connection.extra_authorization_params)
    if connection.token_access != TokenAccess.BOTH:
        item["token_access"] = connection.token_access
    if connection.default_token_lifetime:
        item["default_token_lifetime"] = connection.default_token_lifetime
    if not connection.is_enabled:
        item["enabled"] = False
    return item
