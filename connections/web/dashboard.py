"""The admin's dashboard: what is healthy, what is about to break and what broke, as pictures drawn here as SVG
(no chart library, no CDN: it works offline). Reads only; every figure is one query."""

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.core.cache import cache
from django.db.models import Count, Q
from django.db.models.functions import TruncHour
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from connections import selectors
from connections.models import AuditEvent, Connection, ConnectionStatus, OAuthToken, TokenState
from connections.notify import managers
from connections.ops import health

CREDENTIALS_WITHIN_DAYS = 30  # credentials (client secrets, certificates, refresh tokens) expiring this soon are shown
HOURS_BACK = 24
HOURS_AHEAD = 12
STATUS_COLOURS = {
    ConnectionStatus.CONNECTED: "#2e7d32",
    ConnectionStatus.REFRESH_FAILING: "#ef6c00",
    ConnectionStatus.REAUTHORIZATION_REQUIRED: "#c62828",
    ConnectionStatus.NOT_CONNECTED: "#757575",
    ConnectionStatus.DISABLED: "#bdbdbd",
}
SUCCESS, FAILURE = "#2e7d32", "#c62828"
STATUS_WIDTH = 460


@dataclass(frozen=True)
class Attention:
    connection: Connection
    reason: str

    @property
    def url(self) -> str:
        return reverse("admin:connections_connection_change", args=[self.connection.pk])


def dashboard_context(now: datetime | None = None) -> dict:
    summary = dashboard_summary(now)
    statuses = {ConnectionStatus(code): count for code, count in summary["statuses"].items()}
    now = now or timezone.now()
    return {
        "statuses": statuses,
        "status_chart": _status_chart(statuses),
        "refresh_chart": _refresh_chart(summary["refreshes"]),
        "expiry_chart": _expiry_chart(summary["expiries"]),
        "summarized_at": summary["at"],
        "attention": _attention(),
        "credentials_expiring": selectors.credential_expiries(until=now + timedelta(days=CREDENTIALS_WITHIN_DAYS))[:10],
        "backlog": health.refresh_backlog(),
        "nobody_told": managers.nobody_told(),
    }


# The figures that read many rows (every connection's status, a day of refreshes, the next hours' expiries) are
# summarized by a scheduled task (dashboard_summarize) into Django's cache, shared by every process; a page load
# reads the summary, and makes it only when there is none (a fresh installation, a cache restarted).
SUMMARY_KEY = "dashboard-summary"
SUMMARY_EVERY = 120  # seconds between summaries (controlroom/celery.py)
SUMMARY_KEPT = 15 * 60  # an older summary (beat or workers down) is not shown: the page makes its own


def dashboard_summary(now: datetime | None = None) -> dict:
    summary = cache.get(SUMMARY_KEY)
    if summary is None or now is not None:
        summary = dashboard_summarize(now)
    return summary


def dashboard_summarize(now: datetime | None = None) -> dict:
    """Read the figures and keep them in the cache for the next page loads."""
    now = now or timezone.now()
    summary = {
        "at": now,
        "statuses": {str(status): count for status, count in selectors.connection_status_counts().items()},
        "refreshes": _refresh_bars(now),
        "expiries": _expiry_bars(now),
    }
    cache.set(SUMMARY_KEY, summary, timeout=SUMMARY_KEPT)
    return summary


def _refresh_bars(now: datetime) -> list[tuple[str, tuple[int, int]]]:
    """Refreshes per hour over the last day, successes and failures stacked (from the audit log)."""
    since = (now - timedelta(hours=HOURS_BACK - 1)).replace(minute=0, second=0, microsecond=0)
    rows = (
        AuditEvent.objects.filter(action=AuditEvent.Action.TOKEN_REFRESH, created_at__gte=since)
        .annotate(hour=TruncHour("created_at"))
        .values("hour")
        .annotate(ok=Count("id", filter=Q(outcome="success")), failed=Count("id", filter=~Q(outcome="success")))
        .order_by()
    )
    by_hour = {row["hour"]: (row["ok"], row["failed"]) for row in rows}
    hours = [since + timedelta(hours=n) for n in range(HOURS_BACK)]
    return [(f"{hour:%H}h", by_hour.get(hour, (0, 0))) for hour in hours]


def _expiry_bars(now: datetime) -> list[tuple[str, tuple[int, int]]]:
    """Connected tokens expiring in each of the next hours: what the refresh workers have ahead of them. Counted
    by the database, an hour a query through the index on the expiry (not every expiry read into Python)."""
    tokens = OAuthToken.objects.filter(connection__is_enabled=True).exclude(state=TokenState.REAUTHORIZATION_REQUIRED)
    counts = []
    for n in range(HOURS_AHEAD):
        start, end = now + timedelta(hours=n), now + timedelta(hours=n + 1)
        counts.append(tokens.filter(expires_at__gte=start, expires_at__lt=end).count())
    return [(f"+{n}h", (count, 0)) for n, count in enumerate(counts)]


