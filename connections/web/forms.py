import json
import re
import secrets
from typing import Any
from urllib.parse import urlsplit

from django import forms
from django.contrib.admin.widgets import FilteredSelectMultiple
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.urls import reverse
from django.utils.html import escape, format_html
from django.utils.text import slugify

from connections.models import FEATURE_PERMISSIONS, BotKey, Connection, Role, TokenType
from connections.oauth import assertions
from connections.outbound import policy as outbound
from connections.web.form_fields import (
    PARAMS_EXAMPLES,
    AuthorizationParamsField,
    RequirableBoundField,
    WriteOnlyTextarea,
)
from providers.models import (
    APP_GRANTS,
    CLIENT_AUTH_METHOD_NAMES,
    PLACEHOLDER_PATTERN,
    ClientAuthMethod,
    GrantType,
    Provider,
    ProviderCategory,
    split_scopes,
    urls_required_by,
)

PLACEHOLDER_PREFIX = "placeholder__"
# A placeholder value becomes part of a host name or path: letters, digits, dots and dashes only, so that a
# value cannot redirect a URL elsewhere ("evil.example/" or "x@evil").
PLACEHOLDER_VALUE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252}[A-Za-z0-9])?$")


def _all_placeholders(providers: list[Provider]) -> dict[str, list[str]]:
    """Placeholder name -> names of the providers whose URLs use it."""
    used: dict[str, list[str]] = {}
    for provider in providers:
        for name in provider.placeholders:
            used.setdefault(name, []).append(provider.name)
    return used


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


