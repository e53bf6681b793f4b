"""The connection page's "Ask members to authorize" (a user-specific connection): the list of its invited roles'
members, who has authorized and who has not, and the button that asks a role's members (connections.people.asks).
A ModelAdmin's views for ConnectionAdmin to inherit, never registered itself."""

from django.contrib import admin, messages
from django.contrib.auth.models import Group
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.urls import URLPattern, path

from connections.errors import ConnectionActionError
from connections.http import signed_in_user
from connections.models import Connection
from connections.people import asks


class AuthorizationAskViews(admin.ModelAdmin):
    def get_urls(self) -> list[URLPattern]:
        ask = self.admin_site.admin_view(self.authorization_ask_view)
        return [path("<int:object_id>/ask/", ask, name="connections_connection_ask"), *super().get_urls()]

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict | None = None
    ) -> HttpResponse:
        connection = Connection.objects.filter(pk=object_id).first() if object_id.isdigit() else None
        if connection is not None and connection.is_user_specific:
            extra_context = {
                **(extra_context or {}),
                "shows_member_authorizations": True,
                "member_authorizations": asks.connection_members_authorizations(connection),
                "ask_roles": list(connection.roles.order_by("name")),
            }
        return super().change_view(request, object_id, form_url, extra_context)

    def authorization_ask_view(self, request: HttpRequest, object_id: int) -> HttpResponse:
        if request.method != "POST" or not self.has_change_permission(request):
            return HttpResponse(status=405 if request.method != "POST" else 403)
        connection = get_object_or_404(Connection, pk=object_id)
        role_id = request.POST.get("role", "")
        role = Group.objects.filter(pk=role_id).first() if role_id.isdigit() else None
        if role is None:
            self.message_user(request, "Choose the role whose members to ask.", messages.WARNING)
        else:
            try:
                sentence = asks.authorization_members_ask(
                    connection=connection, role=role, actor=signed_in_user(request)
                )
                self.message_user(request, sentence, messages.SUCCESS)
            except ConnectionActionError as exc:
                self.message_user(request, exc.message, messages.WARNING)
        return redirect("admin:connections_connection_change", object_id)
