from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.contrib import admin, messages
from django.contrib.auth.models import Group
from django.db.models import QuerySet
from django.forms import ModelForm
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from connections import audit, selectors, services
from connections.bot_keys import bot_key_create, bot_key_revoke
from connections.errors import ConnectionActionError
from connections.forms import PLACEHOLDER_PREFIX, BotKeyAddForm, ConnectionForm, RoleForm
from connections.models import FEATURE_PERMISSIONS, AuditEvent, BotKey, Connection, OAuthToken, Role
from connections.views import start_authorization


class PermissionMixin:
    """Manage connections may change; View connections may only look."""

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return selectors.user_can_view_connections(request.user)

    def has_add_permission(self, request: HttpRequest, *args: Any) -> bool:
        return selectors.user_can_manage_connections(request.user)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return selectors.user_can_manage_connections(request.user)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return selectors.user_can_manage_connections(request.user)

    def has_module_permission(self, request: HttpRequest) -> bool:
        return selectors.user_can_view_connections(request.user)


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


@admin.register(Connection)
class ConnectionAdmin(PermissionMixin, admin.ModelAdmin):
    form = ConnectionForm
    change_form_template = "admin/connections/connection/change_form.html"
    list_display = (
        "name",
        "slug",
        "provider",
        "grant_type",
        "token_type",
        "status_display",
        "last_refresh_display",
        "next_refresh_display",
        "failures_column",
    )
    list_filter = ("provider", "grant_type", "token_type", "is_enabled")
    search_fields = ("name", "slug", "description", "client_id")
    filter_horizontal = ("roles",)
    inlines = [TokenInline]
    actions = ["refresh_selected"]
    readonly_fields = (
        "redirect_uri",
        "status_display",
        "last_refresh_display",
        "next_refresh_display",
        "last_error_display",
        "roles_display",
    )

    class Media:
        js = ("connections/connection_form.js",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Connection]:
        return super().get_queryset(request).select_related("provider").prefetch_related("tokens", "roles")

    def get_fieldsets(self, request: HttpRequest, obj: Connection | None = None) -> list[tuple[str | None, dict]]:
        can_change = self.has_change_permission(request, obj)
        # View-only users get every field read-only, which would display the secret: it is left out for them.
        placeholders = ConnectionForm().placeholder_field_names if can_change else []
        credentials = ("client_id", "client_secret") if can_change else ("client_id",)
        status = [
            (
                "Status",
                {
                    "fields": (
                        "status_display",
                        "last_refresh_display",
                        "next_refresh_display",
                        "last_error_display",
                        "roles_display",
                    )
                },
            )
        ]
        return [
            *(status if obj else []),
            (None, {"fields": ("name", "slug", "description", "is_enabled")}),
            (
                "Provider",
                {
                    "fields": ("provider", *placeholders, "grant_type", "token_type", "redirect_uri"),
                    "description": "Register the redirect URI below in the provider's application settings.",
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
                        "scopes",
                        "extra_authorization_params",
                    ),
                    "description": "Leave the URLs blank to use the provider type's, with your placeholders filled in.",
                },
            ),
            ("Token lifetime", {"fields": ("default_token_lifetime",), "classes": ("collapse",)}),
            ("Who may use it", {"fields": ("roles",)}),
        ]

    def get_form(self, request: HttpRequest, obj: Connection | None = None, change: bool = False, **kwargs: Any):
        # The form's own fields (one per catalog placeholder, and the write-only secret) must not be copied
        # onto the model by the model form factory: the form sets them itself.
        fieldsets = self.get_fieldsets(request, obj)
        names = [name for _, options in fieldsets for name in options["fields"]]
        kwargs["fields"] = [
            name
            for name in names
            if not name.startswith(PLACEHOLDER_PREFIX) and name != "client_secret" and name not in self.readonly_fields
        ]
        return super().get_form(request, obj, change, **kwargs)

    @admin.display(description="Redirect URI")
    def redirect_uri(self, obj: Connection | None = None) -> str:
        return format_html("<code>{}</code>", settings.OAUTH_REDIRECT_URI)

    @admin.display(description="Status")
    def status_display(self, connection: Connection) -> str:
        return str(selectors.connection_status(connection))

    # The list columns; each reads the prefetched tokens (get_queryset), never a query per row.
    @admin.display(description="Last refresh")
    def last_refresh_display(self, connection: Connection) -> str:
        return selectors.token_summary(connection).last_refresh_text

    @admin.display(description="Next refresh")
    def next_refresh_display(self, connection: Connection) -> str:
        return selectors.token_summary(connection).next_refresh_text

    @admin.display(description="Failures in a row")
    def failures_column(self, connection: Connection) -> int:
        return selectors.token_summary(connection).consecutive_failures

    @admin.display(description="Last error")
    def last_error_display(self, connection: Connection) -> str:
        return selectors.token_summary(connection).last_error_text

    @admin.display(description="Roles that may use it")
    def roles_display(self, connection: Connection) -> str:
        roles = list(connection.roles.all())
        if not roles:
            return "No role is invited yet."
        return format_html_join(
            ", ",
            "<a href='{}'>{}</a>",
            ((reverse("admin:connections_role_change", args=[role.pk]), role.name) for role in roles),
        )

    def save_model(self, request: HttpRequest, obj: Connection, form: ModelForm, change: bool) -> None:
        if not change:
            obj.created_by = request.user
        super().save_model(request, obj, form, change)

    def save_related(self, request: HttpRequest, form: ModelForm, formsets: Any, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        changed = ["client secret (replaced)" if name == "client_secret" else name for name in form.changed_data]
        services.connection_save_audit(
            connection=form.instance, actor=request.user, created=not change, changed=changed
        )

    def _report(self, request: HttpRequest, action: Callable[[], str]) -> None:
        """Run an admin action (a service call) and show its sentence, or why it could not be done."""
        try:
            self.message_user(request, action(), messages.SUCCESS)
        except ConnectionActionError as exc:
            self.message_user(request, exc.message, messages.WARNING)

    def _after_save(self, request: HttpRequest, obj: Connection) -> HttpResponse | None:
        """The extra submit buttons: Save and test connection, Save and connect."""
        change_url = reverse("admin:connections_connection_change", args=[obj.pk])
        if "_test" in request.POST:
            self._report(request, lambda: services.connection_test(connection=obj, actor=request.user))
            return HttpResponseRedirect(change_url)
        if "_connect" in request.POST:
            return start_authorization(request, obj, change_url)
        return None

    def response_add(self, request: HttpRequest, obj: Connection, post_url_continue: str | None = None) -> HttpResponse:
        return self._after_save(request, obj) or super().response_add(request, obj, post_url_continue)

    def response_change(self, request: HttpRequest, obj: Connection) -> HttpResponse:
        return self._after_save(request, obj) or super().response_change(request, obj)

    def get_urls(self) -> list:
        wrap = self.admin_site.admin_view
        return [
            path("<int:object_id>/refresh/", wrap(self.refresh_view), name="connections_connection_refresh"),
            path("<int:object_id>/disconnect/", wrap(self.disconnect_view), name="connections_connection_disconnect"),
            *super().get_urls(),
        ]

    def _post_only(self, request: HttpRequest, object_id: int) -> Connection | HttpResponse:
        if request.method != "POST" or not self.has_change_permission(request):
            return HttpResponse(status=405 if request.method != "POST" else 403)
        return get_object_or_404(Connection.objects.select_related("provider"), pk=object_id)

    def refresh_view(self, request: HttpRequest, object_id: int) -> HttpResponse:
        connection = self._post_only(request, object_id)
        if isinstance(connection, HttpResponse):
            return connection
        self._report(request, lambda: services.connection_refresh_now(connection=connection, actor=request.user))
        return redirect("admin:connections_connection_change", object_id)

    def disconnect_view(self, request: HttpRequest, object_id: int) -> HttpResponse:
        connection = get_object_or_404(Connection.objects.select_related("provider"), pk=object_id)
        if not self.has_change_permission(request, connection):
            return HttpResponse(status=403)
        if request.method == "POST":
            self._report(request, lambda: services.connection_disconnect(connection=connection, actor=request.user))
            return redirect("admin:connections_connection_change", object_id)
        context = {
            **self.admin_site.each_context(request),
            "title": f"Disconnect {connection}?",
            "connection": connection,
            "opts": self.opts,
            "token_count": connection.tokens.count(),
            "revokes": bool(connection.effective_revocation_url),
        }
        return TemplateResponse(request, "admin/connections/connection/disconnect_confirmation.html", context)

    @admin.action(description="Refresh now")
    def refresh_selected(self, request: HttpRequest, queryset: QuerySet[Connection]) -> None:
        if not self.has_change_permission(request):
            return
        for connection in queryset.select_related("provider"):
            self._report(
                request, lambda c=connection: services.connection_refresh_now(connection=c, actor=request.user)
            )


@admin.register(AuditEvent)
class AuditEventAdmin(PermissionMixin, admin.ModelAdmin):
    """Append-only: nobody adds, edits or deletes audit events here. Export CSV downloads the filtered list."""

    list_display = ("created_at", "actor_label", "connection_label", "action", "outcome", "detail", "remote_addr")
    list_filter = ("outcome", "action", "connection", ("actor", admin.RelatedOnlyFieldListFilter))
    search_fields = ("actor_label", "connection_label", "detail")
    date_hierarchy = "created_at"
    change_list_template = "admin/connections/auditevent/change_list.html"
    csv_fields = ("created_at", "actor_label", "connection_label", "action", "outcome", "detail", "remote_addr")

    def get_readonly_fields(self, request: HttpRequest, obj: AuditEvent | None = None) -> list[str]:
        return [field.name for field in AuditEvent._meta.fields]

    def has_add_permission(self, request: HttpRequest, *args: Any) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_urls(self) -> list:
        export = path("export.csv", self.admin_site.admin_view(self.export_csv), name="connections_auditevent_export")
        return [export, *super().get_urls()]

    def export_csv(self, request: HttpRequest) -> HttpResponse:
        if not self.has_view_permission(request):
            return HttpResponse(status=403)
        # The same filters, search and date drill-down as the list page the link was on.
        events = self.get_changelist_instance(request).get_queryset(request)
        response = StreamingHttpResponse(
            audit.audit_csv_lines(events.iterator(chunk_size=2000), self.csv_fields),
            content_type="text/csv; charset=utf-8",
        )
        response["Content-Disposition"] = f'attachment; filename="audit-{timezone.now():%Y%m%d-%H%M%S}.csv"'
        return response


@admin.register(Role)
class RoleAdmin(admin.ModelAdmin):
    """Roles are Django groups, shown with what matters here: feature permissions, members, connections."""

    form = RoleForm
    list_display = ("name", "permission_list", "member_count", "connection_list")
    search_fields = ("name",)
    fields = ("name", "feature_permissions", "members", "invited_connections")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Role]:
        return super().get_queryset(request).prefetch_related("permissions", "connections", "user_set")

    @admin.display(description="Feature permissions")
    def permission_list(self, role: Role) -> str:
        held = [
            FEATURE_PERMISSIONS[p.codename].split(" (")[0]
            for p in role.permissions.all()
            if p.codename in FEATURE_PERMISSIONS
        ]
        return ", ".join(held) or "—"

    @admin.display(description="Members")
    def member_count(self, role: Role) -> int:
        return len(role.user_set.all())

    @admin.display(description="Connections it may use")
    def connection_list(self, role: Role) -> str:
        return ", ".join(connection.name for connection in role.connections.all()) or "—"

    def save_related(self, request: HttpRequest, form: ModelForm, formsets: Any, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        services.role_update(
            role=form.instance,
            feature_permissions=form.cleaned_data["feature_permissions"],
            members=list(form.cleaned_data["members"]),
            connections=list(form.cleaned_data["invited_connections"]),
            actor=request.user,
        )


@admin.register(BotKey)
class BotKeyAdmin(PermissionMixin, admin.ModelAdmin):
    """Keys are created here or with `manage.py botkey create`; the raw key is shown once, then only its id.

    Those who manage connections create and revoke keys; those who view connections see them (never the secret).
    """

    list_display = ("name", "user", "key_id", "state", "created_at", "expires_at", "last_used_at", "last_used_from")
    list_filter = ("revoked_at", "expires_at")
    search_fields = ("name", "key_id", "user__username")
    actions = ["revoke_selected"]
    readonly_fields = (
        "user",
        "name",
        "key_id",
        "state",
        "created_at",
        "created_by",
        "expires_at",
        "revoked_at",
        "last_used_at",
        "last_used_from",
    )

    def get_form(self, request: HttpRequest, obj: BotKey | None = None, change: bool = False, **kwargs: Any):
        if obj is None:
            kwargs["form"] = BotKeyAddForm
        return super().get_form(request, obj, change, **kwargs)

    def get_fields(self, request: HttpRequest, obj: BotKey | None = None) -> list[str] | tuple[str, ...]:
        return ("user", "name", "expires_days") if obj is None else self.readonly_fields

    def get_readonly_fields(self, request: HttpRequest, obj: BotKey | None = None) -> tuple[str, ...]:
        return () if obj is None else self.readonly_fields

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # a key is never edited; it is revoked and replaced

    @admin.display(description="State")
    def state(self, key: BotKey) -> str:
        if key.revoked_at:
            return "Revoked"
        return "Active" if key.is_active else "Expired"

    def add_view(self, request: HttpRequest, form_url: str = "", extra_context: dict | None = None) -> HttpResponse:
        if request.method != "POST":
            return super().add_view(request, form_url, extra_context)
        form = BotKeyAddForm(request.POST)
        if not self.has_add_permission(request) or not form.is_valid():
            return super().add_view(request, form_url, extra_context)
        key, raw = bot_key_create(
            user=form.cleaned_data["user"],
            name=form.cleaned_data["name"],
            expires_days=form.cleaned_data["expires_days"],
            created_by=request.user,
        )
        # Rendered, not redirected: the raw key must not travel through the session or a messages cookie.
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "key": key,
            "raw_key": raw,
            "title": "Bot key created",
        }
        response = TemplateResponse(request, "admin/connections/botkey/created.html", context)
        response["Cache-Control"] = "no-store"
        return response

    def has_manage_permission(self, request: HttpRequest) -> bool:
        return selectors.user_can_manage_connections(request.user)

    @admin.action(description="Revoke selected keys", permissions=["manage"])
    def revoke_selected(self, request: HttpRequest, queryset: QuerySet[BotKey]) -> None:
        revoked = sum(bot_key_revoke(key=key, actor=request.user) for key in queryset.select_related("user"))
        self.message_user(request, f"Revoked {revoked} key(s).")


admin.site.unregister(Group)
