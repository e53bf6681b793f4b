"""What the connection list and the change page's Status fieldset show: the status filter (in the database), the
status, who uses it, when a bot last got a token, refreshes, the last error (a token's, or a failed test or
connect's: selectors.token_summary) and the call a bot makes. Each column reads what ConnectionAdmin.get_queryset
prefetched, never a query per row."""

from datetime import datetime, timedelta

from django.conf import settings
from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.db.models import QuerySet
from django.http import HttpRequest
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe
from django.utils.text import Truncator

from connections import selectors
from connections.models import Connection, ConnectionStatus, TokenAccess
from connections.notify import managers


class StatusListFilter(admin.SimpleListFilter):
    """The status column's statuses (selectors.connection_status), filtered by the database."""

    title = "Status"
    parameter_name = "status"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return ConnectionStatus.choices

    def queryset(self, request: HttpRequest, queryset: QuerySet[Connection]) -> QuerySet[Connection]:
        code = self.value()
        if code is None:
            return queryset
        if code not in ConnectionStatus.values:
            raise IncorrectLookupParameters(f"No status is called {code!r}.")
        return selectors.connections_with_status(queryset, ConnectionStatus(code))


class CredentialsExpiringFilter(admin.SimpleListFilter):
    """Connections with a client secret, signing certificate or refresh token expiring soon (selectors)."""

    title = "Credentials"
    parameter_name = "credentials"
    WITHIN_DAYS = 30

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("expiring", f"Expiring within {self.WITHIN_DAYS} days")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Connection]) -> QuerySet[Connection]:
        if self.value() is None:
            return queryset
        if self.value() != "expiring":
            raise IncorrectLookupParameters(f"No credentials filter is called {self.value()!r}.")
        until = timezone.now() + timedelta(days=self.WITHIN_DAYS)
        return selectors.connections_with_credentials_expiring(queryset, until)


FAILURE_CLASS = "connection-failed"  # one colour for every failure, list and page (connection_admin.css)
LIST_ERROR_LENGTH = 140  # characters of an error in the list; the whole of it is its tooltip and on the page


