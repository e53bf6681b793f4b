"""A refresh's outcome, written under its fence: the new tokens (a late result dropped and revoked), or the failure
classified (transient with backoff, rate limited, permanent), its audit event, and the managers told when it matters."""

import logging
import random
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import DatabaseError, close_old_connections, transaction
from django.db import connection as db_connection
from django.db.models import F
from django.utils import timezone

from connections.audit.events import Action, Outcome, audit_event_row, audit_record
from connections.cache import invalidation
from connections.engine.store import (
    Fence,
    fenced_updates,
    token_refreshed_row,
    token_store_refreshed,
    token_values_drop,
)
from connections.errors import ProviderError
from connections.models import Connection, OAuthToken, TokenState
from connections.notify.managers import notify_managers
from connections.oauth import client as oauth_client
from connections.oauth.client import TokenResponse
from connections.ops import metrics

logger = logging.getLogger(__name__)


def backoff_seconds(failures: int) -> float:
    """Exponential backoff with full jitter, capped at 30 minutes (AWS architecture blog, 'Exponential Backoff
    And Jitter')."""
    return random.uniform(0.5, 1.0) * min(30 * 60, 15 * 2 ** max(failures - 1, 0))  # noqa: S311 - jitter, not a secret


def _audit(audit: list[dict] | None, **event: Any) -> None:
    """Record the event now, or add it to the batch's `audit` (written at the batch's end: audit_events_write)."""
    if audit is None:
        audit_record(**event)
    else:
        audit.append(audit_event_row(**event))


# Results the provider gave that the database would not take, in this process: token id -> what to say on it once
# the database answers again (unstored_results_record).
_unstored: dict[int, tuple[str, str]] = {}  # token id -> (its connection's slug, the sentence)


def token_refresh_complete(
    *, fence: Fence, token: OAuthToken, response: TokenResponse, actor_label: str, audit: list[dict] | None = None
) -> OAuthToken | None:
    """Store a refresh's result under its fence; None when the fence was lost (the result is then revoked at
    the provider: nobody holds its tokens). The provider has spent the old refresh token by now: a database that
    fails the write is asked again, on a connection opened afresh, for as long as the lease allows (it outlives
    the call by OUTBOUND_TIMEOUT); then the loss is said (a metric, an error log, the token's own record) and the
    error raised."""
    give_up_at = time.monotonic() + settings.OUTBOUND_TIMEOUT
    while True:
        try:
            return _result_write(fence, token, response, actor_label, audit)
        except DatabaseError:
            if not db_connection.in_atomic_block:
                close_old_connections()  # a connection the failure broke is opened afresh
            if (stored := _written_meanwhile(fence, response)) is not None:
                return stored  # the write went through; its answer was what got lost
            if time.monotonic() >= give_up_at:
                _result_lost(token)
                raise
            time.sleep(0.5)


def _written_meanwhile(fence: Fence, response: TokenResponse) -> OAuthToken | None:
    """The row, if it holds this very result already (a write that committed but whose answer never came back)."""
    try:
        row = OAuthToken.objects.filter(pk=fence.token_id, generation=fence.generation + 1).first()
    except DatabaseError:
        return None
    return row if row is not None and row.access_token == response.access_token else None


def _result_lost(token: OAuthToken) -> None:
    connection, when = token.connection, timezone.now()
    metrics.refresh_result_lost_counted(connection.provider.slug)
    logger.error(
        "A refresh of %s succeeded at the provider but the database did not take its result for %g s: the refresh "
        "token the provider rotated to is lost unless the grant still accepts the old one.",
        connection.slug,
        settings.OUTBOUND_TIMEOUT,
    )
    _unstored[token.pk] = (
        connection.slug,
        f"A refresh succeeded at the provider at {when:%Y-%m-%d %H:%M:%S} UTC but the database did not take its "
        "result: the refresh token it rotated to is lost. If the next refresh is refused, authorize again.",
    )


def unstored_results_record() -> None:
    """Say on each token whose result this process could not store that it was not stored, and have it refreshed
    at once (which tells whether the grant survived), once the database answers again."""
    for token_id, (slug, message) in list(_unstored.items()):
        try:
            now = timezone.now()
            OAuthToken.objects.filter(pk=token_id).update(
                state=TokenState.REFRESH_FAILING, last_error=message, last_error_at=now, next_refresh_at=now
            )
        except DatabaseError:
            return
        invalidation.token_rows_changed(slug)
        _unstored.pop(token_id, None)


