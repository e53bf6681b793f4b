"""Celery tasks: thin edges that take ids, call one service, and own only their retry policy."""

from celery import shared_task

from connections import audit, health, refresh


@shared_task(name="connections.tasks.beat_heartbeat", ignore_result=True)
def beat_heartbeat() -> None:
    """Scheduled by beat, run by a worker: proves beat, the broker and a worker all work (/healthz)."""
    health.beat_heartbeat_record()


@shared_task(name="connections.tasks.refresh_sweep", ignore_result=True)
def refresh_sweep() -> int:
    """Scheduled by beat: queue one refresh task per token due before the next sweep."""
    due = refresh.token_refresh_claim_due()
    for token_id, generation in due:
        refresh_token.delay(token_id, generation)
    return len(due)


@shared_task(name="connections.tasks.refresh_token", ignore_result=True)
def refresh_token(token_id: int, generation: int) -> None:
    """Refresh one token. Retries are the sweep's job (on the token's backoff schedule), not Celery's."""
    refresh.token_refresh_scheduled(token_id=token_id, generation=generation)


@shared_task(name="connections.tasks.audit_failed_authentications_summarize", ignore_result=True)
def audit_failed_authentications_summarize() -> int:
    """Scheduled by beat: one audit event with the count for each address and minute with many failures."""
    return audit.audit_failed_authentications_summarize()


@shared_task(name="connections.tasks.audit_queue_drain", ignore_result=True)
def audit_queue_drain() -> int:
    """Queued by the token endpoint a second after the first event of a batch, and scheduled by beat in case
    that message was lost: move the queued audit events into the audit table."""
    return audit.audit_queue_drain()
