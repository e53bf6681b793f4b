"""The connection admin's own pages and buttons beyond Django's: Refresh now, Disconnect (with its confirmation),
Discover (the issuer's discovery document, for the form's script) and the dashboard; each calls a service and
reports with message_user."""

from collections.abc import Callable

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path

from connections import services
from connections.engine import rollover
from connections.errors import ConnectionActionError, ProviderError
from connections.http import signed_in_user
from connections.models import Connection
from connections.oauth import discovery
from connections.web import dashboard
from providers.models import Provider


class ConnectionPageViews(admin.ModelAdmin):
    """ConnectionAdmin's extra URLs and views: a ModelAdmin's own (its permissions, admin_site, message_user), for
    ConnectionAdmin to inherit, never registered itself."""

    def _report(self, request: HttpRequest, action: Callable[[], str]) -> None:
        """Run an admin action (a service call) and show its sentence, or why it could not be done."""
        try:
            self.message_user(request, action(), messages.SUCCESS)
        except ConnectionActionError as exc:
            self.message_user(request, exc.message, messages.WARNING)

    def get_urls(self) -> list[URLPattern]:
        wrap = self.admin_site.admin_view
        return [
            path("<int:object_id>/refresh/", wrap(self.refresh_view), name="connections_connection_refresh"),
            path("<int:object_id>/disconnect/", wrap(self.disconnect_view), name="connections_connection_disconnect"),
            path("discover/", wrap(self.discover_view), name="connections_connection_discover"),
            path(
                "<int:object_id>/drop-previous/",
                wrap(self.drop_previous_view),
                name="connections_connection_drop_previous",
            ),
            path("dashboard/", wrap(self.dashboard_view), name="connections_dashboard"),
            *super().get_urls(),
        ]

    def dashboard_view(self, request: HttpRequest) -> HttpResponse:
        """Connections by status, refreshes by hour, upcoming expiries, what needs someone
        (connections.web.dashboard)."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        context = {**self.admin_site.each_context(request), **dashboard.dashboard_context(), "title": "Dashboard"}
        return TemplateResponse(request, "admin/connections/dashboard.html", context)

    @staticmethod
    def _posted_provider(request: HttpRequest) -> Provider | None:
        provider_pk = request.POST.get("provider", "")
        return Provider.objects.filter(pk=provider_pk).first() if provider_pk.isdigit() else None

    def discover_view(self, request: HttpRequest) -> JsonResponse:
        """The form's Discover button: the issuer's discovery document, read now and checked, as JSON that the
        form's script fills the blank fields from (saving still discovers without the script)."""
        if request.method != "POST":
            return JsonResponse({"detail": "Use POST."}, status=405)
        if not (self.has_add_permission(request) or self.has_change_permission(request)):
            return JsonResponse({"detail": "Only those who may edit connections can discover."}, status=403)
        issuer = request.POST.get("issuer", "").strip()
        if not issuer:
            return JsonResponse({"detail": "Enter the issuer first, e.g. https://login.example.com."}, status=400)
        provider = self._posted_provider(request)
        try:
            found = discovery.issuer_discover(issuer)
        except ProviderError as exc:
            return JsonResponse({"detail": f"Nothing discovered: {exc.message}"}, status=400)
        method = found.client_auth_method_for(provider) if provider else ""
        return JsonResponse(
            {
                "urls": found.urls,
                "pkce_methods": found.pkce_methods,
                "client_auth_methods": found.client_auth_methods,
                "client_auth_method": method,
                "summary": found.summary(),
            }
        )

    def _post_only(self, request: HttpRequest, object_id: int) -> Connection | HttpResponse:
        if request.method != "POST" or not self.has_change_permission(request):
            return HttpResponse(status=405 if request.method != "POST" else 403)
        return get_object_or_404(Connection.objects.select_related("provider"), pk=object_id)

    def refresh_view(self, request: HttpRequest, object_id: int) -> HttpResponse:
        connection = self._post_only(request, object_id)
        if isinstance(connection, HttpResponse):
            return connection
        actor = signed_in_user(request)
        self._report(request, lambda: services.connection_refresh_now(connection=connection, actor=actor))
        return redirect("admin:connections_connection_change", object_id)

    def drop_previous_view(self, request: HttpRequest, object_id: int) -> HttpResponse:
        """Confirm a rollover: the client secret (or signing key) a promoted next one replaced is dropped."""
        connection = self._post_only(request, object_id)
        if isinstance(connection, HttpResponse):
            return connection
        if rollover.previous_credentials_drop(connection=connection, actor=signed_in_user(request)):
            self.message_user(request, "Rollover confirmed: the previous client credential was dropped.")
        else:
            self.message_user(request, "There was no previous client credential to drop.", messages.WARNING)
        return redirect("admin:connections_connection_change", object_id)

    def disconnect_view(self, request: HttpRequest, object_id: int) -> HttpResponse:
        connection = get_object_or_404(Connection.objects.select_related("provider"), pk=object_id)
        if not self.has_change_permission(request, connection):
            return HttpResponse(status=403)
        if request.method == "POST":
            actor = signed_in_user(request)
            self._report(request, lambda: services.connection_disconnect(connection=connection, actor=actor))
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
