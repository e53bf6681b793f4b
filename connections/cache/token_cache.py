"""The token endpoint's common case from memory: no SQL and no network call in the request.

The common case is a key that was just answered asking again for the same connection while its token is still
valid. After each answer of the full path (connections.endpoint.issuing), the web process keeps that answer as a
CachedAnswer, with the versions it was read at: the identity version (models.AnswerVersion), read in the same
statement as the rows it guards (connections.endpoint.read), and the generation and state of the token row
it gave. Every write that could change an answer moves one of them in its own transaction: a write to keys,
users, roles, invitations or connection settings moves the identity version (connections.cache.invalidation); every new
token moves its row's generation, every failure its state, and a disconnect both (then deletes the row). So a
cached answer is good while its versions are still the database's; nothing outside the database (a Redis
restart) can bring an old answer back.

Each web process learns what changed every TOKEN_CACHE_SYNC_SECONDS (0.05 s by default), from a thread, with one
SELECT (connections.cache.change_log): the identity version; the rows database triggers appended to the token
change log (models.TokenChange) past this process's position, in the writer's own transaction, for every token
row whose answer may change (a new access token, generation or state; a deletion), whatever wrote it; and the
versions of the tokens of answers kept since the last report. Its cost follows the changes and the new answers,
not the answers held. A token the log names loses its answers; a number the log skipped (a writer not committed
yet) is read again until it appears or PostgreSQL says its writer rolled back; a process starting, or whose
position the log's pruning passed, reads the versions of every token it holds an answer of until the log alone
can be trusted (change_log says when), as it did before the log. The same report writes the audit events
of the requests it answered, from memory or by the full path, with one statement, and adds the requests it
counted itself to each key's rate counter (Django's cache). So a change made in one process reaches the others
within that interval; a key's rate limit may be overshot by what the other processes answered in it; and a
process killed with SIGKILL loses the audit events it had not written yet (a normal exit reports them): those of
its last interval, and never more than MAX_UNWRITTEN_EVENTS even while the database fails its reports, for past
that bound each request writes its own event before it is answered. An answer
whose versions nobody has read for ten intervals (the database did not answer) is not given until they have
been. An answer is read from the database again at least once a minute, by the monotonic clock. A process holds
at most MAX_ANSWERS answers: past that, the one used longest ago goes (connections.cache.answers).

Anything else (a first request, refusals, refreshes, a key at its limit) is answered by the full path. The
embedded SQLite default and PostgreSQL work alike: Redis plays no part (but for the rate counters, when it is
Django's cache).
"""

import atexit
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import DatabaseError, close_old_connections, connection, transaction
from django.db.models import F

from connections.audit.rows import audit_rows_insert, rollups_forget
from connections.cache import change_log
from connections.cache.answers import AnswerKey, AnswerStore, TokenVersion, answer_key
from connections.cache.change_log import LogPosition, ReportRead
from connections.models import AnswerVersion
from connections.ops import metrics

logger = logging.getLogger(__name__)

STALE_INTERVALS = 10  # intervals without a report before a process checks on the request itself
MAX_ANSWERS = 10_000  # about 2 kB each; past this, the answer used longest ago is dropped
# The most audit events of answers a process holds unwritten: while its reports fail (the database is down), past
# this many a request waits for its own report instead (an answer from memory is then not given), so a process
# killed with SIGKILL loses at most this many, and never holds more.
MAX_UNWRITTEN_EVENTS = 1_000
MAX_ANSWER_AGE = 60.0  # seconds (monotonic): an answer is read from the database again at least this often
RATE_COUNTER_SECONDS = 120  # a minute's rate counter outlives its minute, then the cache drops it
clock = time.monotonic  # what answer and report ages are measured by (a test gives its own clock)


