"""GET /metrics in Prometheus's text format: what the processes counted (connections.ops.metrics; in multiprocess mode
summed over every web and worker process's files) and what the database says at the moment of the scrape —
connections by status, the refresh backlog, the seconds until the earliest expiry of a connected token."""

import os
from collections.abc import Iterator

from django.db.models import Min
from django.utils import timezone
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily, Metric

from connections import selectors
from connections.models import OAuthToken, TokenState
from connections.ops import health


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
        for status, count in selectors.connection_status_counts().items():
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
        yield _credential_expiries()
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


def _credential_expiries() -> Metric:
    """Per connection with a credential that expires (a client secret, a signing certificate, a refresh token's
    absolute lifetime): the seconds until the earliest. One series per such connection, none for the others."""
    family = GaugeMetricFamily(
        "controlroom_credential_expiry_seconds",
        "Seconds until the earliest credential of a connection expires: client secret, signing certificate or "
        "refresh token lifetime (negative: expired).",
        labels=["connection"],
    )
    now = timezone.now()
    for slug, expires_at in selectors.earliest_credential_expiry_by_connection().items():
        family.add_metric([slug], (expires_at - now).total_seconds())
    return family
