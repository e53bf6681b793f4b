"""Celery tasks: thin edges that take ids, call one service, and own only their retry policy."""

import math
from datetime import datetime

from celery import Task, shared_task
from django.conf import settings
from django.utils import timezone

from connections import errors
from connections.audit import events, retention
from connections.cache import change_log
from connections.engine import batch, sweep
from connections.flows import device
from connections.notify import expiry, webhooks
from connections.ops import health, metrics
from connections.ops.periods import once_per_period

# Every beat queues each periodic job; of the copies queued for one period, the first to claim it runs
# (connections.ops.periods), so any number of beats run each job once per period.
from connections.web import dashboard


@shared_task(name="connections.tasks.beat_heartbeat", ignore_result=True, bind=True)
@once_per_period(health.BEAT)
def beat_heartbeat(self: Task) -> None:
    """Scheduled by beat, run by a worker: proves beat, the broker and this worker all work (/healthz)."""
    health.beat_heartbeat_record(worker=self.request.hostname or "")


@shared_task(name="connections.tasks.refresh_sweep", ignore_result=True)
def refresh_sweep() -> int | None:
    """Scheduled by beat: claim every token due before the next sweep and queue them, REFRESH_TASK_SIZE to a
    task. Each task expires before its tokens can be claimed again, so a token is never queued twice. A failure
    (the database, the broker), claiming the period included, is said on /healthz and /metrics."""
    try:
        claimed = _sweep_this_period()
    except Exception as exc:  # then Celery logs it
        metrics.task_failure_counted("refresh_sweep")
        health.periodic_failure_record(health.SWEEP, exc)
        raise
    if claimed is not None:  # None: another beat's copy swept this period
        health.periodic_success_record(health.SWEEP)
    return claimed


@once_per_period(health.SWEEP)
def _sweep_this_period() -> int:
    queued_at = timezone.now().isoformat()
    claimed = 0
    for claimed_batch in sweep.token_refresh_claims():
        for start in range(0, len(claimed_batch), settings.REFRESH_TASK_SIZE):
            pairs = claimed_batch[start : start + settings.REFRESH_TASK_SIZE]
            refresh_tokens.apply_async((pairs, queued_at), expires=sweep.claim_expiry_seconds())
        claimed += len(claimed_batch)
    return claimed