def _result_write(
    fence: Fence, token: OAuthToken, response: TokenResponse, actor_label: str, audit: list[dict] | None
) -> OAuthToken | None:
    # With its audit event alongside, an outcome is one transaction; with the event left to the batch, one UPDATE.
    with transaction.atomic() if audit is None else nullcontext():
        stored = token_store_refreshed(fence=fence, token=token, response=response)
        if stored is not None:
            _result_said(token, actor_label, audit)
    if stored is None:
        _result_dropped(token, response)
    return stored


def _result_said(token: OAuthToken, actor_label: str, audit: list[dict] | None) -> None:
    """A stored result's audit event, and the managers told when it ends a run of failures they were told of."""
    connection, failures = token.connection, token.consecutive_failures
    _audit(
        audit,
        action=Action.TOKEN_REFRESH,
        outcome=Outcome.SUCCESS,
        connection=connection,
        actor_label=actor_label,
        detail=f"Recovered after {failures} failure(s)." if failures else "",
    )
    if failures >= settings.REFRESH_FAILURE_NOTIFY_THRESHOLD:
        _notify_on_commit(
            "token.refresh_recovered",
            connection,
            f"Refreshing {connection} works again",
            f"{connection} was refreshed successfully after {failures} failures in a row.",
        )


def _result_dropped(token: OAuthToken, response: TokenResponse) -> None:
    """A result whose fence was lost: nobody will hold its tokens (revoked where that ends them alone)."""
    logger.warning(
        "A refresh of %s finished after the token was disconnected, authorized again or refreshed by another "
        "process; its result is dropped (revoked at the provider where that ends it alone).",
        token.connection.slug,
    )
    dropped = [(response.refresh_token, "refresh_token"), (response.access_token, "access_token")]
    token_values_drop(token.connection, dropped, f"The dropped result of a refresh of {token.connection.slug}")


@dataclass
class _Result:
    fence: Fence
    token: OAuthToken
    response: TokenResponse
    refreshed: OAuthToken
    changes: dict[str, Any]
    written: bool | None = None  # None: not yet known
    error: Exception | None = None


class ResultBatch:
    """A worker batch's refresh results, written several to a statement (store.fenced_updates: still fenced row by
    row) as a group commit: a thread whose provider answered adds its result, and whichever thread gets to write
    next writes every result added by then, while the others wait for that write rather than make their own. So
    no result waits for the rest of the batch (a worker killed mid-batch loses no more than today), and the busier
    the batch, the fewer the statements and commits. A write the database fails is asked again, as
    token_refresh_complete asks it, for the results it did not take."""

    def __init__(self, actor_label: str, audit: list[dict]) -> None:
        self.actor_label, self.audit = actor_label, audit
        self._added: list[_Result] = []
        self._lock = threading.Lock()  # guards _added
        self._writing = threading.Lock()  # one write at a time

    def store(self, fence: Fence, token: OAuthToken, response: TokenResponse) -> OAuthToken | None:
        """Store this result under its fence, with those of the batch added meanwhile; as token_refresh_complete:
        the row as stored, or None when the fence was lost (the result is then dropped)."""
        result = _Result(fence, token, response, *token_refreshed_row(token, response))
        with self._lock:
            self._added.append(result)
        with self._writing:
            if result.written is None and result.error is None:
                with self._lock:
                    group, self._added = self._added, []
                try:
                    _results_write(group)  # holds this result: it was added and not yet written
                except Exception as exc:  # unexpected (a bug): each result of the group raises it, none is dropped
                    for each in group:
                        if each.written is None:
                            each.error = each.error or exc
                    raise
        if result.error is not None:
            raise result.error
        if not result.written:
            _result_dropped(token, response)
            return None
        invalidation.token_rows_changed(token.connection.slug)  # an UPDATE sends no signal
        _result_said(token, self.actor_label, self.audit)
        return result.refreshed


