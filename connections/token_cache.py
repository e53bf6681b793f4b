"""The token endpoint's common case from memory: no SQL and no network call in the request.

The common case is a key that was just answered asking again for the same connection while its token is still
valid. After each answer of the full path (connections.issuing), the web process keeps that answer as a Grant.
A grant is good while two counters in Redis are where they were before the full path read the database: one for
keys, users, roles, invitations and connection settings, one per connection for its tokens. Every write to those
rows moves a counter, now and again after it commits (signals below; services for their UPDATEs).

Each web process reports to Redis every TOKEN_CACHE_SYNC_SECONDS (0.05 s by default), from a thread: it learns
which counters moved, adds the requests it answered to each key's rate counter, and queues their audit events
(a Celery task moves them into the audit table: services.audit_queue_drain). So a change made in one process
reaches the others within that interval; a key's rate limit may be overshot by what the other processes
answered in it; and a process killed with SIGKILL loses the audit events of its last interval (a normal exit
reports them). A process that has not heard from Redis for ten intervals answers nothing from memory until
it has.

Anything else (a first request, refusals, refreshes, a key at its limit) is answered by the full path. Without
Redis (the embedded default) nothing is kept and every request takes the full path.
"""

import atexit
import functools
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import redis
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.cache import cache
from django.db import transaction
from django.db.models.signals import m2m_changed, post_delete, post_save
from django.dispatch import receiver
from redis.backoff import NoBackoff
from redis.lock import Lock
from redis.retry import Retry

from connections.models import BotKey, Connection, OAuthToken

logger = logging.getLogger(__name__)

STALE_INTERVALS = 10  # reports missed before a process stops answering from memory
MAX_GRANTS = 10_000  # about 2 kB each; a process that reaches this starts afresh
MAX_GRANT_AGE = timedelta(seconds=60)  # a grant is read from the database again at least this often
RATE_COUNTER_SECONDS = 120  # a minute's rate counter outlives its minute, then Redis drops it
# What a queued audit event holds, besides its time and address (AuditEvent's own field names).
AUDIT_FIELDS = ("actor_id", "actor_label", "connection_id", "connection_label", "action", "outcome", "detail")


@dataclass(frozen=True)
class Grant:
    """What answering one key for one connection needs, as the full path found it."""

    key_id: str
    digest: str
    key_expires_at: datetime | None
    last_used_at: datetime
    token_expires_at: datetime | None
    answer: Any  # issuing.IssuedToken
    audit: dict[str, Any]  # the AuditEvent fields of a successful answer, but its time and address
    counters: tuple[str, str]  # (identity, token) counters as read before the database
    stored_at: datetime


def enabled() -> bool:
    return bool(settings.REDIS_URL)


# Redis key names: the cache's own naming (prefix, version), worked out once.
@functools.cache
def _identity_counter() -> str:
    return cache.make_key("grants:identity")


@functools.lru_cache(maxsize=MAX_GRANTS)
def _token_counter(slug: str) -> str:
    return cache.make_key(f"grants:token:{slug}")


def rate_counter(key_id: str, window: int) -> str:
    """A bot key's request count in one minute, a cache key (the full path counts it through Django's cache)."""
    return f"token-rate:{key_id}:{window}"


@functools.cache
def audit_queue() -> str:
    return cache.make_key("audit-queue")


def redis_client(url: str) -> redis.Redis:
    # Fail fast: with Redis away the full path answers, so a request must not wait out redis-py's default
    # retries with backoff (seconds) first.
    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2, retry=Retry(NoBackoff(), 1))