class ConnectionForm(forms.ModelForm):
    client_secret = forms.CharField(
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Stored encrypted and never shown again.",
    )
    private_key = forms.CharField(
        required=False,
        strip=True,
        max_length=20_000,
        widget=WriteOnlyTextarea(attrs={"rows": 4, "cols": 60, "autocomplete": "off", "spellcheck": "false"}),
        help_text="For private_key_jwt or the JWT Bearer grant: the PEM private key (RSA or P-256), optionally "
        "followed by its certificate (Microsoft Entra). Stored encrypted and never shown again.",
    )
    # Shown only while one is stored (ConnectionAdmin.get_fieldsets); a value typed in the field beside wins.
    clear_client_secret = forms.BooleanField(
        required=False,
        label="Remove the stored secret",
        help_text="For a client that no longer has one: a public client, or one that now signs with a private key.",
    )
    clear_private_key = forms.BooleanField(required=False, label="Remove the stored private key")
    extra_authorization_params = AuthorizationParamsField(
        required=False,
        initial=dict,
        help_text=escape(f"Added to the authorization URL: {PARAMS_EXAMPLES}."),
        widget=forms.Textarea(attrs={"rows": 2, "cols": 60}),
    )

    class Meta:
        model = Connection
        fields = [
            "name",
            "slug",
            "description",
            "provider",
            "grant_type",
            "token_type",
            "client_id",
            "client_auth_method",
            "private_key_id",
            "jwt_subject",
            "authorization_url",
            "token_url",
            "revocation_url",
            "device_authorization_url",
            "issuer",
            "scopes",
            "extra_authorization_params",
            "default_token_lifetime",
            "is_enabled",
            "roles",
        ]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.grant_layout = grant_layout(self.instance.grant_type)  # the template hides rows by it
        self.signing = signing_rows(self.instance.grant_type, self.instance.client_auth_method)
        if "provider" not in self.fields:
            return  # a view-only user's form: every field is read-only
        self.fields["slug"].required = False
        self.fields["issuer"].help_text += (
            " With an issuer, URLs left blank that the provider type has no preset for are read from its discovery "
            "document (/.well-known/openid-configuration) when you save, or when you press Discover."
        )
        self.fields["slug"].help_text = "Bots ask for tokens by this name. Leave blank to derive it from the name."
        if self.instance.pk and self.instance.private_key:
            self.fields[
                "private_key"
            ].help_text = (
                "A private key is stored (encrypted, never shown). Leave blank to keep it; paste one to replace it."
            )
        if self.instance.pk and self.instance.client_secret:
            self.fields[
                "client_secret"
            ].help_text = (
                "A secret is stored (encrypted, never shown). Leave blank to keep it; type a new one to replace it."
            )
        self.fields["client_auth_method"].choices = [("", "As the provider type does"), *ClientAuthMethod.choices]
        self.fields["issuer"].widget.attrs["data-discover-url"] = reverse("admin:connections_connection_discover")
        providers = list(Provider.objects.all())
        self.fields["provider"].choices = provider_choices(providers)
        # The admin wraps the select in a RelatedFieldWidgetWrapper; the attribute belongs on the select itself.
        select = getattr(self.fields["provider"].widget, "widget", self.fields["provider"].widget)
        presets = {str(provider.pk): preset_preview(provider) for provider in providers}
        select.attrs["data-presets"] = json.dumps(presets)
        self._adapt_to_provider_and_grant(providers)
        for name, provider_names in _all_placeholders(providers).items():
            self.fields[PLACEHOLDER_PREFIX + name] = forms.CharField(
                label=f"<{name}>",
                required=False,
                initial=self.instance.placeholders.get(name, "") if self.instance.pk else "",
                help_text=escape(f"Filled into the URLs and scopes of {', '.join(provider_names)}."),
                widget=forms.TextInput(attrs={"class": "placeholder-input", "data-placeholder": name}),
            )

    def _adapt_to_provider_and_grant(self, providers: list[Provider]) -> None:
        """The page as it is shown, before the script (if any) takes over: the grants the provider type supports,
        the rows the grant uses (grant_layout), the URLs the connection must give itself. Validation is clean()'s:
        every grant stays a valid choice there, so that an unsupported one is refused in words."""
        source = self.data if self.is_bound else self.initial  # a form shown again after an error: as posted
        chosen = str(source.get(self.add_prefix("provider")) or "")
        provider = next((provider for provider in providers if str(provider.pk) == chosen), None)
        grant = str(source.get(self.add_prefix("grant_type")) or "")
        grant_select = self.fields["grant_type"].widget
        grant_select.attrs["data-grants"] = json.dumps(grant_descriptions())
        if provider is not None:
            supported = [(value, label) for value, label in GrantType.choices if value in provider.grant_types]
            grant_select.choices = supported
            if grant not in provider.grant_types:  # refused by clean(); the select shows the first supported one
                grant = supported[0][0] if supported else ""
        self.grant_layout = grant_layout(grant)
        auth = str(source.get(self.add_prefix("client_auth_method")) or getattr(provider, "client_auth_method", ""))
        self.signing = signing_rows(grant, auth)
        required = urls_required_by(grant) if provider is not None else []
        for name in URL_FIELDS:
            if (field := self.fields.get(name)) is None:
                continue
            field.bound_field_class = RequirableBoundField
            field.widget.attrs.update({"data-optional-help": field.help_text, "data-required-help": URL_REQUIRED_HELP})
            field.shown_required = name in required and not getattr(provider, name)
            if field.shown_required:
                field.help_text = URL_REQUIRED_HELP

    @property
    def placeholder_field_names(self) -> list[str]:
        return [name for name in self.fields if name.startswith(PLACEHOLDER_PREFIX)]

    def clean_slug(self) -> str:
        slug = self.cleaned_data.get("slug") or slugify(self.cleaned_data.get("name") or self.data.get("name", ""))
        if not slug:
            raise forms.ValidationError("Give the connection a name made of letters or digits, or a slug.")
        if Connection.objects.filter(slug=slug).exclude(pk=self.instance.pk).exists():
            raise forms.ValidationError(f"Another connection already uses the slug {slug!r}.")
        return slug

    def clean_issuer(self) -> str:
        issuer = self.cleaned_data.get("issuer", "").strip()
        if not issuer:
            return ""
        try:
            outbound.check_url(issuer)
        except outbound.ProviderError as exc:
            raise forms.ValidationError(exc.message) from None
        if urlsplit(issuer).query or urlsplit(issuer).fragment:
            raise forms.ValidationError("An issuer identifier has no query or fragment (RFC 8414 2).")
        return issuer

    def clean_scopes(self) -> str:
        return ",".join(split_scopes(self.cleaned_data.get("scopes", "")))

    def clean_extra_authorization_params(self) -> dict[str, str]:
        value = self.cleaned_data.get("extra_authorization_params") or {}
        if not isinstance(value, dict) or not all(
            isinstance(key, str) and isinstance(item, str | int | bool) for key, item in value.items()
        ):
            raise forms.ValidationError(
                'Enter a JSON object of names and text values, e.g. {"prompt": "consent"}, or name=value pairs '
                "joined by &."
            )
        if "" in value:
            raise forms.ValidationError("Each parameter needs a name: one here has none.")
        return {key: str(item) for key, item in value.items()}

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        provider: Provider | None = cleaned.get("provider")
        grant_type = cleaned.get("grant_type")
        if provider is None or not grant_type:
            return cleaned
        if grant_type not in provider.grant_types:
            labels = ", ".join(str(GrantType(grant).label) for grant in provider.grant_types) or "no grant type"
            self.add_error("grant_type", f"{provider} supports: {labels} (not {GrantType(grant_type).label}).")
        if grant_type in APP_GRANTS and cleaned.get("token_type") == TokenType.USER_SPECIFIC:
            label = GrantType(grant_type).label
            self.add_error("token_type", f"{label} acts as the application, not each user: choose Shared.")
        self._clean_credentials(cleaned, provider, grant_type)
        self._clean_placeholders_and_urls(cleaned, provider, grant_type)
        return cleaned

    def _clean_credentials(self, cleaned: dict[str, Any], provider: Provider, grant_type: str) -> None:
        """The secret and the private key are write-only: a blank field keeps the stored one (neither is a model
        field of this form) unless its Remove box is ticked. A signed assertion needs a private key; most else
        needs a secret."""
        if secret := cleaned.get("client_secret", ""):
            self.instance.client_secret = secret
        elif cleaned.get("clear_client_secret"):
            self.instance.client_secret = ""
        if cleaned.get("clear_private_key") and not cleaned.get("private_key"):
            self.instance.private_key = ""
        if key := cleaned.get("private_key", ""):
            try:
                key = self._key_from_key_file(key, cleaned)
                assertions.signing_key_load(key)
            except assertions.KeyProblem as exc:
                self.add_error("private_key", str(exc))
            else:
                self.instance.private_key = key
        signs = grant_type == GrantType.JWT_BEARER or (
            (cleaned.get("client_auth_method") or provider.client_auth_method) == ClientAuthMethod.PRIVATE_KEY_JWT
        )
        if signs and not self.instance.private_key and "private_key" not in self.errors:
            self.add_error("private_key", "Enter the PEM private key the provider knows the public half of.")
        # Only a public client (PKCE: RFC 7636, RFC 8252 8.5; a device: RFC 8628 3.1) or one that signs may do
        # without a secret.
        public = grant_type in (GrantType.AUTHORIZATION_CODE_PKCE, GrantType.DEVICE_CODE)
        if not self.instance.client_secret and not signs and not public:
            self.add_error("client_secret", "Enter the client secret of the application registered at the provider.")

    def _key_from_key_file(self, text: str, cleaned: dict[str, Any]) -> str:
        """The PEM key of what was pasted: a Google service account's JSON key file gives its key, must be the
        client ID's (its client_email), and gives the key ID unless one was typed in this same form."""
        key_file = assertions.key_file_read(text)
        if key_file is None:
            return text
        client_id = cleaned.get("client_id") or ""
        if key_file["client_email"] and client_id and key_file["client_email"] != client_id:
            raise assertions.KeyProblem(
                f"The key file is {key_file['client_email']}'s: enter that as the client ID (it is {client_id})."
            )
        if key_file["private_key_id"] and "private_key_id" not in self.changed_data:
            cleaned["private_key_id"] = key_file["private_key_id"]  # a rotated key file brings its new kid
        return key_file["private_key"].strip()

    def _clean_placeholders_and_urls(self, cleaned: dict[str, Any], provider: Provider, grant_type: str) -> None:
        templates = {
            field: cleaned.get(field) or getattr(provider, field)
            for field in ("authorization_url", "token_url", "revocation_url", "device_authorization_url")
        }
        templates["refresh_url"] = provider.refresh_url  # the provider type's only
        scopes = "" if cleaned.get("scopes") else provider.default_scopes_for(grant_type)
        needed = {name for template in (*templates.values(), scopes) for name in PLACEHOLDER_PATTERN.findall(template)}
        values: dict[str, str] = {}
        for name in sorted(needed | set(provider.placeholders)):
            field = PLACEHOLDER_PREFIX + name
            value = (cleaned.get(field) or "").strip()
            if field not in self.fields:
                self.add_error(None, f"<{name}> is not a placeholder any provider type uses: write the value itself.")
            elif value and not PLACEHOLDER_VALUE.match(value):
                self.add_error(field, "Use letters, digits, dots and dashes only.")
            elif name in needed and not value:
                self.add_error(field, f"{provider} needs <{name}> to build its URLs and scopes.")
            elif value:
                values[name] = value
        self.instance.placeholders = values
        if self.errors:
            return
        required = urls_required_by(grant_type)
        for field, template in templates.items():
            if not template:
                if field in required:
                    self.add_error(field, f"{provider} has no preset for this URL: enter it.")
                continue
            url = PLACEHOLDER_PATTERN.sub(lambda match: values[match.group(1)], template)
            try:
                outbound.check_url(url)
            except outbound.ProviderError as exc:
                self.add_error(field if field in self.fields else None, exc.message)


