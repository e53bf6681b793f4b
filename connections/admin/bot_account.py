"""Bot accounts in the admin: users that are bots, not people (no password, no sign-in), for whom the managers
create bot keys; listed with their keys and roles, created here with a name and an optional e-mail."""

from typing import Any

from django import forms
from django.contrib import admin
from django.contrib.auth.models import User
from django.http import HttpRequest

from connections.admin.permissions import PermissionMixin
from connections.endpoint.bot_keys import bot_account_create
from connections.http import signed_in_user
from connections.models import BotAccount


class BotAccountAddForm(forms.ModelForm):
    username = forms.RegexField(
        regex=r"^[\w.@+-]{1,150}$",
        help_text="The bot's name, e.g. finance-bot: letters, digits and @ . + - _ only.",
        error_messages={"invalid": "Use letters, digits and @ . + - _ only."},
    )
    email = forms.EmailField(required=False, help_text="Optional: whom to reach about this bot.")

    class Meta:
        model = BotAccount
        fields: list[str] = []

    def clean_username(self) -> str:
        username = self.cleaned_data["username"]
        if User.objects.filter(username=username).exists():
            raise forms.ValidationError(f"A user is already called {username}.")
        return username


@admin.register(BotAccount)
class BotAccountAdmin(PermissionMixin, admin.ModelAdmin):
    list_display = ("user", "email", "roles", "keys", "created_at", "created_by")
    search_fields = ("user__username", "user__email")
    list_select_related = ("user", "created_by")
    readonly_fields = ("user", "created_at", "created_by")

    def get_form(self, request: HttpRequest, obj: BotAccount | None = None, change: bool = False, **kwargs: Any):
        if obj is None:
            kwargs["form"] = BotAccountAddForm
        return super().get_form(request, obj, change, **kwargs)

    def get_fields(self, request: HttpRequest, obj: BotAccount | None = None) -> tuple[str, ...]:
        return ("username", "email") if obj is None else self.readonly_fields

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # its roles are set on its user's page, its keys under Bot keys

    def save_model(self, request: HttpRequest, obj: BotAccount, form: forms.ModelForm, change: bool) -> None:
        user = bot_account_create(
            username=form.cleaned_data["username"],
            email=form.cleaned_data["email"],
            created_by=signed_in_user(request),
        )
        obj.pk, obj.user = user.pk, user  # the service created the row; the admin's redirect shows it

    @admin.display(description="E-mail")
    def email(self, account: BotAccount) -> str:
        return account.user.email or "—"

    @admin.display(description="Roles")
    def roles(self, account: BotAccount) -> str:
        return ", ".join(sorted(role.name for role in account.user.groups.all())) or "—"

    @admin.display(description="Bot keys")
    def keys(self, account: BotAccount) -> int:
        return account.user.bot_keys.count()
