"""Retention (connections.audit.retention): events older than AUDIT_RETENTION_DAYS are pruned in batches, none
inside the window is lost, the pruning is audited as one event, and `manage.py audit_export` holds every pruned
event first."""

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from connections import tasks
from connections.audit.events import Action, Outcome, audit_record
from connections.audit.retention import audit_prune
from connections.models import AuditEvent

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def events_aged(days: list[float]) -> list[AuditEvent]:
    """One event created `days` before NOW each (a rolled-up row among them)."""
    made = []
    for n, age in enumerate(days):
        event = audit_record(action=Action.TOKEN_REFRESH, outcome=Outcome.SUCCESS, detail=f"event {n}")
        created = NOW - timedelta(days=age)
        AuditEvent.objects.filter(pk=event.pk).update(
            created_at=created,
            **({"kind": "memory", "count": 40, "last_at": created + timedelta(seconds=59)} if n % 3 == 0 else {}),
        )
        made.append(AuditEvent.objects.get(pk=event.pk))
    return made


def exported(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_export_then_prune_keeps_the_window_and_archives_every_pruned_event(settings, tmp_path):
    # given events on both sides of a 30-day retention, more than one batch of them older than it
    settings.AUDIT_RETENTION_DAYS = 30
    old = events_aged([400, 200, 45, 31, 30.01, 30.0001])
    kept = events_aged([29.999, 10, 1, 0])
    cutoff = NOW - timedelta(days=30)
    # when they are exported up to the cutoff, then pruned two at a time
    archive = tmp_path / "audit.jsonl"
    call_command("audit_export", "--until", cutoff.isoformat(), "--output", str(archive))
    pruned = audit_prune(now=NOW, batch=2)
    # then exactly the old ones went, every one of them is in the export, with its count and times
    assert (pruned.count, pruned.finished) == (6, True)
    assert set(AuditEvent.objects.exclude(action=Action.AUDIT_PRUNE).values_list("pk", flat=True)) == {
        event.pk for event in kept
    }
    lines = exported(archive)
    assert [line["id"] for line in lines] == [event.pk for event in old]  # oldest first
    assert lines[0]["count"] == 40 and lines[0]["kind"] == "memory"
    assert lines[0]["created_at"] == old[0].created_at.isoformat()
    assert lines[0]["last_at"] == old[0].last_at.isoformat()
    # and the pruning is one event: how many, which range
    record = AuditEvent.objects.get(action=Action.AUDIT_PRUNE)
    assert record.detail.startswith(
        f"Pruned 6 audit events created from {old[0].created_at:%Y-%m-%d %H:%M:%S} to "
        f"{old[-1].created_at:%Y-%m-%d %H:%M:%S} UTC: older than 30 days"
    )


def test_a_run_that_runs_out_of_time_leaves_the_rest_for_the_next(settings):
    settings.AUDIT_RETENTION_DAYS = 30
    events_aged([300, 200, 100])
    first = audit_prune(now=NOW, batch=1, seconds=0.0)  # the deadline is reached after its first batch
    assert (first.count, first.finished) == (1, False)
    assert "left for the next run" in AuditEvent.objects.get(action=Action.AUDIT_PRUNE).detail
    assert audit_prune(now=NOW, batch=1).count == 2
    assert AuditEvent.objects.exclude(action=Action.AUDIT_PRUNE).count() == 0


def test_nothing_due_prunes_nothing_and_audits_nothing(settings):
    settings.AUDIT_RETENTION_DAYS = 30
    events_aged([1, 2])
    assert audit_prune(now=NOW).count == 0
    assert not AuditEvent.objects.filter(action=Action.AUDIT_PRUNE).exists()


def test_zero_days_keeps_everything(settings):
    settings.AUDIT_RETENTION_DAYS = 0
    events_aged([4000, 400])
    assert tasks.audit_prune() == 0
    assert AuditEvent.objects.count() == 2


def test_the_scheduled_task_prunes_by_the_setting(settings):
    settings.AUDIT_RETENTION_DAYS = 400
    old, recent = events_aged([3000, 1])[0], AuditEvent.objects.latest("created_at")
    AuditEvent.objects.filter(pk=recent.pk).update(created_at=datetime.now(UTC))
    assert tasks.audit_prune() == 1
    assert not AuditEvent.objects.filter(pk=old.pk).exists() and AuditEvent.objects.filter(pk=recent.pk).exists()


def test_the_export_takes_a_range_of_dates_to_standard_output(capsys):
    events_aged([3, 2, 1])
    since, until = (NOW - timedelta(days=2)).date().isoformat(), NOW.date().isoformat()
    call_command("audit_export", "--since", since, "--until", until)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["detail"] for line in lines] == ["event 1", "event 2"]
    assert set(lines[0]) >= {"id", "created_at", "actor_label", "connection_label", "action", "count", "kind"}


def test_the_export_refuses_what_is_not_a_date():
    with pytest.raises(CommandError, match="is not a date"):
        call_command("audit_export", "--since", "yesterday")
