"""Celery tasks: thin edges that take ids, call one service, and own only their retry policy."""

from datetime import datetime

from celery import Task, shared_task
from django.conf import settings
from django.utils import timezone

from connections import audit, health, refresh


@shared_task(name="connections.tasks.beat_heartbeat", ignore_result=True, bind=True)
def beat_heartbeat(self: Task) -> None:
    """Scheduled by beat, run by a worker: proves beat, the broker and this worker all work (/healthz)."""
    health.beat_heartbeat_record(worker=self.request.hostname or "")


@shared_task(name="connections.tasks.refresh_sweep", ignore_result=True)
def refresh_sweep() -> int:
    """Scheduled by beat: queue one refresh task per token due before the next sweep. Each expires before its
    token can be claimed again, so a token is never queued twice."""
    due = refresh.token_refresh_claim_due()
    queued_at = timezone.now().isoformat()
    for token_id, generation in due:
        refresh_token.apply_async((token_id, generation, queued_at), expires=refresh.claim_expiry_seconds())
    return len(due)


# A refresh takes its lease, one provider call (which ends by OUTBOUND_TIMEOUT) and a few statements: the limits
# leave room for that, and the hard one ends the task before its lease could lapse (2 x OUTBOUND_TIMEOUT + 5 s).
# They apply in the prefork pool (the default), not in the solo pool the tests use.
@shared_task(
    name="connections.tasks.refresh_token",
    ignore_result=True,
    soft_time_limit=settings.OUTBOUND_TIMEOUT + 5,
    time_limit=2 * settings.OUTBOUND_TIMEOUT + 3,
)
def refresh_token(token_id: int, generation: int, queued_at: str | None = None) -> None:
    """Refresh one token. Retries are the sweep's job (on the token's backoff schedule), not Celery's."""
    queued = datetime.fromisoformat(queued_at) if queued_at else None
    refresh.token_refresh_scheduled(token_id=token_id, generation=generation, queued_at=queued)


@shared_task(name="connections.tasks.audit_failed_authentications_summarize", ignore_result=True)
def audit_failed_authentications_summarize() -> int:
    """Scheduled by beat: one audit event with the count for each address and minute with many failures."""
    return audit.audit_failed_authentications_summarize()


@shared_task(name="connections.tasks.audit_queue_drain", ignore_result=True)
def audit_queue_drain() -> int:
    """Queued by the token endpoint a second after the first event of a batch, and scheduled by beat in case
    that message was lost: move the queued audit events into the audit table."""
    return audit.audit_queue_drain()