def _results_write(group: list[_Result]) -> None:
    """Write `group` (one statement per set of columns), marking each result written or not; on a database
    error, again on a fresh connection for those not written meanwhile, until OUTBOUND_TIMEOUT, then the loss of
    each is said and its error set."""
    give_up_at, waiting = time.monotonic() + settings.OUTBOUND_TIMEOUT, group
    while True:
        try:
            written = fenced_updates([(result.fence, result.changes) for result in waiting])
        except DatabaseError as exc:
            if not db_connection.in_atomic_block:
                close_old_connections()  # a connection the failure broke is opened afresh
            for result in waiting:
                if _written_meanwhile(result.fence, result.response) is not None:
                    result.written = True  # the write went through; its answer was what got lost
            waiting = [result for result in waiting if not result.written]
            if not waiting:
                return
            if time.monotonic() >= give_up_at:
                for result in waiting:
                    _result_lost(result.token)
                    result.error = exc
                return
            time.sleep(0.5)
            continue
        for result in waiting:
            result.written = result.fence.token_id in written
        return


def token_refresh_fail(
    *, fence: Fence, token: OAuthToken, exc: ProviderError, actor_label: str, audit: list[dict] | None = None
) -> bool:
    """Keep the token, note the failure under the fence, and schedule the next try (transient: with backoff;
    rate limited: when the provider said) or stop trying (permanent). False when the fence was lost: a newer
    grant is not the one that failed."""
    connection, rate_limited = token.connection, exc.error == oauth_client.RATE_LIMITED
    now = timezone.now()
    fields = {
        "last_error": exc.message,
        "last_error_at": now,
        "consecutive_failures": F("consecutive_failures") + 1,
        "lease_owner": "",
        "lease_expires_at": None,
    }
    if exc.refresh_token:
        fields["refresh_token"] = exc.refresh_token  # the provider rotated to it: the old one is spent
    if rate_limited:
        # The provider asked for fewer calls: nobody asks it again before it said (the token endpoint's backoff
        # rule holds too), and it does not count against the token (no failure count, no notification).
        del fields["consecutive_failures"]
        delay = exc.retry_after or oauth_client.RETRY_AFTER_DEFAULT
        fields.update(state=TokenState.REFRESH_FAILING, next_refresh_at=now + timedelta(seconds=delay))
    elif exc.permanent:
        fields.update(state=TokenState.REAUTHORIZATION_REQUIRED, next_refresh_at=None)
    else:
        delay = backoff_seconds(token.consecutive_failures + 1)
        fields.update(state=TokenState.REFRESH_FAILING, next_refresh_at=now + timedelta(seconds=delay))
    fields["refresh_due_at"] = fields["next_refresh_at"]
    with transaction.atomic() if audit is None else nullcontext():
        if not fence.rows().update(**fields):
            logger.info("A failed refresh of %s was superseded meanwhile; its failure is not recorded.", token.pk)
            return False
        invalidation.token_rows_changed(connection.slug)
        _audit(
            audit,
            action=Action.TOKEN_REFRESH,
            outcome=Outcome.FAILURE,
            connection=connection,
            actor_label=actor_label,
            detail=f"{_failure_kind(exc)}: {exc.message}",
        )
        if not rate_limited:
            _notify_failure(token, exc)
    return True


def _failure_kind(exc: ProviderError) -> str:
    if exc.error == oauth_client.RATE_LIMITED:
        return "Rate limited"
    return "Permanent failure" if exc.permanent else "Transient failure"


def _notify_failure(token: OAuthToken, exc: ProviderError) -> None:
    """The change into 'reauthorization required' notifies once; a transient failure when it becomes sustained."""
    connection, failures = token.connection, token.consecutive_failures + 1
    owner = f" (the token of {token.user.get_username()})" if token.user is not None else ""
    if exc.permanent and token.state != TokenState.REAUTHORIZATION_REQUIRED:
        _notify_on_commit(
            "token.reauthorization_required",
            connection,
            f"{connection} needs to be authorized again",
            f"The provider rejected the refresh of {connection}{owner}: {exc.message}\n\n"
            "Bots get no token for it until someone authorizes it again (Connect / Re-authorize).",
        )
    elif not exc.permanent and failures == settings.REFRESH_FAILURE_NOTIFY_THRESHOLD:
        _notify_on_commit(
            "token.refresh_failing",
            connection,
            f"Refreshing {connection} keeps failing",
            f"{failures} refreshes of {connection}{owner} failed in a row; the last: {exc.message}\n\n"
            "The current token is served while it is valid, and refreshing is retried with backoff. You will get "
            "a notice when it works again.",
        )


def _notify_on_commit(event: str, connection: Connection, subject: str, message: str) -> None:
    transaction.on_commit(lambda: notify_managers(event=event, connection=connection, subject=subject, message=message))
