"""Connections in the admin: the adaptive form, the status columns, Save and test, Connect, Refresh now,
Disconnect and Delete (each calling a service, outside the admin's transaction where a provider is called)."""

import functools
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.utils import flatten_fieldsets
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import Exists, OuterRef, Prefetch, Q, QuerySet
from django.forms import ModelForm
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, QueryDict
from django.shortcuts import redirect
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.text import slugify

from connections import selectors, services
from connections.admin.authorization_asks import AuthorizationAskViews
from connections.admin.connection_status import ConnectionStatusColumns, CredentialsExpiringFilter, StatusListFilter
from connections.admin.connection_views import ConnectionPageViews
from connections.admin.paging import BigListMixin
from connections.admin.permissions import PermissionMixin
from connections.errors import ProviderError
from connections.http import signed_in_user
from connections.models import Connection, OAuthToken
from connections.oauth import discovery
from connections.ops import health
from connections.web.connection_page import grant_layout
from connections.web.forms import PLACEHOLDER_PREFIX, ConnectionForm
from connections.web.views import start_authorization
from providers.models import CLIENT_AUTH_METHOD_NAMES, Provider

if TYPE_CHECKING:  # fieldsets as django-stubs types them (names of its stubs only)
    from django.contrib.admin.options import _FieldOpts, _FieldsetSpec

# The next client credentials of a rollover (connections.engine.rollover), write-only too.
NEXT_CREDENTIALS = ("next_client_secret", "clear_next_client_secret", "next_private_key", "clear_next_private_key")
DISCOVERED_LABELS = {**discovery.URL_LABELS, "client_auth_method": "Client authentication"}
# The form's own fields, which it applies itself (never copied onto the model by the model form factory).
WRITE_ONLY_FIELDS = ("client_secret", "private_key", "clear_client_secret", "clear_private_key", *NEXT_CREDENTIALS)
# How the audit event names a change of a write-only field (never its value).
CHANGED_LABELS = {
    "client_secret": "client secret (replaced)",
    "private_key": "private key (replaced)",
    "clear_client_secret": "client secret (removed)",
    "clear_private_key": "private key (removed)",
    "next_client_secret": "next client secret (set)",
    "clear_next_client_secret": "next client secret (removed)",
    "next_private_key": "next private key (set)",
    "clear_next_private_key": "next private key (removed)",
}
STATUS_FIELDS = (
    "status_display",
    "last_refresh_display",
    "next_refresh_display",
    "last_error_display",
    "credentials_expiry_display",
    "last_token_issued_display",
    "roles_display",
    "bot_call_display",
)
SET_LABELS = {"client_secret": "client secret (set)", "private_key": "private key (set)"}  # on creation


class TokenInline(PermissionMixin, admin.TabularInline):
    """Who holds a token and its state; never the token itself."""

    model = OAuthToken
    extra = 0
    can_delete = False
    verbose_name = "token"
    verbose_name_plural = "Tokens (the values are encrypted and never shown)"
    fields = (
        "owner",
        "status",
        "scope",
        "authorized_by",
        "authorized_at",
        "refreshed_at",
        "next_refresh_at",
        "consecutive_failures",
        "last_error",
    )
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="Owner")
    def owner(self, token: OAuthToken) -> str:
        return token.user.get_username() if token.user else "Shared"

    @admin.display(description="Status")
    def status(self, token: OAuthToken) -> str:
        return str(selectors.token_status(token))


class ProviderInUseFilter(admin.RelatedFieldListFilter):
    """The provider types some connection uses (the catalog has 50+): one probe of the connections' provider index
    per type, not a DISTINCT over every connection (what RelatedOnlyFieldListFilter reads)."""

    def field_choices(self, field: Any, request: HttpRequest, model_admin: admin.ModelAdmin) -> list:
        in_use = Provider.objects.filter(Exists(Connection.objects.filter(provider=OuterRef("pk"))))
        return [(provider.pk, str(provider)) for provider in in_use.order_by("name")]