class _Process:
    """What one process keeps. A forked child starts afresh: a connection, a thread and unreported events must
    not be shared with its parent."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.redis = redis_client(settings.REDIS_URL)
        self.grants: dict[tuple[str, str], Grant] = {}
        self.counters: dict[str, str] = {}  # counter key -> value at the last report
        self.reported_at = float("-inf")  # time.monotonic() of the last report Redis answered
        self.events: list[tuple[Grant, datetime, str | None]] = []  # answers not yet audited: grant, time, address
        self.unreported: dict[tuple[str, int], int] = {}  # (key id, minute) -> requests not yet reported
        self.totals: dict[tuple[str, int], int] = {}  # (key id, minute) -> the count in Redis when last reported
        self.lock = threading.Lock()  # guards the buffers; held only for moments
        self.report_lock = threading.Lock()  # one report at a time
        self.thread: threading.Thread | None = None
        self.failing = False  # the last report failed: say so once, not every interval

    def report(self) -> bool:
        """Send what was answered, learn the counters; False (and everything kept for next time) if Redis failed."""
        with self.report_lock:
            started = time.monotonic()
            with self.lock:
                events, self.events = self.events, []
                unreported, self.unreported = self.unreported, {}
            watched = [_identity_counter(), *{_token_counter(slug) for _, slug in list(self.grants)}]
            pipe = self.redis.pipeline(transaction=False)
            pipe.mget(watched)
            for (key_id, window), count in unreported.items():
                counter = cache.make_key(rate_counter(key_id, window))
                pipe.incrby(counter, count)
                pipe.expire(counter, RATE_COUNTER_SECONDS)
            if events:
                pipe.rpush(audit_queue(), *(_audit_event(*event) for event in events))
            try:
                results = pipe.execute()
            except redis.RedisError:
                with self.lock:
                    self.events[:0] = events
                    for window_key, count in unreported.items():
                        self.unreported[window_key] = self.unreported.get(window_key, 0) + count
                if not self.failing:
                    logger.warning("Redis does not answer the token cache's reports; the full path answers meanwhile.")
                self.failing = True
                return False
            if self.failing:
                logger.warning("Redis answers the token cache's reports again.")
            self.failing = False
            self.counters = {key: (value or b"0").decode() for key, value in zip(watched, results[0], strict=True)}
            current = int(time.time() // 60)
            with self.lock:
                self.totals = {
                    window_key: total for window_key, total in self.totals.items() if window_key[1] >= current
                }
                self.totals.update(zip(unreported, results[1 : 1 + 2 * len(unreported) : 2], strict=True))
            self.reported_at = started
        if events and results[-1] == len(events):
            _queue_drain_soon()  # the queue was empty: nobody has asked for a drain yet
        return True

    def report_forever(self) -> None:
        while _state is self:  # until this process state is replaced (reset)
            time.sleep(settings.TOKEN_CACHE_SYNC_SECONDS)
            try:
                self.report()
            except Exception:  # a thread that dies silently would stop the cache; log and go on
                logger.exception("The token cache's report failed.")

    def start_reporting(self) -> None:
        if self.thread is None:
            self.thread = threading.Thread(target=self.report_forever, name="token-cache-report", daemon=True)
            self.thread.start()


_state: _Process | None = None


def _process() -> _Process:
    global _state
    state = _state
    if state is None or state.pid != os.getpid():
        state = _state = _Process()
    return state


def report() -> bool:
    """Report this process's answers now (the thread does it every TOKEN_CACHE_SYNC_SECONDS)."""
    if _state is None or _state.pid != os.getpid():
        return True
    return _state.report()


@atexit.register
def _report_at_exit() -> None:
    # gunicorn workers exit normally on a restart, a scale-down or a timeout: what they answered is reported.
    if _state is not None and _state.pid == os.getpid() and (_state.events or _state.unreported):
        _state.report()


def reset() -> None:
    """Forget everything this process keeps, unreported events included (tests; a fork does it by itself)."""
    global _state
    state = _state
    if state is not None:
        with state.report_lock, state.lock:
            state.events.clear()
            state.unreported.clear()
            _state = None


def counters(slug: str) -> tuple[str, str] | None:
    """The counters a grant for `slug` depends on, read before the database; None when there is no cache."""
    if not enabled():
        return None
    try:
        identity, token = _process().redis.mget(_identity_counter(), _token_counter(slug))
    except redis.RedisError:
        return None
    return (identity or b"0").decode(), (token or b"0").decode()


def grant_remember(grant: Grant) -> None:
    state = _process()
    if len(state.grants) >= MAX_GRANTS:
        state.grants.clear()
    slug = grant.answer.connection
    # Until the next report, take the counters as this grant read them a moment ago.
    state.counters.setdefault(_identity_counter(), grant.counters[0])
    state.counters.setdefault(_token_counter(slug), grant.counters[1])
    state.grants[(grant.key_id, slug)] = grant
    state.start_reporting()


def grant_find(key_id: str, slug: str, now: datetime) -> Grant | None:
    if _state is None:
        return None
    grants = _process().grants
    grant = grants.get((key_id, slug))
    if grant is not None and now - grant.stored_at > MAX_GRANT_AGE:
        grants.pop((key_id, slug), None)
        return None
    return grant


