"""The token endpoint's common case from memory: no SQL and no network call in the request.

The common case is a key that was just answered asking again for the same connection while its token is still
valid. After each answer of the full path (connections.issuing), the web process keeps that answer as a CachedAnswer.
A cached answer is good while two counters in Redis hold the values they held before the full path read the
database: one for keys, users, roles, invitations and connection settings, one per connection for its tokens.
Every write to those rows moves a counter, now and again after it commits (connections.signals says which
writes). A counter's values never repeat (each is random, also the first after Redis lost its data), so no
restart brings an old answer back; a move Redis missed is made again at the next report, and a process that
could not report forgets what it kept (it may have missed moves meanwhile).

Each web process reports to Redis every TOKEN_CACHE_SYNC_SECONDS (0.05 s by default), from a thread: it learns
which counters moved, adds the requests it answered to each key's rate counter, and queues their audit events
(connections.audit_queue; a Celery task moves them into the audit table). So a change made in one process
reaches the others within that interval; a key's rate limit may be overshot by what the other processes
answered in it; and a process killed with SIGKILL loses the audit events of its last interval (a normal exit
reports them). A process that has not heard from Redis for ten intervals answers nothing from memory until
it has. An answer is read from the database again at least once a minute, by the monotonic clock.

Anything else (a first request, refusals, refreshes, a key at its limit) is answered by the full path. Without
Redis (the embedded default) nothing is kept and every request takes the full path.

Pure infrastructure: it imports no models, and knows the answers it keeps only as opaque values.
"""

import atexit
import functools
import json
import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import redis
from django.conf import settings
from django.core.cache import cache
from django.db import transaction

from connections import audit_queue, redis_connection

logger = logging.getLogger(__name__)

STALE_INTERVALS = 10  # reports missed before a process stops answering from memory
MAX_ANSWERS = 10_000  # about 2 kB each; a process that reaches this starts afresh
MAX_ANSWER_AGE = 60.0  # seconds (monotonic): an answer is read from the database again at least this often
RATE_COUNTER_SECONDS = 120  # a minute's rate counter outlives its minute, then Redis drops it


@dataclass(frozen=True)
class CachedAnswer:
    """What answering one key for one connection again needs, as the full path found it."""

    key_id: str
    digest: str
    key_expires_at: datetime | None
    last_used_at: datetime
    token_expires_at: datetime | None
    answer: Any  # issuing.IssuedToken
    audit: dict[str, Any]  # audit_queue.EVENT_FIELDS of a successful answer
    counters: tuple[str, str]  # (identity, token) counters as read before the database
    stored_at: float = field(default_factory=time.monotonic)


enabled = redis_connection.enabled


# Redis key names: the cache's own naming (prefix, version), worked out once.
@functools.cache
def _identity_counter() -> str:
    return cache.make_key("grants:identity")


@functools.lru_cache(maxsize=MAX_ANSWERS)
def _token_counter(slug: str) -> str:
    return cache.make_key(f"grants:token:{slug}")


def _new_counter_value() -> str:
    return secrets.token_hex(8)


def _counter_values(client: redis.Redis, keys: list[str], values: list[bytes | None]) -> list[str]:
    """The counters' values as read; one that Redis does not hold (it restarted without its data) is given a new
    value first, so that it never equals what an answer cached before the restart holds."""
    missing = [key for key, value in zip(keys, values, strict=True) if value is None]
    if missing:
        pipe = client.pipeline(transaction=False)
        for key in missing:
            pipe.set(key, _new_counter_value(), nx=True)  # whoever comes first sets it; everyone reads that
        pipe.mget(missing)
        values = list(values)
        filled = dict(zip(missing, pipe.execute()[-1], strict=True))
        values = [filled.get(key, value) for key, value in zip(keys, values, strict=True)]
    return [value.decode() for value in values]


def rate_counter(key_id: str, window: int) -> str:
    """A bot key's request count in one minute, a cache key (the full path counts it through Django's cache)."""
    return f"token-rate:{key_id}:{window}"


