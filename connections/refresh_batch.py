"""A worker's share of a sweep: many due tokens refreshed at once, their provider calls overlapped.

Each token still goes through connections.refresh.token_refresh_queued (lease, fence, failure classes); this
module only overlaps the waiting on providers, in REFRESH_CONCURRENCY threads of this process, and keeps to good
manners: at most REFRESH_PROVIDER_CONCURRENCY calls in flight to one token host. The threads are made on first
use (so a forked pool process makes its own) and kept, each with its database connection, which
close_old_connections() renews as Django does between requests (DATABASE_CONN_MAX_AGE).
"""

import logging
import os
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime
from urllib.parse import urlsplit

from django.conf import settings
from django.db import close_old_connections

from connections import refresh
from connections.models import OAuthToken

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_pool: tuple[int, ThreadPoolExecutor] | None = None  # (the pid that made it, the pool)
_provider_slots: dict[str, threading.BoundedSemaphore] = {}


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
    """Refresh the (token id, generation) pairs a sweep claimed, several at once. Each token's outcome is
    recorded on it (connections.refresh); none of them raises here."""
    rows = {token.pk: token for token in refresh.token_rows().filter(pk__in=[token_id for token_id, _ in pairs])}
    work = [(rows[token_id], generation) for token_id, generation in pairs if token_id in rows]
    futures = [_threads().submit(_refresh_one, token, generation, queued_at) for token, generation in work]
    for future in futures:
        future.result()


def _refresh_one(token: OAuthToken, generation: int, queued_at: datetime | None) -> None:
    close_old_connections()  # this thread's connection, if it broke or is too old
    try:
        with _provider_slot(token.connection.effective_token_url):
            refresh.token_refresh_queued(token=token, generation=generation, queued_at=queued_at)
    except Exception:
        # One token's unexpected error (a bug, the database gone) must not cost the others their refresh; the
        # sweep claims this one again once its claim runs out.
        logger.exception("The refresh of token %s failed unexpectedly.", token.pk)