def grant_use(grant: Grant, *, now: datetime, remote_addr: str | None) -> bool:
    """Count the request and keep it to be audited, if the grant still holds and the key is under its limit."""
    state = _process()
    stale = time.monotonic() - state.reported_at > STALE_INTERVALS * settings.TOKEN_CACHE_SYNC_SECONDS
    if stale and not state.report():
        return False
    slug = grant.answer.connection
    if (state.counters.get(_identity_counter()), state.counters.get(_token_counter(slug))) != grant.counters:
        state.grants.pop((grant.key_id, slug), None)
        return False
    limit = settings.TOKEN_RATE_LIMIT_PER_MINUTE
    with state.lock:
        if limit:
            window_key = (grant.key_id, int(now.timestamp() // 60))
            unreported = state.unreported.get(window_key, 0)
            if state.totals.get(window_key, 0) + unreported >= limit:
                return False  # the full path counts it in Redis and answers 429 if it is over
            state.unreported[window_key] = unreported + 1
        state.events.append((grant, now, remote_addr))  # made into JSON by the report, off the request's path
    return True


def _audit_event(grant: Grant, created_at: datetime, remote_addr: str | None) -> str:
    return json.dumps({**grant.audit, "created_at": created_at.isoformat(), "remote_addr": remote_addr})


def rate_unreported(key_id: str, window: int) -> int:
    """Take the requests of a key answered from memory and not yet reported: the full path adds them to its count."""
    if _state is None or _state.pid != os.getpid():
        return 0
    with _state.lock:
        return _state.unreported.pop((key_id, window), 0)


def rate_total_seen(key_id: str, window: int, total: int) -> None:
    if _state is not None and _state.pid == os.getpid():
        with _state.lock:
            _state.totals[(key_id, window)] = total


def _queue_drain_soon() -> None:
    from connections.tasks import audit_queue_drain

    try:
        # A second's delay gathers what arrives meanwhile into the same batch.
        audit_queue_drain.apply_async(countdown=1)
    except Exception:  # the broker is down: beat's periodic drain picks the events up later
        logger.warning("Could not queue the audit drain; the periodic drain will do it.", exc_info=True)


def grants_changed(*, slug: str | None = None) -> None:
    """Invalidate grants: all of them (slug None), or those of one connection's tokens."""
    if not enabled():
        return
    counter = _identity_counter() if slug is None else _token_counter(slug)
    state = _process()
    for grant_key in [grant_key for grant_key in state.grants if slug is None or grant_key[1] == slug]:
        state.grants.pop(grant_key, None)  # this process: at once
    # Other processes: when they next report. Moved now, for reads later in this transaction; and again after
    # commit, since a grant stored meanwhile may have been read from the rows as they were before this write.
    _counter_move(counter)
    transaction.on_commit(lambda: _counter_move(counter))


def _counter_move(counter: str) -> None:
    try:
        _process().redis.incr(counter)
    except redis.RedisError:
        logger.error("Redis did not answer: other processes keep their grants up to %s.", MAX_GRANT_AGE, exc_info=True)


@contextmanager
def audit_queue_lock() -> Iterator[Lock | None]:
    """One drainer at a time (None: another holds it). A drainer that dies frees it within a minute; one that
    lives calls reacquire() between batches to keep it."""
    lock = _process().redis.lock(cache.make_key("audit-queue-drain"), timeout=60, blocking=False)
    acquired = lock.acquire()
    try:
        yield lock if acquired else None
    finally:
        if acquired:
            lock.release()


def audit_queue_peek(count: int) -> list[dict[str, Any]]:
    return [json.loads(item) for item in _process().redis.lrange(audit_queue(), 0, count - 1)]


def audit_queue_remove(count: int) -> None:
    # Events are only appended at the tail while the single drainer removes from the head.
    _process().redis.ltrim(audit_queue(), count, -1)


# What grants depend on. QuerySet.update sends no signal: services that update these rows call grants_changed.
@receiver([post_save, post_delete], sender=BotKey)
@receiver([post_save, post_delete], sender=Connection)
@receiver(post_delete, sender=Group)  # its invitations and memberships go with it, with no m2m signal
@receiver(m2m_changed, sender=Connection.roles.through)
@receiver(m2m_changed, sender=get_user_model().groups.through)
def _identity_changed(**kwargs: Any) -> None:
    grants_changed()


@receiver([post_save, post_delete], sender=get_user_model())
def _user_changed(update_fields: frozenset[str] | None = None, **kwargs: Any) -> None:
    if update_fields != frozenset({"last_login"}):  # a login changes nothing a grant holds
        grants_changed()


@receiver(post_save, sender=OAuthToken)
def _token_saved(instance: OAuthToken, **kwargs: Any) -> None:
    grants_changed(slug=instance.connection.slug)


@receiver(post_delete, sender=OAuthToken)
def _token_deleted(**kwargs: Any) -> None:
    grants_changed()  # its connection may be going too, so its slug may not be readable any more
