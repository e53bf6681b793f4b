"""Keeping the audit log bounded: events older than AUDIT_RETENTION_DAYS are deleted by a scheduled task in small
batches (each its own short transaction, so no lock is held for long and the token endpoint's reports never wait on
it), and the pruning is itself audited, one event a run; audit_json_lines writes any time range as JSON lines, to
archive what is about to be pruned (`manage.py audit_export`)."""

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from connections.audit.events import Action, Outcome, audit_record
from connections.models import AuditEvent

PRUNE_BATCH = 5_000  # rows a transaction: a few tens of milliseconds of deleting
PRUNE_SECONDS = 240.0  # the most one run prunes for: the next run (beat, every 10 minutes) goes on from there

# What a line of the export holds: every column of the event, the ids of its user and connection too.
EXPORT_FIELDS = (
    *("id", "created_at", "last_at", "count", "kind", "action", "outcome"),
    *("actor_id", "actor_label", "connection_id", "connection_label", "detail", "remote_addr"),
)


@dataclass(frozen=True)
class Pruned:
    count: int
    oldest: datetime | None  # the first and last created_at among the events deleted
    newest: datetime | None
    finished: bool  # nothing older than the cutoff is left (else the next run goes on)


def audit_retention_cutoff(now: datetime | None = None) -> datetime | None:
    """Events created before this are pruned; None: AUDIT_RETENTION_DAYS is 0, everything is kept."""
    days = settings.AUDIT_RETENTION_DAYS
    return (now or timezone.now()) - timedelta(days=days) if days else None


def audit_prune(*, now: datetime | None = None, batch: int = PRUNE_BATCH, seconds: float = PRUNE_SECONDS) -> Pruned:
    """Delete the events older than the retention, oldest first, `batch` at a time, for at most `seconds`; one
    audit event says how many went and from which range. Two runs at once (two beats) take different rows."""
    cutoff = audit_retention_cutoff(now)
    if cutoff is None:
        return Pruned(0, None, None, True)
    deadline, count, oldest, newest = time.monotonic() + seconds, 0, None, None
    finished = False
    while not finished:  # at least one batch, however short the time
        times = _batch_delete(cutoff, batch)
        if times:
            count += len(times)
            oldest, newest = min(oldest or times[0], *times), max(newest or times[0], *times)
        finished = len(times) < batch
        if time.monotonic() >= deadline:
            break
    pruned = Pruned(count, oldest, newest, finished)
    if count:
        _prune_record(pruned, cutoff)
    return pruned


def _batch_delete(cutoff: datetime, batch: int) -> list[datetime]:
    """One batch, in its own transaction: the rows are locked (skipping those another run holds) and deleted by
    their keys, through the index on created_at. Returns the deleted events' times."""
    with transaction.atomic():
        rows = list(
            AuditEvent.objects.filter(created_at__lt=cutoff)
            .order_by("created_at")
            .select_for_update(skip_locked=True)
            .values_list("id", "created_at")[:batch]
        )
        if rows:
            AuditEvent.objects.filter(pk__in=[row_id for row_id, _ in rows]).delete()
    return [created_at for _, created_at in rows]


def _prune_record(pruned: Pruned, cutoff: datetime) -> None:
    more = "" if pruned.finished else " Older events are left for the next run."
    audit_record(
        action=Action.AUDIT_PRUNE,
        outcome=Outcome.SUCCESS,
        detail=f"Pruned {pruned.count} audit events created from {pruned.oldest:%Y-%m-%d %H:%M:%S} to "
        f"{pruned.newest:%Y-%m-%d %H:%M:%S} UTC: older than {settings.AUDIT_RETENTION_DAYS} days "
        f"(AUDIT_RETENTION_DAYS; cutoff {cutoff:%Y-%m-%d %H:%M:%S} UTC).{more}",
    )


def audit_json_lines(*, since: datetime | None, until: datetime | None) -> Iterator[str]:
    """The events created in [since, until), oldest first, one JSON object a line (EXPORT_FIELDS; times in ISO
    8601 UTC), read in chunks through the created_at index."""
    events = AuditEvent.objects.order_by("created_at", "id")
    if since is not None:
        events = events.filter(created_at__gte=since)
    if until is not None:
        events = events.filter(created_at__lt=until)
    for row in events.values_list(*EXPORT_FIELDS).iterator(chunk_size=5_000):
        record = dict(zip(EXPORT_FIELDS, row, strict=True))
        for name in ("created_at", "last_at"):
            record[name] = record[name].astimezone(UTC).isoformat() if record[name] else None
        yield json.dumps(record, ensure_ascii=False) + "\n"
