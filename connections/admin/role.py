from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.forms import ModelForm
from django.http import HttpRequest

from connections import services
from connections.forms import RoleForm
from connections.models import FEATURE_PERMISSIONS, Role


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
