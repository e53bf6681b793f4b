"""The beat sweep's claim: every token due before the next sweep, REFRESH_SWEEP_BATCH at a time (one statement a batch
on PostgreSQL), each claimed so that it is never queued twice."""

from collections.abc import Iterator
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection as db_connection
from django.utils import timezone

from connections.engine.lease import lease_seconds
from connections.models import Connection, OAuthToken


def claim_seconds() -> float:
    """How long a token the sweep claimed is not claimed again: its task runs within that, or has expired
    (claim_expiry_seconds) and the token is claimed afresh. So a token is never queued twice."""
    return lease_seconds() + 2 * settings.BEAT_INTERVAL


def claim_expiry_seconds() -> float:
    """How long a queued refresh may wait for a worker: it expires before its token can be claimed again."""
    return lease_seconds() + settings.BEAT_INTERVAL / 2


def token_refresh_claim_due(*, now: datetime | None = None) -> list[tuple[int, int]]:
    """The beat sweep's claim: up to REFRESH_SWEEP_BATCH tokens due for refresh, as (token id, generation) pairs
    to queue. token_refresh_claims() claims them all, batch after batch.

    Due means due before the next sweep, so no token waits a whole interval past its refresh time. Claiming
    moves the next refresh time claim_seconds() ahead: the sweeps in between do not queue it again, and a task
    that is lost (its worker killed, or expired in the queue) is queued again after that.
    """
    now = now or timezone.now()
    cutoff = now + timedelta(seconds=settings.BEAT_INTERVAL)
    claimed_until = now + timedelta(seconds=claim_seconds())
    if db_connection.vendor == "postgresql":
        return _claim_batch_postgresql(cutoff, claimed_until, settings.REFRESH_SWEEP_BATCH)
    due = list(
        OAuthToken.objects.filter(next_refresh_at__lte=cutoff, connection__is_enabled=True)
        .order_by("next_refresh_at")
        .values_list("id", "generation")[: settings.REFRESH_SWEEP_BATCH]
    )
    if due:
        OAuthToken.objects.filter(pk__in=[token_id for token_id, _ in due], next_refresh_at__lte=cutoff).update(
            next_refresh_at=claimed_until
        )
    return due


def _claim_batch_postgresql(cutoff: datetime, claimed_until: datetime, size: int) -> list[tuple[int, int]]:
    # One statement a batch. SKIP LOCKED: a row a refresh is writing right now is claimed by the next sweep
    # rather than waited for (two sweeps, or a sweep and a refresh, never block each other).
    tokens, connections = OAuthToken._meta.db_table, Connection._meta.db_table
    with db_connection.cursor() as cursor:
        cursor.execute(
            f"""
            UPDATE {tokens} SET next_refresh_at = %s
            WHERE id IN (
                SELECT token.id FROM {tokens} token JOIN {connections} conn ON conn.id = token.connection_id
                WHERE token.next_refresh_at <= %s AND conn.is_enabled
                ORDER BY token.next_refresh_at LIMIT %s
                FOR UPDATE OF token SKIP LOCKED
            )
            RETURNING id, generation
            """,  # noqa: S608 - the table names are the models' own; every value is a parameter
            [claimed_until, cutoff, size],
        )
        return [(token_id, generation) for token_id, generation in cursor.fetchall()]


def token_refresh_claims(*, now: datetime | None = None) -> Iterator[list[tuple[int, int]]]:
    """Claim every token due, REFRESH_SWEEP_BATCH at a time, until none is left: the sweep's throughput follows
    the work, not its configuration."""
    while batch := token_refresh_claim_due(now=now):
        yield batch
        if len(batch) < settings.REFRESH_SWEEP_BATCH:
            return
