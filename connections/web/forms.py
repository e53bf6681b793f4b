import copy
import json
import secrets
from typing import Any

from django import forms
from django.contrib.admin.widgets import FilteredSelectMultiple, RelatedFieldWidgetWrapper
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.db.models import Q
from django.forms.models import construct_instance
from django.forms.renderers import BaseRenderer
from django.urls import reverse
from django.utils.html import escape, format_html
from django.utils.safestring import SafeString

from connections import validation
from connections.errors import KeyProblem
from connections.models import FEATURE_PERMISSIONS, BotKey, Connection, Role, TokenAccess
from connections.oauth import assertions
from connections.web.connection_page import (
    adapt_to_provider_and_grant,
    grant_layout,
    preset_preview,
    provider_choices,
    signing_rows,
)
from connections.web.form_fields import PARAMS_EXAMPLES, AuthorizationParamsField, WriteOnlyTextarea, form_field
from providers.models import ClientAuthMethod, Provider

PLACEHOLDER_PREFIX = "placeholder__"  # a placeholder's field: placeholder__<name>


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
    # Rollover without an outage (connections.engine.rollover): write-only like the current ones.
    next_client_secret = forms.CharField(
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="The secret the provider will take next, entered before it is changed there: used once the "
        "current one is refused, and then made the current one. Stored encrypted and never shown again.",
    )
    clear_next_client_secret = forms.BooleanField(required=False, label="Remove the stored next secret")
    next_private_key = forms.CharField(
        required=False,
        strip=True,
        max_length=20_000,
        widget=WriteOnlyTextarea(attrs={"rows": 3, "cols": 60, "autocomplete": "off", "spellcheck": "false"}),
        help_text="The key (and certificate) the provider will take next, as for the private key: used once the "
        "current one is refused, and then made the current one. Stored encrypted and never shown again.",
    )
    clear_next_private_key = forms.BooleanField(required=False, label="Remove the stored next private key")
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
            "client_secret_expires_at",
            "next_client_secret_expires_at",
            "private_key_id",
            "jwt_subject",
            "authorization_url",
            "token_url",
            "revocation_url",
            "device_authorization_url",
            "issuer",
            "scopes",
            "extra_authorization_params",
            "api_base_url",
            "token_access",
            "default_token_lifetime",
            "is_enabled",
            "roles",
        ]

    def clean_token_access(self) -> str:
        return self.cleaned_data.get("token_access") or TokenAccess.BOTH

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.changes: validation.ConnectionChanges | None = None
        self.grant_layout = grant_layout(self.instance.grant_type)  # the template hides rows by it
        self.signing = signing_rows(self.instance.grant_type, self.instance.client_auth_method)
        if "provider" not in self.fields:
            return  # a view-only user's form: every field is read-only
        self.fields["slug"].required = False
        if "token_access" in self.fields:  # left out of a post: the default, as before the field existed
            self.fields["token_access"].required = False
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
        auth_methods = form_field(self, "client_auth_method", forms.ChoiceField)
        auth_methods.choices = [("", "As the provider type does"), *ClientAuthMethod.choices]
        self.fields["issuer"].widget.attrs["data-discover-url"] = reverse("admin:connections_connection_discover")
        providers = list(Provider.objects.all())
        provider_field = form_field(self, "provider", forms.ModelChoiceField)
        provider_field.choices = provider_choices(providers)
        # The admin wraps the select in a RelatedFieldWidgetWrapper; the attribute belongs on the select itself.
        widget = provider_field.widget
        select = widget.widget if isinstance(widget, RelatedFieldWidgetWrapper) else widget
        presets = {str(provider.pk): preset_preview(provider) for provider in providers}
        select.attrs["data-presets"] = json.dumps(presets)
        source = self.data if self.is_bound else self.initial  # a form shown again after an error: as posted
        self.grant_layout, self.signing = adapt_to_provider_and_grant(self, source, providers)
        for name, provider_names in validation.placeholders_in_use(providers).items():
            self.fields[PLACEHOLDER_PREFIX + name] = forms.CharField(
                label=f"<{name}>",
                required=False,
                initial=self.instance.placeholders.get(name, "") if self.instance.pk else "",
                help_text=escape(f"Filled into the URLs and scopes of {', '.join(provider_names)}."),
                widget=forms.TextInput(attrs={"class": "placeholder-input", "data-placeholder": name}),
            )

    @property
    def placeholder_field_names(self) -> list[str]:
        return [name for name in self.fields if name.startswith(PLACEHOLDER_PREFIX)]

    def clean_slug(self) -> str:
        name = self.cleaned_data.get("name") or self.data.get("name", "")
        slug, problem = validation.slug_for(self.cleaned_data.get("slug") or "", name, pk=self.instance.pk)
        if problem:
            raise forms.ValidationError(problem)
        return slug

    def clean_issuer(self) -> str:
        issuer = self.cleaned_data.get("issuer", "").strip()
        if problem := validation.issuer_problem(issuer):
            raise forms.ValidationError(problem)
        return issuer

    def clean_scopes(self) -> str:
        return validation.scopes_normalized(self.cleaned_data.get("scopes", ""))

    def clean_extra_authorization_params(self) -> dict[str, str]:
        params, problem = validation.authorization_params_checked(self.cleaned_data.get("extra_authorization_params"))
        if problem:
            raise forms.ValidationError(problem)
        return params

    def clean_next_private_key(self) -> str:
        key = self.cleaned_data.get("next_private_key") or ""
        if key:
            try:
                assertions.signing_key_load(key)
            except KeyProblem as exc:
                raise forms.ValidationError(str(exc)) from None
        return key

    def clean(self) -> dict[str, Any]:
        """The rules between fields (connections.validation), on the connection as this form would leave it."""
        super().clean()
        cleaned = self.cleaned_data
        if cleaned.get("provider") is None or not cleaned.get("grant_type") or self.has_error("provider"):
            return cleaned
        candidate = construct_instance(self, copy.copy(self.instance), self._meta.fields, self._meta.exclude)
        credentials = validation.Credentials(
            client_secret=cleaned.get("client_secret") or None,
            clear_client_secret=bool(cleaned.get("clear_client_secret")),
            private_key=cleaned.get("private_key") or None,
            clear_private_key=bool(cleaned.get("clear_private_key")),
            private_key_id_given="private_key_id" in self.changed_data,
        )
        placeholders = {
            name.removeprefix(PLACEHOLDER_PREFIX): cleaned.get(name) or "" for name in self.placeholder_field_names
        }
        self.changes, problems = validation.connection_check(
            candidate, credentials=credentials, placeholders=placeholders
        )
        for name, messages in problems.items():
            field = (
                PLACEHOLDER_PREFIX + name.removeprefix(validation.PLACEHOLDERS)
                if name.startswith(validation.PLACEHOLDERS)
                else name
            )
            for message in messages:
                self.add_error(field if field in self.fields else None, message)
        return cleaned

    def full_clean(self) -> None:
        """What the checks resolved (the write-only fields, the placeholders, a key file's key ID) goes onto the
        instance after the model fields (the last step of full_clean), once the form is valid."""
        super().full_clean()
        if self.changes is not None and not self.errors:
            self.changes.apply_to(self.instance)
            next_credentials_apply(self.cleaned_data, self.instance)


