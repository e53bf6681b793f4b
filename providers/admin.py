from django import forms
from django.contrib import admin
from django.db import models
from django.http import HttpRequest
from django.utils.html import conditional_escape

from providers.models import GrantType, Provider
from providers.services import provider_catalog_read


class ProviderForm(forms.ModelForm):
    docs_url = forms.URLField(required=False, assume_scheme="https")
    # Usually a single space, which a stripping, required field would reject.
    scope_separator = forms.CharField(
        required=False, strip=False, max_length=5, initial=" ", help_text="Blank means a space (RFC 6749 3.3)."
    )
    api_token_header = forms.CharField(
        required=False,
        max_length=100,
        initial="Authorization",
        help_text=Provider._meta.get_field("api_token_header").help_text + " Blank means Authorization.",
    )
    grant_types = forms.MultipleChoiceField(
        choices=GrantType.choices, widget=forms.CheckboxSelectMultiple, initial=list(GrantType.values)
    )

    class Meta:
        model = Provider
        # The admin renders help texts as HTML (help_text|safe in its fieldset template), where "<yourinstance>" or
        # "<resource>/.default" would be read as tags and vanish: escaped here, for the editable fields and the
        # read-only ones of a certified preset (which the admin reads from these too).
        help_texts = {
            field.name: conditional_escape(field.help_text)
            for field in Provider._meta.get_fields()
            if isinstance(field, models.Field) and field.help_text  # not the reverse relations: they have none
        }
        fields = (
            "name",
            "slug",
            "description",
            "category",
            "docs_url",
            "authorization_url",
            "token_url",
            "revocation_url",
            "device_authorization_url",
            "api_base_url",
            "api_token_header",
            "api_token_prefix",
            "refresh_url",
            "grant_types",
            "client_auth_method",
            "assertion_audience",
            "default_scopes",
            "client_credentials_scopes",
            "scope_separator",
            "extra_authorization_params",
            "default_token_lifetime",
            "refresh_margin",
            "token_request_params",
            "token_request_headers",
            "token_request_format",
            "token_response_fields",
            "tokens_never_expire",
            "refresh_token_max_idle",
            "refresh_token_max_lifetime",
            "revoke_replaced_grant",
        )

    def clean_scope_separator(self) -> str:
        return self.cleaned_data.get("scope_separator") or " "

    def clean_api_token_header(self) -> str:
        return self.cleaned_data.get("api_token_header") or "Authorization"

    def clean_slug(self) -> str:
        slug = self.cleaned_data["slug"]
        if slug in {preset["slug"] for preset in provider_catalog_read()}:
            raise forms.ValidationError("This slug belongs to a certified provider type; choose another.")
        return slug


@admin.register(Provider)
class ProviderAdmin(admin.ModelAdmin):
    """Certified presets are shown read-only (the catalog file owns them); custom providers are editable."""

    form = ProviderForm
    list_display = ("name", "slug", "placeholder_list", "grant_type_list", "client_auth_method", "is_certified")
    list_filter = ("is_certified", "category", "client_auth_method")
    search_fields = ("name", "slug")
    readonly_fields = ("is_certified", "placeholder_list", "created_at", "updated_at")
    fieldsets = (
        (None, {"fields": ("name", "slug", "description", "category", "docs_url", "is_certified")}),
        (
            "Endpoints",
            {
                "fields": (
                    "authorization_url",
                    "token_url",
                    "revocation_url",
                    "device_authorization_url",
                    "refresh_url",
                    "api_base_url",
                    "api_token_header",
                    "api_token_prefix",
                    "placeholder_list",
                )
            },
        ),
        (
            "Behaviour",
            {
                "fields": (
                    "grant_types",
                    "client_auth_method",
                    "assertion_audience",
                    "default_scopes",
                    "client_credentials_scopes",
                    "scope_separator",
                    "extra_authorization_params",
                    "default_token_lifetime",
                    "refresh_margin",
                    "token_request_params",
                    "token_request_headers",
                    "token_request_format",
                    "token_response_fields",
                    "tokens_never_expire",
                    "refresh_token_max_idle",
                    "refresh_token_max_lifetime",
                    "revoke_replaced_grant",
                )
            },
        ),
        ("History", {"fields": ("created_at", "updated_at")}),
    )

    @admin.display(description="Placeholders")
    def placeholder_list(self, provider: Provider) -> str:
        return ", ".join(f"<{name}>" for name in provider.placeholders) or "—"

    @admin.display(description="Grant types")
    def grant_type_list(self, provider: Provider) -> str:
        labels = dict(GrantType.choices)
        return ", ".join(str(labels.get(grant, grant)) for grant in provider.grant_types)

    def has_change_permission(self, request: HttpRequest, obj: Provider | None = None) -> bool:
        if obj is not None and obj.is_certified:
            return False
        return super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Provider | None = None) -> bool:
        if obj is not None and obj.is_certified:
            return False
        return super().has_delete_permission(request, obj)
