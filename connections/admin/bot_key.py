"""Bot keys in the admin: created here (the raw key shown once) or with `manage.py botkey create`; each key's page
shows which connections it reaches and revokes it."""

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.loader import render_to_string
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone

from connections import selectors
from connections.admin.paging import BigListMixin
from connections.admin.permissions import PermissionMixin
from connections.endpoint.bot_keys import (
    bot_key_create,
    bot_key_delete,
    bot_key_revoke,
    bot_key_state,
    bot_key_unusable_because,
    connection_reach_for,
)
from connections.http import signed_in_user
from connections.models import BotKey
from connections.web.forms import BotKeyAddForm


class ExpiryFilter(admin.SimpleListFilter):
    """When keys expire, looking ahead (Django's date filter only looks back)."""

    title = "expiry"
    parameter_name = "expiry"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [
            ("7d", "Expires in the next 7 days"),
            ("30d", "Expires in the next 30 days"),
            ("expired", "Expired"),
            ("never", "Never expires"),
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet[BotKey]) -> QuerySet[BotKey]:
        now = timezone.now()
        if self.value() in ("7d", "30d"):
            days = 7 if self.value() == "7d" else 30
            return queryset.filter(expires_at__gt=now, expires_at__lte=now + timedelta(days=days))
        if self.value() == "expired":
            return queryset.filter(expires_at__lte=now)
        if self.value() == "never":
            return queryset.filter(expires_at__isnull=True)
        return queryset


def reach_html(key: BotKey) -> str:
    """The connections the key's user may get tokens for, as the key's page and the created page show them."""
    return render_to_string(
        "admin/connections/botkey/reach.html",
        {"reach": connection_reach_for(key.user), "unusable_because": bot_key_unusable_because(key), "key": key},
    )


@admin.register(BotKey)
class BotKeyAdmin(BigListMixin, PermissionMixin, admin.ModelAdmin):
    """Keys are created here or with `manage.py botkey create`; the raw key is shown once, then only its id.

    Those who manage connections create and revoke keys; those who view connections see them (never the secret).
    """

    change_form_template = "admin/connections/botkey/change_form.html"
    list_display = ("name", "user", "key_id", "state", "created_at", "expires_at", "last_used", "last_used_from")
    list_filter = ("revoked_at", ExpiryFilter)
    search_fields = ("name", "key_id", "user__username")  # by prefix: get_search_results
    search_help_text = "Finds keys whose name, key id or user's name starts with the text."
    list_select_related = ("user",)
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
        "reach",
    )

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[BotKey], search_term: str
    ) -> tuple[QuerySet[BotKey], bool]:
        """A prefix, each read from an index (the key id's and the user name's unique ones, the name's own): a
        substring would read every key."""
        term = search_term.strip()
        if not term:
            return queryset, False
        found = Q(name__startswith=term) | Q(key_id__startswith=term) | Q(user__username__startswith=term)
        return queryset.filter(found), False

    def get_form(self, request: HttpRequest, obj: BotKey | None = None, change: bool = False, **kwargs: Any):
        if obj is None:
            kwargs["form"] = BotKeyAddForm.for_requester(request.user)
        return super().get_form(request, obj, change, **kwargs)

    def get_fields(self, request: HttpRequest, obj: BotKey | None = None) -> tuple[str, ...]:
        return ("user", "name", "expires_days", "submission") if obj is None else self.readonly_fields

    def get_readonly_fields(self, request: HttpRequest, obj: BotKey | None = None) -> tuple[str, ...]:
        return () if obj is None else self.readonly_fields

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # a key is never edited; it is revoked and replaced

    @admin.display(description="Last used (to the minute)", ordering="last_used_at")
    def last_used(self, key: BotKey) -> object:
        return key.last_used_at  # written at most once a minute (LAST_USED_RESOLUTION)

    @admin.display(description="State")
    def state(self, key: BotKey) -> str:
        return bot_key_state(key)

    @admin.display(description="Reach: connections its user may get tokens for")
    def reach(self, key: BotKey) -> str:
        return reach_html(key)

    def add_view(self, request: HttpRequest, form_url: str = "", extra_context: dict | None = None) -> HttpResponse:
        if request.method != "POST":
            return super().add_view(request, form_url, extra_context)
        form = BotKeyAddForm.for_requester(request.user)(request.POST)
        if not self.has_add_permission(request) or not form.is_valid():
            return super().add_view(request, form_url, extra_context)
        key, raw = bot_key_create(
            user=form.cleaned_data["user"],
            name=form.cleaned_data["name"],
            expires_days=form.cleaned_data["expires_days"],
            created_by=signed_in_user(request),
        )
        reach = [] if bot_key_unusable_because(key) else connection_reach_for(key.user)
        # Rendered, not redirected: the raw key must not travel through the session or a messages cookie.
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "key": key,
            "raw_key": raw,
            "reach": reach_html(key),
            "public_url": settings.PUBLIC_URL,
            # the ready-to-run curl: the first connection that gives a token now, else the first reached
            "first_call": next((item for item in reach if item.gets_token), reach[0] if reach else None),
            "title": "Bot key created",
        }
        response = TemplateResponse(request, "admin/connections/botkey/created.html", context)
        response["Cache-Control"] = "no-store"
        return response

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict | None = None
    ) -> HttpResponse:
        extra_context = {**(extra_context or {}), "may_revoke": self.has_manage_permission(request)}
        return super().change_view(request, object_id, form_url, extra_context)

    def has_manage_permission(self, request: HttpRequest) -> bool:
        return selectors.user_can_manage_connections(request.user)

    def get_urls(self) -> list:
        revoke = path(
            "<int:object_id>/revoke/", self.admin_site.admin_view(self.revoke_view), name="connections_botkey_revoke"
        )
        return [revoke, *super().get_urls()]

    def delete_model(self, request: HttpRequest, obj: BotKey) -> None:
        bot_key_delete(key=obj, actor=signed_in_user(request))  # revoked first, audited

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[BotKey]) -> None:
        for key in queryset.select_related("user"):  # Django's "Delete selected": each revoked and audited
            bot_key_delete(key=key, actor=signed_in_user(request))

    def revoke_view(self, request: HttpRequest, object_id: int) -> HttpResponse:
        """Revoke: a confirmation page, then the revocation (POST), back on the key's page."""
        if not self.has_manage_permission(request):
            raise PermissionDenied
        key = get_object_or_404(BotKey.objects.select_related("user"), pk=object_id)
        key_url = reverse("admin:connections_botkey_change", args=[key.pk])
        if key.revoked_at is not None:
            self.message_user(request, f"The key {key} was already revoked.", messages.WARNING)
            return HttpResponseRedirect(key_url)
        if request.method == "POST":
            if bot_key_revoke(key=key, actor=signed_in_user(request)):
                self.message_user(request, f"Revoked the key {key}: it gets no token any more.", messages.SUCCESS)
            else:
                self.message_user(request, f"The key {key} was already revoked.", messages.WARNING)
            return HttpResponseRedirect(key_url)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "key": key,
            "title": f"Revoke the key {key}?",
        }
        return TemplateResponse(request, "admin/connections/botkey/revoke_confirmation.html", context)

    @admin.action(description="Revoke selected keys", permissions=["manage"])
    def revoke_selected(self, request: HttpRequest, queryset: QuerySet[BotKey]) -> None:
        actor = signed_in_user(request)
        revoked = sum(bot_key_revoke(key=key, actor=actor) for key in queryset.select_related("user"))
        self.message_user(request, f"Revoked {revoked} key(s).")
