"""A worker's share of a sweep: many due tokens refreshed at once, their provider calls overlapped.

Each token still goes through the engine's lease, fence and failure classes (connections.engine.refresh); this module
takes a batch's leases together, overlaps the waiting on providers in REFRESH_CONCURRENCY threads of this
process, and keeps to good manners: at most REFRESH_PROVIDER_CONCURRENCY calls in flight to one token host. The
threads are made on first use (so a forked pool process makes its own) and kept, each with its database
connection, which close_old_connections() renews as Django does between requests (DATABASE_CONN_MAX_AGE).
"""

import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent import futures
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime
from urllib.parse import urlsplit

from django.conf import settings
from django.db import close_old_connections
from django.db import connection as db_connection

from connections.audit.events import audit_events_write
from connections.engine import lease, outcomes, refresh
from connections.engine.store import Fence
from connections.errors import ProviderError
from connections.models import OAuthToken
from connections.ops import log_context

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_pool: tuple[int, ThreadPoolExecutor] | None = None  # (the pid that made it, the pool)
_provider_slots: dict[str, threading.BoundedSemaphore] = {}
_checked = threading.local()  # the batch for which this thread last checked its database connection


def _threads() -> ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None or _pool[0] != os.getpid():
            _pool = (os.getpid(), ThreadPoolExecutor(settings.REFRESH_CONCURRENCY, thread_name_prefix="refresh"))
        return _pool[1]


@contextmanager
def _provider_slot(token_url: str) -> Iterator[None]:
    host = urlsplit(token_url).netloc.lower()
    with _lock:
        slot = _provider_slots.setdefault(host, threading.BoundedSemaphore(settings.REFRESH_PROVIDER_CONCURRENCY))
    with slot:
        yield


def tokens_refresh(pairs: Sequence[Sequence[int]], queued_at: datetime | None) -> None:
    """Refresh the (token id, generation) pairs a sweep claimed, several at once. The batch's leases are taken,
    and its audit events written, with one statement each; each token's new tokens are written as soon as its
    provider answers, together with the results that came in meanwhile (one statement: outcomes.ResultBatch), a
    failure with an UPDATE of its own (a worker killed mid-batch loses the batch's audit events, never a token). A
    token someone else holds the lease of is left to them. Nothing raises here: each outcome is recorded on its
    token (connections.engine.refresh)."""
    outcomes.unstored_results_record()  # an earlier batch's result the database would not take, said now
    claimed, owner = {token_id: generation for token_id, generation in pairs}, uuid.uuid4().hex
    wanted: list[tuple[Fence, OAuthToken]] = []
    settled: list[tuple[Fence, OAuthToken]] = []
    taken_at = time.monotonic()  # no later than the leases' own clock starts
    for fence, token in lease.tokens_lease_take(list(claimed), owner):
        keep = refresh.token_refresh_wanted(token, generation=claimed[token.pk], queued_at=queued_at)
        (wanted if keep else settled).append((fence, token))
    lease.tokens_lease_give_back(owner, [fence.token_id for fence, _ in settled])
    audit: list[dict] = []
    results = outcomes.ResultBatch("refresh worker", audit)
    submitted = {_threads().submit(_refresh_one, fence, token, taken_at, results): fence for fence, token in wanted}
    try:
        # One wake-up of this thread when all are done, rather than one per token: the refresh threads contend
        # for the interpreter less.
        futures.wait(submitted)
    finally:
        # Stopped early (the task's time limit): the refreshes not begun give their leases back, those under way
        # end by their deadline, and every outcome written gets its audit event.
        unstarted = [fence.token_id for future, fence in submitted.items() if future.cancel()]
        futures.wait(submitted, timeout=settings.OUTBOUND_TIMEOUT + 5)
        lease.tokens_lease_give_back(owner, unstarted)
        close_old_connections()  # this thread's connection sat idle while the batch ran
        audit_events_write(audit)


def _connection_checked(batch: str) -> None:
    """This thread's database connection, renewed if it is too old or broke: once a batch, as Django does once a
    request (each check costs a round trip to the database, CONN_HEALTH_CHECKS), and before any token after an
    error, so that no provider is called whose answer could not be stored."""
    if getattr(_checked, "batch", None) != batch or db_connection.errors_occurred:
        close_old_connections()
        _checked.batch = batch


def _refresh_one(fence: Fence, token: OAuthToken, taken_at: float, results: outcomes.ResultBatch) -> None:
    _connection_checked(fence.lease_owner)
    try:
        with _provider_slot(token.connection.effective_refresh_url):
            if lease.token_lease_keep(fence, taken_at):
                refresh.token_refresh_leased(
                    fence=fence, token=token, actor_label=results.actor_label, audit=results.audit, results=results
                )
    except ProviderError as exc:
        with log_context.about_connection(token.connection.slug):
            logger.warning("Refresh of %s failed: %s", token.connection.slug, exc.message)
    except Exception:
        # One token's unexpected error (a bug, the database gone) must not cost the others their refresh; its
        # lease was given back, and the sweep claims it again once its claim runs out.
        logger.exception("The refresh of token %s failed unexpectedly.", token.pk)
