import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from django.core.exceptions import ValidationError
from django.db import transaction

from providers.models import (
    APP_GRANTS,
    PLACEHOLDER_PATTERN,
    ClientAuthMethod,
    GrantType,
    Provider,
    ProviderCategory,
    TokenRequestFormat,
    api_token_header_problems,
    token_quirk_problems,
)

# A token answer's field that holds a whole https URL: Salesforce's <instance_url>, Zoho's <api_domain>.
TOKEN_FIELD_ONLY = re.compile(r"<[a-z0-9_]+_(?:url|domain)>")
CATALOG_PATH = Path(__file__).with_name("catalog.yaml")

# The catalog owns these fields of a certified preset; everything else about a row (id, timestamps) is the
# database's.
PRESET_FIELDS = (
    "name",
    "description",
    "category",
    "authorization_url",
    "token_url",
    "revocation_url",
    "device_authorization_url",
    "refresh_url",
    "default_scopes",
    "client_credentials_scopes",
    "scope_separator",
    "extra_authorization_params",
    "client_auth_method",
    "assertion_audience",
    "grant_types",
    "default_token_lifetime",
    "refresh_margin",
    "token_request_params",
    "token_request_headers",
    "token_request_format",
    "token_response_fields",
    "tokens_never_expire",
    "refresh_token_max_idle",
    "refresh_token_max_lifetime",
    "api_base_url",
    "api_token_header",
    "api_token_prefix",
    "revoke_replaced_grant",
    "docs_url",
)
URL_FIELDS = ("authorization_url", "token_url", "revocation_url", "device_authorization_url", "refresh_url")
# Where a <placeholder> may appear: each must be explained in the description.
TEMPLATE_FIELDS = (*URL_FIELDS, "assertion_audience", "api_base_url", "default_scopes", "client_credentials_scopes")
PRESET_DEFAULTS: dict[str, Any] = {
    "description": "",
    "category": "",
    "authorization_url": "",
    "token_url": "",
    "revocation_url": "",
    "device_authorization_url": "",
    "refresh_url": "",
    "default_scopes": "",
    "client_credentials_scopes": None,  # None: the default scopes; "": none for that grant
    "scope_separator": " ",
    "extra_authorization_params": {},
    "client_auth_method": ClientAuthMethod.BASIC,
    "assertion_audience": "",
    "default_token_lifetime": None,
    "refresh_margin": None,
    "token_request_params": {},
    "token_request_headers": {},
    "token_request_format": TokenRequestFormat.FORM,
    "token_response_fields": {},
    "tokens_never_expire": False,
    "refresh_token_max_idle": None,
    "refresh_token_max_lifetime": None,
    "api_base_url": "",
    "api_token_header": "Authorization",
    "api_token_prefix": "Bearer",
    "revoke_replaced_grant": False,
    "docs_url": "",
}


@dataclass
class CatalogSyncResult:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    # A provider created in the admin under a slug the catalog later adopts is left alone.
    skipped: list[str] = field(default_factory=list)


def provider_catalog_read(*, path: Path = CATALOG_PATH) -> list[dict[str, Any]]:
    """Parse and check the catalog file; a mistake in it names the preset and the field."""
    entries = yaml.safe_load(path.read_text())
    if not isinstance(entries, list):
        raise ValidationError(f"{path.name} must be a list of presets.")
    presets: list[dict[str, Any]] = []
    seen: set[str] = set()
    for position, entry in enumerate(entries, start=1):
        slug = entry.get("slug") if isinstance(entry, dict) else None
        where = f"{path.name}, preset {position} ({slug or 'no slug'})"
        if not slug or slug in seen:
            raise ValidationError(f"{where}: every preset needs a unique slug.")
        seen.add(slug)
        unknown = set(entry) - set(PRESET_FIELDS) - {"slug"}
        if unknown:
            raise ValidationError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}.")
        preset = {**PRESET_DEFAULTS, **{key: value for key, value in entry.items() if key != "slug"}}
        if not preset.get("name") or not isinstance(preset.get("grant_types"), list):
            raise ValidationError(f"{where}: name and grant_types (a list) are required.")
        bad_grants = set(preset["grant_types"]) - set(GrantType.values)
        if bad_grants:
            raise ValidationError(f"{where}: unknown grant type(s) {', '.join(sorted(bad_grants))}.")
        if preset["client_auth_method"] not in ClientAuthMethod.values:
            raise ValidationError(f"{where}: client_auth_method must be one of {', '.join(ClientAuthMethod.values)}.")
        if preset["token_request_format"] not in TokenRequestFormat.values:
            raise ValidationError(f"{where}: token_request_format must be form or json.")
        if preset["category"] not in ["", *ProviderCategory.values]:
            raise ValidationError(f"{where}: category must be one of {', '.join(ProviderCategory.values)}.")
        if problems := _preset_problems(preset):
            raise ValidationError(f"{where}: {' '.join(problems)}")
        presets.append({"slug": slug, **preset})
    return presets