class WrappedFilteredSelectMultiple(FilteredSelectMultiple):
    """The admin's two-box select, wrapped as the admin wraps those of model fields: its script puts the boxes
    first in the select's parent, which would otherwise be the row, ahead of the field's label."""

    def render(self, *args: Any, **kwargs: Any) -> str:
        return format_html('<div class="related-widget-wrapper">{}</div>', super().render(*args, **kwargs))


class RoleForm(forms.ModelForm):
    feature_permissions = forms.MultipleChoiceField(
        choices=list(FEATURE_PERMISSIONS.items()), widget=forms.CheckboxSelectMultiple, required=False
    )
    members = forms.ModelMultipleChoiceField(
        queryset=get_user_model().objects.order_by("username"),
        required=False,
        widget=WrappedFilteredSelectMultiple("members", is_stacked=False),
        help_text="Who joins or leaves is audited, as from a user's page.",
    )
    invited_connections = forms.ModelMultipleChoiceField(
        queryset=Connection.objects.order_by("name"),
        required=False,
        widget=WrappedFilteredSelectMultiple("connections", is_stacked=False),
        help_text="Bots whose users hold this role get tokens for these connections.",
    )

    class Meta:
        model = Role
        fields = ("name",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            held = self.instance.permissions.filter(content_type__app_label="connections")
            self.fields["feature_permissions"].initial = [p.codename for p in held if p.codename in FEATURE_PERMISSIONS]
            self.fields["members"].initial = self.instance.user_set.all()
            self.fields["invited_connections"].initial = self.instance.connections.all()


class BotKeyAddForm(forms.ModelForm):
    expires_days = forms.IntegerField(
        required=False, min_value=1, max_value=3650, help_text="Leave blank for a key that never expires."
    )
    # One key per rendering of the form: the created page answers the POST (the raw key is never redirected
    # through the session), so reloading it would send the form again and silently make a second key.
    submission = forms.CharField(widget=forms.HiddenInput, initial=lambda: secrets.token_urlsafe(16), max_length=64)

    class Meta:
        model = BotKey
        fields = ("user", "name")
        help_texts = {
            "user": "The key gets tokens for the connections this user's roles are invited to (its reach, shown "
            "once it is created)."
        }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["user"].queryset = get_user_model().objects.filter(is_active=True).order_by("username")

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        # Claimed only once all else is valid, so that a form corrected after an error can still be sent.
        if not self.errors and not cache.add(f"bot-key-form:{cleaned['submission']}", True, timeout=86_400):
            raise forms.ValidationError(
                "This form was already sent: its key was created and shown once (see Bot keys). To create another "
                "key, open Add bot key again."
            )
        return cleaned