@dataclass(frozen=True)
class CachedAnswer:
    """What answering one key for one connection again needs, as the full path found it."""

    key_id: str
    digest: str = field(repr=False)
    key_expires_at: datetime | None
    last_used_at: datetime
    token_expires_at: datetime | None
    answer: Any = field(repr=False)  # issuing.IssuedToken
    audit: dict[str, Any]  # connections.audit.rows.EVENT_FIELDS and kind of an answer from memory
    identity: int  # the identity version, read with the rows the answer came from
    read_at: float  # clock() no later than that read
    token_id: int
    token_version: TokenVersion
    stored_at: float = field(default_factory=lambda: clock())
    for_proxy: bool = False  # what the API proxy calls with (connections.endpoint.proxy), not a token answer

    @property
    def answer_key(self) -> AnswerKey:
        return answer_key(self.key_id, self.answer.connection, self.for_proxy)


def identity_changed() -> None:
    """Keys, users, roles, invitations or connection settings changed: every cached answer may be wrong. Moved
    in the writer's transaction, so it is committed with the change or not at all."""
    _forget(slug=None)
    versions = AnswerVersion.objects.filter(name=AnswerVersion.IDENTITY)
    if not versions.update(value=F("value") + 1):
        # The row is missing (a database flushed by tests): a version read as 0 must move all the same.
        with transaction.atomic():
            _, created = AnswerVersion.objects.get_or_create(name=AnswerVersion.IDENTITY, defaults={"value": 1})
        if not created:
            versions.update(value=F("value") + 1)


def token_changed(slug: str) -> None:
    """A token of this connection changed: this process forgets its answers at once. Other processes learn it
    from the row itself (its generation, its state, or its absence) at their next report."""
    _forget(slug=slug)


def forget_all() -> None:
    """This process's answers, all of them: the others learn what changed from the database."""
    _forget(slug=None)


def rate_counter(key_id: str, window: int) -> str:
    """A bot key's request count in one minute, a cache key."""
    return f"token-rate:{key_id}:{window}"


def rate_count(key_id: str, window: int, requests: int) -> int:
    """Add requests to a key's count for one minute (Django's cache: Redis when configured); the new count."""
    counter = rate_counter(key_id, window)
    try:
        return cache.incr(counter, requests)  # the common case: the window's counter exists
    except ValueError:
        cache.add(counter, 0, timeout=RATE_COUNTER_SECONDS)  # a no-op if another process won
        return cache.incr(counter, requests)


# The identity version, these tokens' versions and what the log holds past a position, with one SELECT.
_versions_read = change_log.report_read  # a test gives a database that refuses