def _rollover_fields(stored: Connection | None, can_change: bool) -> tuple[str, ...]:
    """The rows of the credentials' expiry and rollover: the next ones write-only, each Remove box shown while one
    is stored."""
    next_secret, next_key = (stored.next_client_secret, stored.next_private_key) if stored else ("", "")
    fields: tuple[str, ...] = ("client_secret_expires_at",)
    if can_change:
        fields += ("next_client_secret", *(("clear_next_client_secret",) if next_secret else ()))
    fields += ("next_client_secret_expires_at",)
    if can_change:
        fields += ("next_private_key", *(("clear_next_private_key",) if next_key else ()))
    return fields


@admin.register(Connection)
class ConnectionAdmin(
    BigListMixin, PermissionMixin, ConnectionStatusColumns, ConnectionPageViews, AuthorizationAskViews, admin.ModelAdmin
):
    form = ConnectionForm
    change_form_template = "admin/connections/connection/change_form.html"
    list_display = (
        "connection_column",
        "provider_column",
        "status_column",
        "used_by_display",
        "activity_column",
    )
    # Only the provider types in use (the catalog has 50+); "Disabled" is a status.
    list_filter = (
        StatusListFilter,
        CredentialsExpiringFilter,
        ("provider", ProviderInUseFilter),
        "grant_type",
        "token_type",
    )
    search_fields = ("name", "slug")  # by prefix: get_search_results
    search_help_text = "Finds connections whose name starts with the text, or whose slug starts with it as a slug."
    filter_horizontal = ("roles",)
    inlines = [TokenInline]
    actions = ["refresh_selected"]
    readonly_fields = (
        "redirect_uri",
        "status_display",
        "last_refresh_display",
        "next_refresh_display",
        "last_error_display",
        "credentials_expiry_display",
        "last_token_issued_display",
        "roles_display",
        "bot_call_display",
        "preset_display",
    )

    class Media:
        js = ("connections/connection_form.js", "connections/copy_button.js")
        css = {"all": ("connections/connection_admin.css",)}

    def get_inlines(self, request: HttpRequest, obj: Connection | None) -> list:
        return self.inlines if obj is not None else []  # a connection being added has no tokens to list

    def get_queryset(self, request: HttpRequest) -> QuerySet[Connection]:
        # The status columns read the tokens' state and times, never their values: those stay encrypted, unread.
        tokens = Prefetch("tokens", queryset=OAuthToken.objects.defer("access_token", "refresh_token", "id_token"))
        return super().get_queryset(request).select_related("provider").prefetch_related(tokens, "roles")

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Connection], search_term: str
    ) -> tuple[QuerySet[Connection], bool]:
        """A prefix of the name (as typed) or of the slug ("Sales" finds salesforce-prod): each read from its
        unique index, never a scan of every connection."""
        term = search_term.strip()
        if not term:
            return queryset, False
        return queryset.filter(Q(name__startswith=term) | Q(slug__startswith=slugify(term))), False

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None) -> HttpResponse:
        # The list is where an administrator looks first: say so there when the workers fall behind.
        if request.method == "GET" and (backlog := health.refresh_backlog()).overdue:
            messages.warning(request, health.refresh_backlog_warning(backlog))
        return super().changelist_view(request, extra_context)

    def get_fieldsets(self, request: HttpRequest, obj: Connection | None = None) -> "_FieldsetSpec":
        can_change = self.has_change_permission(request, obj)
        # View-only users get every field read-only, which would display the secret: it is left out for them.
        placeholders = ConnectionForm().placeholder_field_names if can_change else []
        # The secret and the private key are write-only: not shown even to those who may only view.
        stored = obj if can_change else None
        credentials: tuple[str, ...] = ("client_id", "client_secret") if can_change else ("client_id",)
        credentials += ("clear_client_secret",) if stored and stored.client_secret else ()
        credentials += ("client_auth_method", *(("private_key",) if can_change else ()))
        credentials += ("clear_private_key",) if stored and stored.private_key else ()
        credentials += ("private_key_id", "jwt_subject", *_rollover_fields(stored, can_change))
        status: list[tuple[str | None, _FieldOpts]] = [("Status", {"fields": STATUS_FIELDS})]
        return [
            *(status if obj else []),
            (None, {"fields": ("name", "slug", "description", "is_enabled")}),
            (
                "Provider",
                {
                    "fields": ("provider", *placeholders, "preset_display", "grant_type", "token_type", "redirect_uri"),
                    # Hidden with the redirect URI's row for the grants that send nobody to the provider.
                    "description": '<span class="redirect-note">Register the redirect URI below in the provider\'s '
                    "application settings.</span>",
                },
            ),
            ("Application credentials", {"fields": credentials}),
            (
                "Endpoints and scopes",
                {
                    "fields": (
                        "authorization_url",
                        "token_url",
                        "revocation_url",
                        "device_authorization_url",
                        "issuer",
                        "scopes",
                        "extra_authorization_params",
                        "api_base_url",
                    ),
                    "description": "Leave a URL blank to use the provider type's, with your placeholders filled in "
                    "(a URL marked required has none to use).",
                },
            ),
            ("Token lifetime", {"fields": ("default_token_lifetime",), "classes": ("collapse",)}),
            ("Who may use it", {"fields": ("roles", "token_access")}),
        ]

    def get_form(self, request: HttpRequest, obj: Connection | None = None, change: bool = False, **kwargs: Any):
        # The form's own fields (one per catalog placeholder, and the write-only secret) must not be copied
        # onto the model by the model form factory: the form sets them itself.
        names = flatten_fieldsets(self.get_fieldsets(request, obj))
        kwargs["fields"] = [
            name
            for name in names
            if not name.startswith(PLACEHOLDER_PREFIX)
            and name not in WRITE_ONLY_FIELDS
            and name not in self.readonly_fields
        ]
        return super().get_form(request, obj, change, **kwargs)

    @admin.display(description="Redirect URI")
    def redirect_uri(self, obj: Connection | None = None) -> str:
        return format_html("<code>{}</code>", settings.OAUTH_REDIRECT_URI)

    @admin.display(description="What it will use")
    def preset_display(self, connection: Connection) -> str:
        """The URLs, scopes and client authentication this connection uses (its own, else its provider type's
        with the placeholders filled), and the provider's documentation. The form's script redraws it as the
        administrator types; this is what a saved connection uses."""
        if connection.provider_id is None:
            return "Choose a provider type to see its URLs, scopes and documentation."
        provider = connection.provider
        # As the form's script draws it: the authorization URL only for the grants that send someone to it.
        sends_to_provider = grant_layout(connection.grant_type) == "code"
        rows = [
            *([("Authorization URL", connection.effective_authorization_url or "—")] if sends_to_provider else []),
            ("Token URL", connection.effective_token_url or "—"),
            ("Revocation URL", connection.effective_revocation_url or "none: tokens are not revoked at the provider"),
            *([("Refresh URL", connection.effective_refresh_url)] if provider.refresh_url else []),
            *(
                [("Device authorization URL", connection.effective_device_authorization_url)]
                if connection.effective_device_authorization_url
                else []
            ),
            ("Scopes", " ".join(connection.scope_list) or "none asked for"),
            ("Client authentication", CLIENT_AUTH_METHOD_NAMES[connection.effective_client_auth_method]),
        ]
        docs = format_html(' <a href="{}" target="_blank" rel="noopener">Documentation</a>', provider.docs_url)
        return format_html(
            '<div class="preset-preview"><p>{}{}</p><table>{}</table></div>',
            provider.description,
            docs if provider.docs_url else "",
            format_html_join("", "<tr><th>{}</th><td><code>{}</code></td></tr>", rows),
        )

    def save_model(self, request: HttpRequest, obj: Connection, form: ModelForm, change: bool) -> None:
        if not change:
            obj.created_by = signed_in_user(request)
        services.connection_save(connection=obj, created=not change)

    def save_related(self, request: HttpRequest, form: ModelForm, formsets: Any, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        labels = CHANGED_LABELS if change else {**CHANGED_LABELS, **SET_LABELS}
        changed = [labels.get(name, name) for name in form.changed_data]
        services.connection_save_audit(
            connection=form.instance, actor=signed_in_user(request), created=not change, changed=changed
        )

    def _after_save(self, request: HttpRequest, obj: Connection) -> HttpResponse | None:
        """The extra submit buttons: Save and test connection, Save and connect. Still inside the admin's
        transaction here: what calls a provider (the test, a device code) runs once it has committed."""
        change_url = reverse("admin:connections_connection_change", args=[obj.pk])
        response = HttpResponseRedirect(change_url)
        if "_test" in request.POST:
            test = functools.partial(services.connection_test, connection=obj, actor=signed_in_user(request))
            transaction.on_commit(lambda: self._report(request, test))
            return response
        if "_connect" in request.POST and obj.uses_device_code:

            def connect() -> None:  # to the page with the user code, or back with why not
                response["Location"] = start_authorization(request, obj, change_url)["Location"]

            transaction.on_commit(connect)
            return response
        if "_connect" in request.POST:
            return start_authorization(request, obj, change_url)
        return None

    def response_add(self, request: HttpRequest, obj: Connection, post_url_continue: str | None = None) -> HttpResponse:
        return self._after_save(request, obj) or super().response_add(request, obj, post_url_continue)

    def response_change(self, request: HttpRequest, obj: Connection) -> HttpResponse:
        return self._after_save(request, obj) or super().response_change(request, obj)

    def changeform_view(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        object_id = args[0] if args else kwargs.get("object_id")
        may_save = self.has_change_permission(request) if object_id else self.has_add_permission(request)
        if request.method == "POST" and may_save:
            # Before the admin's transaction: a provider call. django-stubs types request.POST as the immutable
            # QueryDict Django builds; the discovered data is a copy, mutable, which the admin only reads.
            request.POST = self._with_discovered_urls(request)  # type: ignore[assignment]
        return super().changeform_view(request, *args, **kwargs)

    def _with_discovered_urls(self, request: HttpRequest) -> QueryDict:
        """The form's data with what its issuer's discovery document gives (discovery.discovered_form_data); the
        form then validates and shows it as if typed."""
        try:
            found = discovery.discovered_form_data(request.POST, self._posted_provider(request))
        except ProviderError as exc:
            message = f"The URLs could not be discovered from the issuer: {exc.message}"
            self.message_user(request, message, messages.ERROR)
            return request.POST
        if not found:
            return request.POST
        data = request.POST.copy()
        data.update(found)
        labels = ", ".join(
            f"{DISCOVERED_LABELS[name]}: {CLIENT_AUTH_METHOD_NAMES.get(value, value)}" for name, value in found.items()
        )
        self.message_user(request, f"Discovered from the issuer's discovery document: {labels}.", messages.INFO)
        return data

    def delete_view(self, request: HttpRequest, object_id: str, extra_context: dict | None = None) -> HttpResponse:
        """The confirmation page is Django's; the deletion revokes the tokens first, outside any transaction."""
        connection = self.get_object(request, object_id)
        if request.method != "POST" or not request.POST or connection is None:  # Django deletes on any POST
            return super().delete_view(request, object_id, extra_context)
        if not self.has_delete_permission(request, connection):
            raise PermissionDenied
        actor = signed_in_user(request)
        self._report(request, lambda: services.connection_delete(connection=connection, actor=actor))
        return redirect("admin:connections_connection_changelist")

    def get_actions(self, request: HttpRequest) -> dict:
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # it would delete without revoking; delete one at a time
        return actions

    @admin.action(description="Refresh now", permissions=["change"])
    def refresh_selected(self, request: HttpRequest, queryset: QuerySet[Connection]) -> None:
        actor = signed_in_user(request)
        for connection in queryset.select_related("provider"):
            self._report(
                request, functools.partial(services.connection_refresh_now, connection=connection, actor=actor)
            )