class _Process:
    """What one process keeps. A forked child starts afresh: a connection, a thread and unreported events must
    not be shared with its parent."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.redis = redis_connection.client()
        self.answers: dict[tuple[str, str], CachedAnswer] = {}
        self.counters: dict[str, str] = {}  # counter key -> value at the last report
        self.reported_at = float("-inf")  # time.monotonic() of the last report Redis answered
        self.events: list[tuple[CachedAnswer, datetime, str | None]] = []  # not yet audited: answer, time, address
        self.unreported: dict[tuple[str, int], int] = {}  # (key id, minute) -> requests not yet reported
        self.totals: dict[tuple[str, int], int] = {}  # (key id, minute) -> the count in Redis when last reported
        self.moves: set[str] = set()  # counters a write could not move: moved again at the next report
        self.lock = threading.Lock()  # guards the answers and the buffers; held only for moments
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
                moves, self.moves = self.moves, set()
                watched = [_identity_counter(), *{_token_counter(slug) for _, slug in self.answers}]
            pipe = self.redis.pipeline(transaction=False)
            for counter in moves:
                pipe.set(counter, _new_counter_value())
            pipe.mget(watched)
            for (key_id, window), count in unreported.items():
                counter = cache.make_key(rate_counter(key_id, window))
                pipe.incrby(counter, count)
                pipe.expire(counter, RATE_COUNTER_SECONDS)
            if events:
                audit_queue.push(pipe, [_audit_event(*event) for event in events])
            try:
                results = pipe.execute()
            except redis.RedisError:
                with self.lock:
                    self.moves |= moves
                    self.events[:0] = events
                    for window_key, count in unreported.items():
                        self.unreported[window_key] = self.unreported.get(window_key, 0) + count
                if not self.failing:
                    logger.warning("Redis does not answer the token cache's reports; the full path answers meanwhile.")
                self.failing = True
                return False
            results = results[len(moves) :]
            try:
                values = _counter_values(self.redis, watched, results[0])
            except redis.RedisError:
                values = [value.decode() if value else "" for value in results[0]]  # "": never a cached value
            self.counters = dict(zip(watched, values, strict=True))
            current = int(time.time() // 60)
            with self.lock:
                if self.failing:
                    # Writes may have failed to move counters meanwhile, in processes that are gone since.
                    logger.warning("Redis answers the token cache's reports again; cached answers are read afresh.")
                    self.answers.clear()
                self.totals = {
                    window_key: total for window_key, total in self.totals.items() if window_key[1] >= current
                }
                self.totals.update(zip(unreported, results[1 : 1 + 2 * len(unreported) : 2], strict=True))
            self.failing = False
            self.reported_at = started
        if events and results[-1] == len(events):
            audit_queue.drain_soon()  # the queue was empty: nobody has asked for a drain yet
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
    if _state is not None and _state.pid == os.getpid() and (_state.events or _state.unreported or _state.moves):
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
    """The counters an answer for `slug` depends on, read before the database; None when there is no cache."""
    if not enabled():
        return None
    client, keys = _process().redis, [_identity_counter(), _token_counter(slug)]
    try:
        identity, token = _counter_values(client, keys, client.mget(keys))
    except redis.RedisError:
        return None
    return identity, token


def remember(cached: CachedAnswer) -> None:
    state = _process()
    slug = cached.answer.connection
    with state.lock:
        if len(state.answers) >= MAX_ANSWERS:
            state.answers.clear()
        # Until the next report, take the counters as this answer read them a moment ago.
        state.counters.setdefault(_identity_counter(), cached.counters[0])
        state.counters.setdefault(_token_counter(slug), cached.counters[1])
        state.answers[(cached.key_id, slug)] = cached
    state.start_reporting()


def find(key_id: str, slug: str) -> CachedAnswer | None:
    if _state is None:
        return None
    state = _process()
    with state.lock:
        cached = state.answers.get((key_id, slug))
        if cached is not None and time.monotonic() - cached.stored_at > MAX_ANSWER_AGE:
            state.answers.pop((key_id, slug), None)
            return None
    return cached


def use(cached: CachedAnswer, *, now: datetime, remote_addr: str | None) -> bool:
    """Count the request and keep it to be audited, if the answer still holds and the key is under its limit."""
    state = _process()
    stale = time.monotonic() - state.reported_at > STALE_INTERVALS * settings.TOKEN_CACHE_SYNC_SECONDS
    if stale and not state.report():
        return False
    slug = cached.answer.connection
    limit = settings.TOKEN_RATE_LIMIT_PER_MINUTE
    with state.lock:
        if (state.counters.get(_identity_counter()), state.counters.get(_token_counter(slug))) != cached.counters:
            state.answers.pop((cached.key_id, slug), None)
            return False
        if limit:
            window_key = (cached.key_id, int(now.timestamp() // 60))
            unreported = state.unreported.get(window_key, 0)
            if state.totals.get(window_key, 0) + unreported >= limit:
                return False  # the full path counts it in Redis and answers 429 if it is over
            state.unreported[window_key] = unreported + 1
        state.events.append((cached, now, remote_addr))  # made into JSON by the report, off the request's path
    return True


def _audit_event(cached: CachedAnswer, created_at: datetime, remote_addr: str | None) -> str:
    return json.dumps({**cached.audit, "created_at": created_at.isoformat(), "remote_addr": remote_addr})


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


def invalidate(*, slug: str | None = None) -> None:
    """Forget cached answers: all of them (slug None), or those of one connection's tokens."""
    if not enabled():
        return
    counter = _identity_counter() if slug is None else _token_counter(slug)
    state = _process()
    with state.lock:  # other threads of this process add and drop answers meanwhile
        for answer_key in [answer_key for answer_key in state.answers if slug is None or answer_key[1] == slug]:
            del state.answers[answer_key]  # this process: at once
    # Other processes: when they next report. Moved now, for reads later in this transaction; and again after
    # commit, since an answer cached meanwhile may have been read from the rows as they were before this write
    # (outside a transaction the write is committed already: once does).
    _counter_move(counter)
    if transaction.get_connection().in_atomic_block:
        transaction.on_commit(lambda: _counter_move(counter))


def _counter_move(counter: str) -> None:
    state = _process()
    try:
        state.redis.set(counter, _new_counter_value())
    except redis.RedisError:
        logger.error("Redis did not answer; the cached answers' counter is moved at the next report.", exc_info=True)
        with state.lock:
            state.moves.add(counter)
        state.start_reporting()