class _Process(AnswerStore):
    """What one process keeps: its answers (AnswerStore), its position in the change log, its unreported events.
    A forked child starts afresh: a thread and unreported events must not be shared with its parent."""

    def __init__(self) -> None:
        super().__init__()
        self.pid = os.getpid()
        self.identity = -1  # the identity version as last read (-1: never)
        self.log = LogPosition()
        self.log_enabled: bool | None = None  # the change log's triggers exist (None: not checked yet)
        self.reported_at = float("-inf")  # clock() when the versions were last read
        self.events: list[tuple[dict, datetime, str | None]] = []  # not yet written: EVENT_FIELDS, time, address
        self.unreported: dict[tuple[str, int], int] = {}  # (key id, minute) -> requests not yet counted
        self.totals: dict[tuple[str, int], int] = {}  # (key id, minute) -> the count when last reported
        self.lock = threading.Lock()  # guards the answers and the buffers; held only for moments
        self.report_lock = threading.Lock()  # one report at a time
        self.thread: threading.Thread | None = None
        self.closed = False  # the process is exiting: its last report is made at exit, not by the thread
        self.failing = False  # the last report failed: say so once, not every interval

    def report(self) -> bool:
        """Learn what changed, write the audit events, count the requests; False if the database failed (what
        could not be written is kept for next time)."""
        with self.report_lock:
            if self.closed and threading.current_thread() is self.thread:
                return True
            started = clock()
            if self.log_enabled is None and not self._log_check():
                return False
            with self.lock:
                events, self.events = self.events, []
                unreported, self.unreported = self.unreported, {}
                # Until the log alone can be trusted (a start), the versions of every token held, as before it.
                watched = self.pending if self.log.settled else self.pending | set(self.by_token)
                self.pending = set()
                wanted = self.log.wanted() if self.log_enabled else None
            try:
                read = _versions_read(watched, wanted)
                audit_rows_insert([_audit_row(*event) for event in events])
            except DatabaseError:
                with self.lock:
                    self.pending |= watched
                self._keep(events, unreported)
                self._failed("The database does not answer the token cache's reports; the full path answers.")
                return False
            with self.lock:
                self._learn(read, watched, started)
            if self.failing:
                logger.warning("The token cache's reports reach the database again.")
            self.failing = False
            self._count(unreported)
            metrics.AUDIT_EVENTS_QUEUED.set(len(self.events))
        return True

    def _log_check(self) -> bool:
        """Whether the change log's triggers exist, once per process; False if the database failed."""
        try:
            self.log_enabled = change_log.triggers_present()
        except DatabaseError:
            self._failed("The database does not answer the token cache's reports; the full path answers.")
            return False
        if not self.log_enabled:
            logger.error("The token change log's triggers are missing: each report reads every version it depends on.")
        return True

    def _learn(self, read: ReportRead, watched: set[int], started: float) -> None:
        """Take in one report's read (the lock held)."""
        self.identity = max(self.identity, read.identity)  # an answer stored meanwhile may have read a newer one
        changed: set[int] = set()
        if read.log is not None:
            changed, afresh = self.log.advance(read.log, started)
            if afresh:
                logger.warning("The token cache may have missed a change in the log: it starts afresh.")
                self.forget(slug=None)
                self.log, self.pending, self.read_after = LogPosition(), set(), clock()
                return
        self.changes_note(changed, clock())  # after the read: no later than any answer it could make stale
        for token_id in changed | (watched - read.tokens.keys()):  # changed, or deleted
            self.token_forget(token_id)
        self.versions_take(read.tokens)
        self.reported_at = started

    def _count(self, unreported: dict[tuple[str, int], int]) -> None:
        current, counted, left = int(time.time() // 60), {}, {}
        for window_key, requests in unreported.items():
            try:
                counted[window_key] = rate_count(*window_key, requests)
            except Exception:  # the cache's own errors (Redis, files) vary by backend; counted at the next report
                logger.warning("Could not add requests to a key's rate counter.", exc_info=True)
                left[window_key] = requests
        self._keep([], left)
        with self.lock:
            self.totals = {window_key: total for window_key, total in self.totals.items() if window_key[1] >= current}
            self.totals.update(counted)

    def _keep(self, events: list, unreported: dict[tuple[str, int], int]) -> None:
        with self.lock:
            self.events[:0] = events
            for window_key, requests in unreported.items():
                self.unreported[window_key] = self.unreported.get(window_key, 0) + requests

    def _failed(self, message: str) -> None:
        if not connection.in_atomic_block:  # never a request's (or a test's) transaction
            close_old_connections()  # a connection the error broke is opened afresh next time
        if not self.failing:
            logger.warning(message, exc_info=True)
        self.failing = True

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
    # After a report the thread has under way (the thread itself is stopped with the interpreter, mid-write
    # perhaps: so it makes none after this).
    state = _state
    if state is not None and state.pid == os.getpid():
        state.closed = True
        state.report()


def reset() -> None:
    """Forget everything this process keeps, unreported events included (tests; a fork does it by itself)."""
    global _state
    state = _state
    if state is not None:
        with state.report_lock, state.lock:
            state.events.clear()
            state.unreported.clear()
            _state = None
    rollups_forget()


def _forget(*, slug: str | None) -> None:
    """This process's answers: all of them (slug None), or those of one connection."""
    if _state is None or _state.pid != os.getpid():
        return
    with _state.lock:  # other threads of this process add and drop answers meanwhile
        _state.forget(slug=slug)


def remember(cached: CachedAnswer) -> None:
    state = _process()
    with state.lock:
        # Until the next report reads them, take the versions as this answer read them a moment ago, if they are
        # newer: the identity version only grows, and so does a token's generation.
        state.identity = max(state.identity, cached.identity)
        state.keep(cached, limit=MAX_ANSWERS, now=clock())
    state.start_reporting()


def find(key_id: str, slug: str, *, for_proxy: bool = False) -> CachedAnswer | None:
    if _state is None:
        return None
    state = _process()
    with state.lock:
        cached = state.answers.get(answer_key(key_id, slug, for_proxy))
        if cached is None:
            return None
        if clock() - cached.stored_at > MAX_ANSWER_AGE:
            state.drop(cached.answer_key)
            return None
        state.hit(cached.answer_key)
    return cached


def use(cached: CachedAnswer, *, now: datetime, remote_addr: str | None) -> bool:
    """Count the request and keep it to be audited, if the answer still holds and the key is under its limit (an
    answer for the API proxy is audited once its call is over, by the proxy)."""
    state = _process()
    heard = max(state.reported_at, cached.read_at)
    if clock() - heard > STALE_INTERVALS * settings.TOKEN_CACHE_SYNC_SECONDS and not state.report():
        return False
    if len(state.events) >= MAX_UNWRITTEN_EVENTS and not state.report():
        return False  # the full path answers, and writes its own event before answering
    limit = settings.TOKEN_RATE_LIMIT_PER_MINUTE
    with state.lock:
        if state.identity != cached.identity or state.tokens.get(cached.token_id) != cached.token_version:
            state.drop(cached.answer_key)
            return False
        if limit:
            window_key = (cached.key_id, int(now.timestamp() // 60))
            unreported = state.unreported.get(window_key, 0)
            if state.totals.get(window_key, 0) + unreported >= limit:
                return False  # the full path counts it and answers 429 if it is over
            state.unreported[window_key] = unreported + 1
        if not cached.for_proxy:
            state.events.append((cached.audit, now, remote_addr))  # made into a row by the report
    return True


def audit_later(event: dict[str, Any], created_at: datetime, remote_addr: str | None) -> None:
    """Have the next report write this audit event (audit_rows.EVENT_FIELDS) with the others: a successful answer
    of the full path is written as those from memory are, off the request's path."""
    state = _process()
    if len(state.events) >= MAX_UNWRITTEN_EVENTS and not state.report():
        # The reports fail: this event is written now, in the request, rather than held beyond the bound.
        audit_rows_insert([_audit_row(event, created_at, remote_addr)])
        return
    with state.lock:
        state.events.append((event, created_at, remote_addr))
    state.start_reporting()


def _audit_row(event: dict[str, Any], created_at: datetime, remote_addr: str | None) -> dict[str, Any]:
    return {**event, "created_at": created_at, "remote_addr": remote_addr}


def rate_take(key_id: str, window: int, limit: int) -> bool:
    """Count one request of the full path in this process, if the key is under its limit as far as this process
    knows (the count at the last report, and what it answered since): the report adds it to the shared counter,
    as it does for answers from memory. False: it may be at its limit, and only the shared counter can say."""
    state = _process()
    with state.lock:
        unreported = state.unreported.get((key_id, window), 0)
        if state.totals.get((key_id, window), 0) + unreported + 1 > limit:
            return False
        state.unreported[(key_id, window)] = unreported + 1
    state.start_reporting()
    return True


def rate_unreported(key_id: str, window: int) -> int:
    """Take the requests of a key answered from memory and not yet counted: the full path adds them to its count."""
    if _state is None or _state.pid != os.getpid():
        return 0
    with _state.lock:
        return _state.unreported.pop((key_id, window), 0)


def rate_total_seen(key_id: str, window: int, total: int) -> None:
    state = _process()
    with state.lock:
        state.totals[(key_id, window)] = total
