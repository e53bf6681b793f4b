from typing import Any

from django.contrib import admin
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.urls import path
from django.utils import timezone

from connections import audit
from connections.admin.permissions import PermissionMixin
from connections.models import AuditEvent


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