def next_credentials_apply(cleaned: dict[str, Any], connection: Connection) -> None:
    """The write-only next credentials: one given replaces what is stored, Remove clears it, else it is kept."""
    for name in ("next_client_secret", "next_private_key"):
        if cleaned.get(name):
            setattr(connection, name, cleaned[name])
        elif cleaned.get(f"clear_{name}"):
            setattr(connection, name, "")


class WrappedFilteredSelectMultiple(FilteredSelectMultiple):
    """The admin's two-box select, wrapped as the admin wraps those of model fields: its script puts the boxes
    first in the select's parent, which would otherwise be the row, ahead of the field's label."""

    def render(
        self, name: str, value: Any, attrs: dict[str, Any] | None = None, renderer: BaseRenderer | None = None
    ) -> SafeString:
        return format_html('<div class="related-widget-wrapper">{}</div>', super().render(name, value, attrs, renderer))


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

    requester: Any = None  # who asks: a person's key is created by that person or a superuser (for_requester)

    @classmethod
    def for_requester(cls, requester: Any) -> type["BotKeyAddForm"]:
        return type("BotKeyAddForm", (cls,), {"requester": requester})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        users = form_field(self, "user", forms.ModelChoiceField)
        active = get_user_model().objects.filter(is_active=True).order_by("username")
        if self.requester is not None and not self.requester.is_superuser:
            # A key acts as its user: the bot accounts, and the requester's own.
            active = active.filter(Q(bot_account__isnull=False) | Q(pk=self.requester.pk))
        users.queryset = active

    def clean(self) -> dict[str, Any]:
        super().clean()
        cleaned = self.cleaned_data
        # Claimed only once all else is valid, so that a form corrected after an error can still be sent.
        if not self.errors and not cache.add(f"bot-key-form:{cleaned['submission']}", True, timeout=86_400):
            raise forms.ValidationError(
                "This form was already sent: its key was created and shown once (see Bot keys). To create another "
                "key, open Add bot key again."
            )
        return cleaned