class ConnectionStatusColumns:
    """ConnectionAdmin's status columns and fields."""

    @admin.display(description="Status")
    def status_display(self, connection: Connection) -> str:
        status = selectors.connection_status(connection)
        if status.is_failure:
            return format_html('<span class="{}">{}</span>', FAILURE_CLASS, str(status))
        return str(status)

    @admin.display(description="Used by")
    def used_by_display(self, connection: Connection) -> str:
        return ", ".join(sorted(role.name for role in connection.roles.all())) or "—"

    @admin.display(description="Last token issued", ordering="last_token_issued_at")
    def last_token_issued_display(self, connection: Connection) -> str:
        """When a bot last got a token of it (audited in batches: up to a few seconds late)."""
        issued_at = connection.last_token_issued_at
        if issued_at is None:
            return "never"
        ago = selectors.format_duration((timezone.now() - issued_at).total_seconds())
        return f"{selectors.moment_text(issued_at)} ({ago} ago)"

    # The list's columns: the facts that belong together in one cell, so that the list fits at 1366 px with both
    # sidebars open (the change page shows each on a row of its own).
    @admin.display(description="Connection", ordering="name")
    def connection_column(self, connection: Connection) -> str:
        return format_html('{}<br><code class="list-slug">{}</code>', connection.name, connection.slug)

    @admin.display(description="Provider, grant, token", ordering="provider__name")
    def provider_column(self, connection: Connection) -> str:
        return format_html(
            '{}<br><span class="list-quiet">{} · <span class="token-type">{}</span></span>',
            connection.provider.name,
            connection.get_grant_type_display(),
            connection.get_token_type_display(),
        )

    @admin.display(description="Status and last error")
    def status_column(self, connection: Connection) -> str:
        """The status, and under it the last error (a token's, or a failed test or connect's) with when it
        happened and how many came in a row."""
        status = self.status_display(connection)
        failure = selectors.token_summary(connection).last_error
        if failure is None:
            return status
        return format_html(
            '<span class="list-status">{}</span><br><span class="last-error {}" title="{}">{}</span><br>'
            '<span class="failure-when">({})</span>',
            status,
            FAILURE_CLASS,
            failure.message,
            Truncator(failure.message).chars(LIST_ERROR_LENGTH),
            failure.when_text,
        )

    @admin.display(description="Activity", ordering="last_token_issued_at")
    def activity_column(self, connection: Connection) -> str:
        """When a bot last got a token, the last and the next refresh: how long ago, the moment as a tooltip."""
        summary = selectors.token_summary(connection)
        rows = (
            ("token issued", "last-token-issued", _ago(connection.last_token_issued_at, "never")),
            ("refreshed", "last-refresh", _ago(summary.last_refresh_at, "—")),
            ("next", "next-refresh", summary.next_refresh_text),
        )
        return format_html_join(
            mark_safe("<br>"), '<span class="list-quiet">{}</span> <span class="{}">{}</span>', rows
        )

    @admin.display(description="Last refresh")
    def last_refresh_display(self, connection: Connection) -> str:
        return selectors.token_summary(connection).last_refresh_text

    @admin.display(description="Next refresh")
    def next_refresh_display(self, connection: Connection) -> str:
        return selectors.token_summary(connection).next_refresh_text

    @admin.display(description="Credentials expire")
    def credentials_expiry_display(self, connection: Connection) -> str:
        """What expires next: the client secret, the signing certificate, a refresh token's absolute lifetime."""
        expiries = selectors.connection_credential_expiries(connection)
        if not expiries:
            return "Nothing known to expire (enter the client secret's expiry date below if it has one)."
        soon = timezone.now() + timedelta(days=CredentialsExpiringFilter.WITHIN_DAYS)
        return format_html_join(
            mark_safe("<br>"),
            '<span class="{}">{}: {}</span>',
            (
                (
                    FAILURE_CLASS if expiry.expires_at < soon else "",
                    expiry.label,
                    selectors.moment_text(expiry.expires_at),
                )
                for expiry in expiries[:5]
            ),
        )

    @admin.display(description="Last error")
    def last_error_display(self, connection: Connection) -> str:
        failure = selectors.token_summary(connection).last_error
        if failure is None:
            return "—"
        error = format_html('<span class="{}">{}</span>', FAILURE_CLASS, failure.text)
        nobody = managers.nobody_told()  # said where it matters: on a failing connection's page
        if not nobody:
            return error
        return error + render_to_string("admin/connections/nobody_told.html", {"nobody_told": nobody})

    @admin.display(description="Bot call")
    def bot_call_display(self, connection: Connection) -> str:
        """What a bot runs to get this connection's token, or to call its API through the proxy, ready to copy;
        the key is a placeholder. Only the ways its token access allows are shown."""
        # PUBLIC_URL: the address bots (and the providers' redirects) use, whatever host the admin was reached by.
        url = settings.PUBLIC_URL + reverse("connection_token", args=[connection.slug])
        proxy_url = settings.PUBLIC_URL + reverse("connection_proxy", args=[connection.slug, "PATH"])
        curl = f'curl -H "Authorization: Bearer $CONTROLROOM_KEY" {url}'
        proxy_curl = f'curl -H "Authorization: Bearer $CONTROLROOM_KEY" {proxy_url}'
        if connection.is_user_specific:
            whose = (
                "The key must belong to a user in an invited role who has authorized this connection for "
                "themselves (My OAuth connections): the token is that user's own."
            )
        else:
            whose = "Any bot key of a user in a role invited to use this connection gets its shared token."
        token_part = format_html(
            '<p>Token URL: <code id="bot-call-url">{}</code></p><pre id="bot-call-curl">{}</pre>'
            '<button type="button" class="button copy-button" data-copy-from="bot-call-curl" hidden>Copy</button>',
            url,
            curl,
        )
        base = connection.api_base_url_template or "no API base URL: set one to use the proxy"
        proxy_part = format_html(
            "<p>API proxy (the bot never holds the token; PATH is under <code>{}</code>):</p>"
            '<pre id="bot-call-proxy">{}</pre>'
            '<button type="button" class="button copy-button" data-copy-from="bot-call-proxy" hidden>Copy</button>',
            base,
            proxy_curl,
        )
        access = connection.token_access
        return format_html(
            '<div class="bot-call">{}{}<p class="bot-call-note">{} $CONTROLROOM_KEY stands for the bot key (created '
            "under Bot keys).</p></div>",
            token_part if access != TokenAccess.PROXY else "",
            proxy_part if access != TokenAccess.TOKEN else "",
            whose,
        )

    @admin.display(description="Roles that may use it")
    def roles_display(self, connection: Connection) -> str:
        roles = list(connection.roles.all())
        if not roles and connection.pk is None:
            return "No role is invited yet."
        if not roles:
            # the next step: a new role, this connection invited already (or roles chosen under Who may use it)
            return format_html(
                'No role is invited yet: <a href="{}?invited_connections={}" id="invite-role-link">'
                "invite a new role</a> or choose roles under <em>Who may use it</em>.",
                reverse("admin:connections_role_add"),
                connection.pk,
            )
        return format_html_join(
            ", ",
            "<a href='{}'>{}</a>",
            ((reverse("admin:connections_role_change", args=[role.pk]), role.name) for role in roles),
        )


def _ago(moment: datetime | None, none: str) -> str:
    """'2 min ago', with the moment to the second as its tooltip."""
    if moment is None:
        return none
    ago = selectors.format_duration((timezone.now() - moment).total_seconds())
    return format_html('<span title="{}">{} ago</span>', selectors.moment_text(moment), ago)
