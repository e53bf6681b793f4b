"""What the connection page shows besides its fields, and its script reads: the provider types in groups, each
type's preset, the rows and buttons each grant uses, the URLs a connection must give itself. A presenter: no rule
of what a connection may be lives here (connections.validation holds those)."""

import json
from collections.abc import Mapping
from typing import Any

from django import forms
from django.utils.html import escape

from connections.web.form_fields import RequiredLabelBoundField
from providers.models import (
    APP_GRANTS,
    CLIENT_AUTH_METHOD_NAMES,
    ClientAuthMethod,
    GrantType,
    Provider,
    ProviderCategory,
    split_scopes,
    urls_required_by,
)


def provider_choices(providers: list[Provider]) -> list[tuple[Any, Any]]:
    """The provider select's options in groups: Custom and the administrators' own types first, then the
    catalog's by category, each by name."""
    labels = dict(ProviderCategory.choices)
    groups: dict[str, list[tuple[int, str]]] = {"Custom and your own provider types": []}
    for provider in sorted(providers, key=lambda provider: provider.name.lower()):
        label = labels.get(provider.category, "Other") if provider.is_certified and provider.slug != "custom" else None
        groups.setdefault(label or "Custom and your own provider types", []).append((provider.pk, provider.name))
    ordered = sorted(groups.items(), key=lambda group: (group[0] != "Custom and your own provider types", group[0]))
    return [("", "---------"), *((label, options) for label, options in ordered if options)]


def preset_preview(provider: Provider) -> dict[str, Any]:
    """What the connection form's script shows of a provider type while the administrator types."""
    return {
        "name": provider.name,
        "description": provider.description,
        "docs_url": provider.docs_url,
        "authorization_url": provider.authorization_url,
        "token_url": provider.token_url,
        "revocation_url": provider.revocation_url,
        "device_authorization_url": provider.device_authorization_url,
        "default_scopes": " ".join(split_scopes(provider.default_scopes)),
        # null: the default scopes; "": none with that grant
        "client_credentials_scopes": None
        if provider.client_credentials_scopes is None
        else " ".join(split_scopes(provider.client_credentials_scopes)),
        "refresh_url": provider.refresh_url,
        "client_auth_method": CLIENT_AUTH_METHOD_NAMES[provider.client_auth_method],
        "client_auth_method_code": provider.client_auth_method,
        "grant_types": provider.grant_types,
        "placeholders": provider.placeholders,
    }


URL_FIELDS = ("authorization_url", "token_url", "revocation_url", "device_authorization_url")
URL_REQUIRED_HELP = escape(
    "Required: this provider type has no URL of its own. Enter it, or an issuer to read it from."
)


def grant_layout(grant_type: str) -> str:
    """Which rows and buttons the connection page shows for a grant (its template's CSS names them): "app" for the
    grants that act as the application (no redirect, no Connect), "device" for the Device Code grant, else "code"."""
    if grant_type in APP_GRANTS:
        return "app"
    return "device" if grant_type == GrantType.DEVICE_CODE else "code"


def signing_rows(grant_type: str, client_auth_method: str) -> str:
    """Which signing rows the page shows (its template's CSS names them): "jwt" for the JWT Bearer grant (the
    private key, its ID and the subject), "key" where the client authenticates with private_key_jwt (the key and
    its ID), else "none" (a client secret only)."""
    if grant_type == GrantType.JWT_BEARER:
        return "jwt"
    return "key" if client_auth_method == ClientAuthMethod.PRIVATE_KEY_JWT else "none"


def grant_descriptions() -> dict[str, dict[str, Any]]:
    """What the form's script knows of every grant: its label, its layout and the URLs it needs."""
    return {
        grant.value: {
            "label": str(grant.label),
            "layout": grant_layout(grant),
            "urls_required": urls_required_by(grant),
        }
        for grant in GrantType
    }


def adapt_to_provider_and_grant(
    form: forms.ModelForm, source: Mapping[str, Any], providers: list[Provider]
) -> tuple[str, str]:
    """The connection page as it is shown, before its script (if any) takes over: the grants the provider type
    supports, the URLs the connection must give itself; returns its grant layout and signing rows. Validation is
    the form's: every grant stays a valid choice there, so that an unsupported one is refused in words."""
    chosen = str(source.get(form.add_prefix("provider")) or "")
    provider = next((provider for provider in providers if str(provider.pk) == chosen), None)
    grant = str(source.get(form.add_prefix("grant_type")) or "")
    grant_select = form.fields["grant_type"].widget
    grant_select.attrs["data-grants"] = json.dumps(grant_descriptions())
    if provider is not None:
        supported = [(value, label) for value, label in GrantType.choices if value in provider.grant_types]
        grant_select.choices = supported
        if grant not in provider.grant_types:  # refused by clean(); the select shows the first supported one
            grant = supported[0][0] if supported else ""
    layout = grant_layout(grant)
    auth = str(source.get(form.add_prefix("client_auth_method")) or getattr(provider, "client_auth_method", ""))
    signing = signing_rows(grant, auth)
    required = urls_required_by(grant) if provider is not None else []
    for name in URL_FIELDS:
        if (field := form.fields.get(name)) is None:
            continue
        field.widget.attrs.update({"data-optional-help": field.help_text, "data-required-help": URL_REQUIRED_HELP})
        if name in required and not getattr(provider, name):  # its label says so; clean() requires it
            field.bound_field_class = RequiredLabelBoundField
            field.help_text = URL_REQUIRED_HELP
    return layout, signing