# A refresh takes one provider call (which ends by OUTBOUND_TIMEOUT) and a few statements; a task's tokens are
# refreshed REFRESH_CONCURRENCY at a time, and at most REFRESH_PROVIDER_CONCURRENCY at one provider (all of a
# task's tokens may be at one). The limits leave room for that, and end a task that hangs (a token whose refresh
# was cut off keeps its lease until it runs out, and is claimed again after that). They apply in the prefork
# pool (the default), not in the solo pool the tests use.
# A provider call ends by OUTBOUND_TIMEOUT (whole seconds here: Celery's limits): a task making one is asked to stop
# a little after that (soft), and ended at twice that (hard).
_SOFT_LIMIT = math.ceil(settings.OUTBOUND_TIMEOUT) + 5
_HARD_LIMIT = 2 * math.ceil(settings.OUTBOUND_TIMEOUT) + 3
_IN_FLIGHT = min(settings.REFRESH_CONCURRENCY, settings.REFRESH_PROVIDER_CONCURRENCY)
_ROUNDS = -(-settings.REFRESH_TASK_SIZE // _IN_FLIGHT) + 1


@shared_task(
    name="connections.tasks.refresh_tokens",
    ignore_result=True,
    soft_time_limit=_ROUNDS * _SOFT_LIMIT,
    time_limit=_ROUNDS * _HARD_LIMIT,
)
def refresh_tokens(pairs: list[list[int]], queued_at: str | None = None) -> None:
    """Refresh the (token id, generation) pairs a sweep claimed. Retries are the sweep's job (on each token's
    backoff schedule), not Celery's."""
    queued = datetime.fromisoformat(queued_at) if queued_at else None
    try:
        batch.tokens_refresh(pairs, queued)
    except Exception as exc:  # the database (a token's own failure is recorded on the token and raises nothing)
        metrics.task_failure_counted("refresh_tokens")
        health.periodic_failure_record(health.REFRESH_TASKS, exc)
        raise


@shared_task(
    name="connections.tasks.refresh_token",
    ignore_result=True,
    soft_time_limit=_SOFT_LIMIT,
    time_limit=_HARD_LIMIT,
)
def refresh_token(token_id: int, generation: int, queued_at: str | None = None) -> None:
    """Refresh one token (what sweeps queued before refresh_tokens existed, and a way to ask for one by hand)."""
    refresh_tokens([[token_id, generation]], queued_at)


@shared_task(name="connections.tasks.audit_failed_authentications_summarize", ignore_result=True)
@once_per_period("failed-authentications")
def audit_failed_authentications_summarize() -> int:
    """Scheduled by beat: one audit event with the count for each address and minute with many failures."""
    return events.audit_failed_authentications_summarize()


# Beat queues pruning every 10 minutes (controlroom/celery.py); with two beats, the first copy of each 10 minutes runs.
AUDIT_PRUNE_PERIOD = 600


@shared_task(name="connections.tasks.audit_prune", ignore_result=True)
@once_per_period("audit-prune", seconds=AUDIT_PRUNE_PERIOD)
def audit_prune() -> int | None:
    """Scheduled by beat: delete the audit events older than AUDIT_RETENTION_DAYS, in small batches (one audit
    event says how many and which range). Returns how many (None: another beat's copy ran this period)."""
    return retention.audit_prune().count


@shared_task(name="connections.tasks.token_changes_prune", ignore_result=True)
@once_per_period("token-changes-prune")
def token_changes_prune() -> int:
    """Scheduled by beat: the token change log's rows older than a minute (connections.cache.change_log); how many."""
    return change_log.token_changes_prune()


@shared_task(name="connections.tasks.dashboard_summarize", ignore_result=True)
@once_per_period("dashboard-summary", seconds=dashboard.SUMMARY_EVERY)
def dashboard_summarize() -> None:
    """Scheduled by beat: the dashboard's figures that read many rows, kept in the cache for its page loads."""
    dashboard.dashboard_summarize()


@shared_task(
    name="connections.tasks.device_authorization_poll",
    ignore_result=True,
    soft_time_limit=_SOFT_LIMIT,
    time_limit=_HARD_LIMIT,
)
def device_authorization_poll(authorization_id: int) -> None:
    """Poll the token URL for a Device Code authorization once, and again after the provider's interval until it
    is approved, denied or expired (connections.flows.device)."""
    try:
        wait = device.device_authorization_poll(authorization_id)
        if wait is not None:
            device_authorization_poll.apply_async((authorization_id,), countdown=wait)
    except Exception as exc:  # the time limit, the database, the broker: nobody would poll again, so it ends, said
        device.device_authorization_end(authorization_id, f"Waiting for the approval failed ({type(exc).__name__}).")
        raise


@shared_task(
    name="connections.tasks.webhook_deliver",
    bind=True,
    ignore_result=True,
    max_retries=len(webhooks.RETRY_DELAYS),
    soft_time_limit=_SOFT_LIMIT,
    time_limit=_HARD_LIMIT,
)
def webhook_deliver(self: Task, endpoint_id: int, body: str) -> None:
    """Post one event to one endpoint; retried with backoff while the receiver is down or answers 5xx, 408 or 429
    (connections.notify.webhooks)."""
    try:
        webhooks.webhook_deliver(endpoint_id, body)
    except errors.DeliveryFailed as failure:
        if failure.retry and self.request.retries < len(webhooks.RETRY_DELAYS):
            raise self.retry(countdown=webhooks.retry_delay(self.request.retries)) from None
        webhooks.delivery_given_up(endpoint_id, body, failure)


# Credentials that expire are looked at hourly: beat queues the check every interval, and the first copy of each
# hour runs it (the warnings themselves are sent once each whatever runs them: connections.notify.expiry).
CREDENTIAL_EXPIRY_PERIOD = 3600


@shared_task(name="connections.tasks.credential_expiry_warn", ignore_result=True)
@once_per_period("credential-expiry", seconds=CREDENTIAL_EXPIRY_PERIOD)
def credential_expiry_warn() -> int:
    """Scheduled by beat: warn the managers of credentials expiring in 30, 7 and 1 day(s), once each."""
    return expiry.credential_expiry_warnings_send()
