"""GET /metrics in Prometheus's text format: what the processes counted (connections.metrics; in multiprocess mode
summed over every web and worker process's files) and what the database says at the moment of the scrape —
connections by status, the refresh backlog, the seconds until the earliest expiry of a connected token."""

import os
from collections.abc import Iterator

from django.db.models import Case, CharField, Count, Exists, Min, OuterRef, Value, When
from django.utils import timezone
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily, Metric

from connections import health
from connections.models import Connection, OAuthToken, TokenState, TokenType

STATUSES = ("connected", "refresh_failing", "reauthorization_required", "not_connected", "disabled")


def metrics_exposition() -> tuple[bytes, str]:
    """The body and content type of a scrape."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_ThisProcess())
    registry.register(_Database())
    return generate_latest(registry), CONTENT_TYPE_LATEST


class _ThisProcess:
    """Without multiprocess mode (a single process, the tests): this process's own counts."""

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()


class _Database:
    def collect(self) -> Iterator[Metric]:
        by_status = GaugeMetricFamily("controlroom_connections", "Connections by status.", labels=["status"])
        for status, count in connection_status_counts().items():
            by_status.add_metric([status], count)
        yield by_status
        backlog = health.refresh_backlog()
        yield GaugeMetricFamily(
            "controlroom_refresh_backlog_tokens", "Tokens past their refresh time.", value=backlog.overdue
        )
        yield GaugeMetricFamily(
            "controlroom_refresh_backlog_oldest_seconds",
            "How long the most overdue token has waited for its refresh (0: none).",
            value=backlog.oldest_overdue_seconds,
        )
        earliest = (
            OAuthToken.objects.filter(connection__is_enabled=True, state=TokenState.ACTIVE, expires_at__isnull=False)
            .aggregate(earliest=Min("expires_at"))
            .get("earliest")
        )
        if earliest is not None:
            yield GaugeMetricFamily(
                "controlroom_earliest_expiry_seconds",
                "Seconds until the earliest expiry of a connected token (negative: one has expired).",
                value=(earliest - timezone.now()).total_seconds(),
            )


def connection_status_counts() -> dict[str, int]:
    """Connections by status, as their list shows it (connections.selectors.connection_status), in one query."""
    tokens = OAuthToken.objects.filter(connection=OuterRef("pk"))
    status = Case(
        When(is_enabled=False, then=Value("disabled")),
        When(~Exists(tokens), then=Value("not_connected")),
        When(token_type=TokenType.USER_SPECIFIC, then=Value("connected")),
        When(Exists(tokens.filter(state=TokenState.REAUTHORIZATION_REQUIRED)), then=Value("reauthorization_required")),
        When(Exists(tokens.filter(state=TokenState.REFRESH_FAILING)), then=Value("refresh_failing")),
        default=Value("connected"),
        output_field=CharField(),
    )
    counted = Connection.objects.annotate(status=status).order_by().values("status").annotate(count=Count("id"))
    return dict.fromkeys(STATUSES, 0) | {row["status"]: row["count"] for row in counted}
