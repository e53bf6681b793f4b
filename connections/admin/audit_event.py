from typing import Any
from urllib.parse import urlencode

from django.contrib import admin
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.urls import path
from django.utils import formats, timezone
from django.utils.html import format_html

from connections.admin.paging import BigListMixin
from connections.admin.permissions import PermissionMixin
from connections.audit.events import audit_csv_lines
from connections.models import AuditEvent, Connection

# Not a slug (a slug has no "~"), so no connection can be named so.
NAMES_NO_CONNECTION = "~none"
# Up to this many connections are offered in the connection filter; with more, a label's link in the list (or
# the search) chooses one.
CONNECTIONS_LISTED = 100


class ConnectionLabelFilter(admin.SimpleListFilter):
    """By the connection an event names (its label, the slug asked for or held when it was written), so that a
    refused request for a slug no connection has, and the events of a deleted connection, are found too."""

    title = "connection"
    parameter_name = "connection_label"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        # The connections that exist (a smaller table), not the distinct labels of the whole log (a scan of it).
        listed = Connection.objects.order_by("name").values_list("slug", "name")[: CONNECTIONS_LISTED + 1]
        choices = [(slug, f"{name} ({slug})") for slug, name in listed]
        choices = choices if len(choices) <= CONNECTIONS_LISTED else []
        chosen = self.value()
        if chosen and chosen != NAMES_NO_CONNECTION and chosen not in dict(choices):
            choices.append((chosen, chosen))  # followed from a label in the list: shown as chosen
        return [*choices, (NAMES_NO_CONNECTION, "Names no existing connection (unknown or deleted)")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[AuditEvent]) -> QuerySet[AuditEvent]:
        if self.value() == NAMES_NO_CONNECTION:
            return queryset.exclude(connection_label="").exclude(connection_label__in=Connection.objects.values("slug"))
        if self.value():
            return queryset.filter(connection_label=self.value())
        return queryset


class ActorLabelFilter(admin.SimpleListFilter):
    """By who (the label kept with each event: a user's name, a bot key's user and key id), chosen by following
    the label's link in the list: no list of every actor, which would read the whole log."""

    title = "who"
    parameter_name = "actor_label"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        chosen = self.value()
        return [(chosen, chosen)] if chosen else []

    def queryset(self, request: HttpRequest, queryset: QuerySet[AuditEvent]) -> QuerySet[AuditEvent]:
        return queryset.filter(actor_label=self.value()) if self.value() else queryset


@admin.register(AuditEvent)
class AuditEventAdmin(BigListMixin, PermissionMixin, admin.ModelAdmin):
    """Append-only: nobody adds, edits or deletes audit events here. Export CSV downloads the filtered list."""

    # Five columns, so that the detail keeps a readable width beside both sidebars on a laptop's screen: who with
    # their address, what with its outcome.
    list_display = ("when", "who", "connection_column", "what", "detail")
    list_filter = ("outcome", "action", "kind", ConnectionLabelFilter, ActorLabelFilter)
    # By prefix of who and of the connection (each an index: see AuditEvent.Meta), not anywhere in the detail:
    # that would read every row (get_search_results).
    search_fields = ("actor_label", "connection_label")
    search_help_text = "Finds events whose connection or whose actor (user, or bot key's user) starts with the text."
    date_hierarchy = "created_at"
    change_list_template = "admin/connections/auditevent/change_list.html"
    # A rolled-up row (connections.audit.rows): `count` answers from created_at to last_at. Its columns come last,
    # so that an existing reader of the export finds the others where they were.
    csv_fields = (
        *("created_at", "actor_label", "connection_label", "action", "outcome", "detail", "remote_addr"),
        *("kind", "count", "last_at"),
    )

    @admin.display(description="When", ordering="created_at")
    def when(self, event: AuditEvent) -> str:
        first = timezone.localtime(event.created_at)
        if event.last_at is None or event.last_at == event.created_at:
            return format_html("{}", formats.date_format(first, "DATETIME_FORMAT"))
        last = timezone.localtime(event.last_at)
        return format_html(
            '{}<br><span class="audit-address">to {}</span>',
            formats.date_format(first, "DATETIME_FORMAT"),
            formats.time_format(last, "H:i:s"),
        )

    @admin.display(description="Who", ordering="actor_label")
    def who(self, event: AuditEvent) -> str:
        """The label, linked to the list of every event of that actor (a bot key's: which connections it got)."""
        query = urlencode({ActorLabelFilter.parameter_name: event.actor_label})
        label = format_html(
            '<a href="?{}" title="Every event of {}">{}</a>', query, event.actor_label, event.actor_label
        )
        if not event.remote_addr:
            return label
        return format_html('{}<br><span class="audit-address">from {}</span>', label, event.remote_addr)

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[AuditEvent], search_term: str
    ) -> tuple[QuerySet[AuditEvent], bool]:
        """A prefix of the connection's or the actor's label, as typed (labels are slugs and user names)."""
        term = search_term.strip()
        if not term:
            return queryset, False
        return queryset.filter(Q(connection_label__startswith=term) | Q(actor_label__startswith=term)), False

    @admin.display(description="Action", ordering="action")
    def what(self, event: AuditEvent) -> str:
        # A rolled-up row says how many and how they were given: ", 1,204 times (Token answers from memory)".
        times = f", {event.count:,} times ({event.get_kind_display()})" if event.kind else ""
        return format_html(
            '{}{}<br><span class="audit-outcome audit-{}">{}</span>',
            event.get_action_display(),
            times,
            event.outcome,
            event.get_outcome_display(),
        )

    @admin.display(description="Connection", ordering="connection_label")
    def connection_column(self, event: AuditEvent) -> str:
        """The label, linked to the list of every event that names it."""
        if not event.connection_label:
            return "—"
        query = urlencode({ConnectionLabelFilter.parameter_name: event.connection_label})
        label = event.connection_label
        return format_html('<a href="?{}" title="Every event naming {}">{}</a>', query, label, label)

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

    def export_csv(self, request: HttpRequest) -> HttpResponse | StreamingHttpResponse:
        if not self.has_view_permission(request):
            return HttpResponse(status=403)
        # The same filters, search and date drill-down as the list page the link was on.
        events = self.get_changelist_instance(request).get_queryset(request)
        response = StreamingHttpResponse(
            audit_csv_lines(events.iterator(chunk_size=2000), self.csv_fields),
            content_type="text/csv; charset=utf-8",
        )
        response["Content-Disposition"] = f'attachment; filename="audit-{timezone.now():%Y%m%d-%H%M%S}.csv"'
        return response
