from typing import TYPE_CHECKING, Any

from django.contrib import admin
from django.db.models import QuerySet
from django.forms import ModelForm
from django.http import HttpRequest
from django.template.loader import render_to_string

from connections import selectors, services
from connections.endpoint.bot_keys import bot_key_state
from connections.http import signed_in_user
from connections.models import FEATURE_PERMISSIONS, BotKey, Role
from connections.web.forms import RoleForm

if TYPE_CHECKING:  # fieldsets as django-stubs types them (names of its stubs only)
    from django.contrib.admin.options import _FieldOpts, _FieldsetSpec


@admin.register(Role)
class RoleAdmin(admin.ModelAdmin):
    """Roles are Django groups, shown with what matters here: feature permissions, members, connections, and the
    bot keys of its members."""

    form = RoleForm
    list_display = ("name", "permission_list", "member_count", "connection_list")
    search_fields = ("name",)
    readonly_fields = ("member_bot_keys",)

    def get_fieldsets(self, request: HttpRequest, obj: Role | None = None) -> "_FieldsetSpec":
        main: tuple[str | None, _FieldOpts] = (
            None,
            {"fields": ("name", "feature_permissions", "members", "invited_connections")},
        )
        # Bot keys are shown to those who may see them on their own pages (View connections).
        if obj is not None and selectors.user_can_view_connections(request.user):
            return [main, ("Bot keys of its members", {"fields": ("member_bot_keys",)})]
        return [main]

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

    @admin.display(description="Keys")
    def member_bot_keys(self, role: Role) -> str:
        keys = BotKey.objects.filter(user__groups=role).select_related("user").order_by("user__username", "name")
        rows = [(key, bot_key_state(key)) for key in keys]
        return render_to_string("admin/connections/role/member_bot_keys.html", {"rows": rows, "role": role})

    def save_related(self, request: HttpRequest, form: ModelForm, formsets: Any, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        services.role_update(
            role=form.instance,
            feature_permissions=form.cleaned_data["feature_permissions"],
            members=list(form.cleaned_data["members"]),
            connections=list(form.cleaned_data["invited_connections"]),
            actor=signed_in_user(request),
            created=not change,
            renamed_from=form.initial.get("name", "") if change else "",
        )

    # Deleting a role (one, or with the list's action) records what it held first (services.role_delete).
    def delete_model(self, request: HttpRequest, obj: Role) -> None:
        services.role_delete(role=obj, actor=signed_in_user(request))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Role]) -> None:
        actor = signed_in_user(request)
        for role in queryset:
            services.role_delete(role=role, actor=actor)
