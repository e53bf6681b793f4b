"""Users in the admin, in this project's words: their groups are Roles, chosen on the add page too, and a change of
roles is audited as the role page audits it (services.user_roles_set)."""

from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.contrib.admin.widgets import FilteredSelectMultiple
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.core.exceptions import PermissionDenied
from django.db.models import ManyToManyField, QuerySet
from django.forms import ModelForm, ModelMultipleChoiceField
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect

from connections import services
from connections.http import signed_in_user
from connections.models import Role

User = get_user_model()

ROLES_HELP = (
    "What this user may do here (the roles' feature permissions) and which connections their bot keys get tokens "
    "for (the connections the roles are invited to)."
)


class RoleListFilter(admin.RelatedFieldListFilter):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.title = "role"  # not the field's name, groups


class ControlRoomUserAdmin(UserAdmin):
    """Django's user admin with roles instead of groups. Django's raw permissions (one per model and action, over
    a hundred) and the superuser flag are shown to superusers only: for everyone else a role is how access is
    given, and whoever could tick those boxes could give themselves anything."""

    add_form_template = "admin/auth/user/add_form_with_roles.html"
    list_display = ("username", "email", "first_name", "last_name", "is_staff", "is_bot", "role_list")
    list_filter = (
        "is_staff",
        "is_superuser",
        "is_active",
        ("bot_account", admin.EmptyFieldListFilter),
        ("groups", RoleListFilter),
    )

    @staticmethod
    def _may_set_roles(request: HttpRequest) -> bool:
        """Who may change roles may change who holds them; someone who may only edit users must not be able to
        give themselves a role (Manage connections, say)."""
        return request.user.has_perm("connections.change_role")

    def _outranks(self, request: HttpRequest, obj: Any) -> bool:
        """A superuser's account (password, activity, deletion) is for superusers only."""
        return obj is not None and obj.is_superuser and not request.user.is_superuser

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return not self._outranks(request, obj) and super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return not self._outranks(request, obj) and super().has_delete_permission(request, obj)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        readonly = super().get_readonly_fields(request, obj)
        return readonly if obj is None or self._may_set_roles(request) else (*readonly, "role_list")

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        if obj is None:
            roles = [("Roles", {"fields": ("groups",)})] if self._may_set_roles(request) else []
            return [*self.add_fieldsets, *roles]
        role_field = "groups" if self._may_set_roles(request) else "role_list"  # shown, not offered
        access: tuple[str, ...] = ("is_active", "is_staff", role_field)
        if request.user.is_superuser:
            access = ("is_active", "is_staff", "is_superuser", "groups", "user_permissions")
        return [
            (None, {"fields": ("username", "password")}),
            ("Personal info", {"fields": ("first_name", "last_name", "email")}),
            ("Access", {"fields": access}),
            ("Important dates", {"fields": ("last_login", "date_joined")}),
        ]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).select_related("bot_account").prefetch_related("groups")

    def formfield_for_manytomany(
        self, db_field: ManyToManyField, request: HttpRequest, **kwargs: Any
    ) -> ModelMultipleChoiceField | None:
        if db_field.name == "groups":  # as the role page's members: Role objects, its words, no Ctrl-click hint
            return ModelMultipleChoiceField(
                queryset=Role.objects.order_by("name"),
                required=False,
                label="Roles",
                help_text=ROLES_HELP,
                widget=FilteredSelectMultiple("roles", is_stacked=False),
            )
        return super().formfield_for_manytomany(db_field, request, **kwargs)

    @admin.display(description="Bot account", boolean=True)
    def is_bot(self, user: Any) -> bool:
        """A bot, not a person: no sign-in; the managers create its keys (Bot accounts)."""
        return hasattr(user, "bot_account")

    @admin.display(description="Roles")
    def role_list(self, user: Any) -> str:
        return ", ".join(sorted(role.name for role in user.groups.all())) or "—"

    def save_related(self, request: HttpRequest, form: ModelForm, formsets: Any, change: bool) -> None:
        # The roles are set by the service, which audits each role whose members changed; the form's own m2m save
        # must not set them first, or the service would find nothing changed.
        roles = form.cleaned_data.pop("groups", None)
        super().save_related(request, form, formsets, change)
        if roles is not None:
            services.user_roles_set(user=form.instance, roles=list(roles), actor=signed_in_user(request))

    def delete_view(self, request: HttpRequest, object_id: str, extra_context: dict | None = None) -> HttpResponse:
        """The confirmation page is Django's; the deletion revokes the user's own tokens at the provider first,
        outside any transaction, and audits the roles they leave (services.user_delete)."""
        user = self.get_object(request, unquote(object_id))
        if request.method != "POST" or not request.POST or user is None:  # Django deletes on any POST
            return super().delete_view(request, object_id, extra_context)
        _, _, perms_needed, protected = self.get_deleted_objects([user], request)
        if not self.has_delete_permission(request, user) or perms_needed or protected:
            raise PermissionDenied
        message = services.user_delete(user=user, actor=signed_in_user(request))
        self.message_user(request, message, messages.SUCCESS)
        return redirect("admin:auth_user_changelist")

    def get_actions(self, request: HttpRequest) -> dict:
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # it would delete without revoking or auditing; one at a time
        return actions


admin.site.unregister(User)
admin.site.register(User, ControlRoomUserAdmin)