def _refresh_chart(bars: list[tuple[str, tuple[int, int]]]) -> SafeString:
    if not any(ok or failed for _, (ok, failed) in bars):
        return _empty(
            "refresh-chart", "No refresh in the last 24 hours yet: tokens are refreshed shortly before they expire."
        )
    return _stacked_bars(bars, "Refreshes per hour, last 24 hours", "refresh-chart", (SUCCESS, FAILURE))


def _expiry_chart(bars: list[tuple[str, tuple[int, int]]]) -> SafeString:
    if not any(count for _, (count, _) in bars):
        return _empty("expiry-chart", "No connected token expires in the next 12 hours.")
    return _stacked_bars(bars, "Token expiries, next 12 hours", "expiry-chart", ("#1565c0", FAILURE))


def _status_chart(statuses: dict[ConnectionStatus, int]) -> SafeString:
    """One horizontal bar a status, its length the number of connections."""
    if not any(statuses.values()):
        return _empty("status-chart", "No connection yet: add one under Connections.")
    top = max(statuses.values())
    rows = [
        (22 * n, status.replace("_", " "), 220 * count / top, STATUS_COLOURS[status], count)
        for n, (status, count) in enumerate(statuses.items())
    ]
    bars = format_html_join(
        "",
        '<text x="0" y="{}" class="label">{}</text><rect x="190" y="{}" width="{}" height="16" fill="{}"></rect>'
        '<text x="{}" y="{}" class="value">{}</text>',
        ((y + 13, label, y, width, colour, 196 + width, y + 13, count) for y, label, width, colour, count in rows),
    )
    return format_html(
        '<svg id="status-chart" viewBox="0 0 {} {}" width="{}" height="{}" role="img" '
        'aria-label="Connections by status">{}</svg>',
        STATUS_WIDTH,
        22 * len(rows),
        STATUS_WIDTH,
        22 * len(rows),
        bars,
    )


def _stacked_bars(bars: list[tuple[str, tuple[int, int]]], title: str, svg_id: str, colours: tuple) -> SafeString:
    """Vertical bars, each of two stacked parts, with its label under it and its total over it."""
    width, height, top = 24, 120, max((a + b for _, (a, b) in bars), default=0) or 1
    parts = []
    for n, (label, (first, second)) in enumerate(bars):
        x, h1, h2 = 40 + n * (width + 4), height * first / top, height * second / top
        template = (
            '<g><title>{}: {} / {}</title><rect x="{}" y="{}" width="{}" height="{}" fill="{}"></rect>'
            '<rect x="{}" y="{}" width="{}" height="{}" fill="{}"></rect><text x="{}" y="{}" class="axis">{}</text></g>'
        )
        first_bar = (x, 10 + height - h1, width, h1, colours[0])
        second_bar = (x, 10 + height - h1 - h2, width, h2, colours[1])
        parts.append(
            format_html(template, label, first, second, *first_bar, *second_bar, x + width / 2, height + 26, label)
        )
    # Drawn at its natural size (width and height as the viewBox's): a label's 11 units are 11 px on the screen,
    # not shrunk to fit a narrow card.
    full_width, full_height = 50 + len(bars) * (width + 4), height + 34
    return format_html(
        '<svg id="{}" viewBox="0 0 {} {}" width="{}" height="{}" role="img" aria-label="{}">'
        '<text x="0" y="16" class="axis scale">{}</text>'
        '<line x1="38" y1="{}" x2="{}" y2="{}" class="base"></line>{}</svg>',
        svg_id,
        full_width,
        full_height,
        full_width,
        full_height,
        title,
        top,
        height + 10,
        42 + len(bars) * (width + 4),
        height + 10,
        format_html_join("", "{}", ((part,) for part in parts)),
    )


def _empty(chart_id: str, words: str) -> SafeString:
    """An empty chart says so in words, not with an axis scaled to 1."""
    return format_html('<p id="{}" class="chart-empty">{}</p>', chart_id, words)


def _attention() -> list[Attention]:
    """The connections that need someone: reauthorization required first, then failing refreshes, then those
    past their refresh time (the workers do not keep up)."""
    now, found, seen = timezone.now(), [], set()
    tokens = OAuthToken.objects.filter(connection__is_enabled=True).select_related("connection")
    queries = [
        (tokens.filter(state=TokenState.REAUTHORIZATION_REQUIRED), "Reauthorization required"),
        (tokens.filter(state=TokenState.REFRESH_FAILING), "Refresh failing"),
        (tokens.filter(refresh_due_at__lt=now - timedelta(seconds=60)), "Past its refresh time"),
    ]
    for query, reason in queries:
        for token in query.order_by("connection__name")[:50]:
            if token.connection_id not in seen:
                seen.add(token.connection_id)
                found.append(Attention(token.connection, reason))
    return found
