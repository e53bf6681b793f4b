from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from connections import selectors
from connections.admin.permissions import PermissionMixin
from connections.bot_keys import bot_key_create, bot_key_revoke
from connections.forms import BotKeyAddForm
from connections.models import BotKey


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