def _preset_problems(preset: dict[str, Any]) -> list[str]:
    """What a certified preset must hold beyond its field names: https URLs, every placeholder explained in the
    description (the administrator has to know what to type), a documentation link, and scopes for a grant the
    preset supports."""
    problems = []
    for name in (*URL_FIELDS, "docs_url"):
        url = preset.get(name) or ""
        if url and not url.startswith("https://"):
            problems.append(f"{name} must be an https URL.")
    api_base = preset.get("api_base_url") or ""
    # <instance_url> and its like are filled from the token answer, which holds a whole https URL.
    if api_base and not (api_base.startswith("https://") or TOKEN_FIELD_ONLY.fullmatch(api_base)):
        problems.append("api_base_url must be an https URL, or a token answer's field such as <instance_url>.")
    if not preset.get("docs_url"):
        problems.append("docs_url (the provider's own OAuth documentation) is required.")
    for placeholder in _placeholders(preset):
        if f"<{placeholder}>" not in (preset.get("description") or ""):
            problems.append(f"<{placeholder}> appears in a URL or scope: its description must say what to fill in.")
    problems += token_quirk_problems(
        preset["token_request_params"], preset["token_request_headers"], preset["token_response_fields"]
    )
    problems += api_token_header_problems(preset["api_token_header"], preset["api_token_prefix"])
    if not isinstance(preset["revoke_replaced_grant"], bool):
        problems.append("revoke_replaced_grant must be true or false.")
    elif preset["revoke_replaced_grant"] and not preset["revocation_url"]:
        problems.append("revoke_replaced_grant is true, but there is no revocation_url to revoke at.")
    if preset["client_credentials_scopes"] is not None and not APP_GRANTS & set(preset["grant_types"]):
        problems.append("client_credentials_scopes is set, but neither client_credentials nor jwt_bearer is a grant.")
    return problems


def _placeholders(preset: dict[str, Any]) -> list[str]:
    text = " ".join(preset.get(name) or "" for name in TEMPLATE_FIELDS)
    return list(dict.fromkeys(PLACEHOLDER_PATTERN.findall(text)))


def provider_catalog_sync(*, path: Path = CATALOG_PATH, using: str = "default") -> CatalogSyncResult:
    """Create or update the certified presets from the catalog file. Running it again changes nothing."""
    result = CatalogSyncResult()
    presets = provider_catalog_read(path=path)
    with transaction.atomic(using=using):
        existing = {provider.slug: provider for provider in Provider.objects.using(using).select_for_update()}
        for preset in presets:
            slug = preset["slug"]
            values = {name: preset[name] for name in PRESET_FIELDS}
            provider = existing.get(slug)
            if provider is None:
                Provider.objects.using(using).create(slug=slug, is_certified=True, **values)
                result.created.append(slug)
                continue
            if not provider.is_certified:
                result.skipped.append(slug)
                continue
            changed = [name for name, value in values.items() if getattr(provider, name) != value]
            if not changed:
                result.unchanged.append(slug)
                continue
            for name in changed:
                setattr(provider, name, values[name])
            provider.save(using=using, update_fields=[*changed, "updated_at"])
            result.updated.append(slug)
    return result


def provider_catalog_table(*, path: Path = CATALOG_PATH) -> str:
    """The catalog as docs/providers.md's Markdown table: name, slug, group, grant types, placeholders."""
    labels, categories = dict(GrantType.choices), dict(ProviderCategory.choices)
    lines = ["| provider type | slug | group | grant types | placeholders |", "| --- | --- | --- | --- | --- |"]
    for preset in provider_catalog_read(path=path):
        placeholders = ", ".join(f"`<{name}>`" for name in _placeholders(preset)) or "—"
        grants = ", ".join(str(labels[grant]) for grant in preset["grant_types"])
        group = categories.get(preset["category"], "—")
        lines.append(f"| {preset['name']} | `{preset['slug']}` | {group} | {grants} | {placeholders} |")
    return "\n".join(lines) + "\n"
