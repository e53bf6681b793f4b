"""The token endpoint's common case from memory: no SQL, one Redis round trip.

The common case is a key that was just answered asking again for the same connection while its token is still
valid. After each answer of the full path (connections.issuing), the web process keeps that answer as a Grant.
A grant is good while two counters in Redis are where they were before the full path read the database: one for
keys, users, roles, invitations and connection settings, one per connection for its tokens. Every write to those
rows moves a counter, now and again after it commits (signals below; services for their UPDATEs), so the next
request after a revocation or a refresh sees it.

Serving a grant runs one Lua script, atomically: check both counters, count the request for the key's rate limit
and queue the audit event. A Celery task moves queued events into the audit table (services.audit_queue_drain).
Anything the script refuses, and everything else, is answered by the full path. Without Redis (the embedded
default) there is no cache and every request takes the full path.
"""

import functools
import hashlib
import json
import logging
import os
import threading
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
from redis.exceptions import NoScriptError
from redis.lock import Lock

from connections.models import BotKey, Connection, OAuthToken

logger = logging.getLogger(__name__)

MAX_GRANTS = 10_000  # about 2 kB each; a process that reaches this starts afresh
# A counter move lost while Redis was unreachable is healed after this long, whatever happens.
MAX_GRANT_AGE = timedelta(seconds=60)

# KEYS: identity counter, the connection's token counter, the key's rate counter of this minute, audit queue.
# ARGV: the two counters as the grant saw them, the rate limit (0: none), the audit event (JSON).
# Returns -1 if a counter moved, -2 if the key reached its limit (both: nothing counted, nothing queued),
# else the queue's length.
USE_GRANT_SCRIPT = """
local seen = redis.call('MGET', KEYS[1], KEYS[2])
if (seen[1] or '0') ~= ARGV[1] or (seen[2] or '0') ~= ARGV[2] then return -1 end
local limit = tonumber(ARGV[3])
if limit > 0 then
  local count = redis.call('INCR', KEYS[3])
  if count == 1 then redis.call('EXPIRE', KEYS[3], 120) end
  if count > limit then
    redis.call('DECR', KEYS[3])
    return -2
  end
end
return redis.call('RPUSH', KEYS[4], ARGV[4])
"""
# EVALSHA sends 40 characters instead of the script; EVAL, once, puts the script into Redis's cache.
USE_GRANT_SHA = hashlib.sha1(USE_GRANT_SCRIPT.encode()).hexdigest()  # noqa: S324 - Redis names scripts so
COUNTER_MOVED = -1
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
    audit: dict[str, Any]  # the AuditEvent fields of a successful answer, but its time
    counters: tuple[str, str]
    stored_at: datetime


_grants: dict[tuple[str, str], Grant] = {}
_clients: dict[int, redis.Redis] = {}  # by process id: a connection must not be shared across a fork
_hot_lock = threading.Lock()


def enabled() -> bool:
    return bool(settings.REDIS_URL)


def _redis() -> redis.Redis:
    client = _clients.get(os.getpid())
    if client is None:
        client = redis.Redis.from_url(
            settings.REDIS_URL, single_connection_client=True, socket_timeout=2, socket_connect_timeout=2
        )
        _clients.clear()
        _clients[os.getpid()] = client
    return client


def _hot_command(*args: Any) -> Any:
    """One command on this process's connection, for the endpoint's hot path. redis-py's execute_command spends
    more on its bookkeeping (pool, retries, command inspection) than the round trip costs."""
    connection = _redis().connection
    with _hot_lock:
        try:
            connection.send_command(*args)
            return connection.read_response()
        except (redis.ConnectionError, redis.TimeoutError):
            connection.disconnect()  # the next command connects again
            raise


# Redis key names: the cache's own naming (prefix, version), worked out once, as the hot path needs them each time.
@functools.cache
def _identity_counter() -> str:
    return cache.make_key("grants:identity")


@functools.lru_cache(maxsize=MAX_GRANTS)
def _token_counter(slug: str) -> str:
    return cache.make_key(f"grants:token:{slug}")


@functools.lru_cache(maxsize=MAX_GRANTS)
def _rate_counter(key_id: str, window: int) -> str:
    return cache.make_key(rate_counter(key_id, window))


def rate_counter(key_id: str, window: int) -> str:
    """A bot key's request count in one minute, a cache key (the full path counts it through Django's cache)."""
    return f"token-rate:{key_id}:{window}"


@functools.cache
def audit_queue() -> str:
    return cache.make_key("audit-queue")


def counters(slug: str) -> tuple[str, str] | None:
    """The counters a grant for `slug` depends on, read before the database; None when there is no cache."""
    if not enabled():
        return None
    try:
        identity, token = _redis().mget(_identity_counter(), _token_counter(slug))
    except redis.RedisError:
        return None
    return (identity or b"0").decode(), (token or b"0").decode()


def grant_remember(grant: Grant) -> None:
    if len(_grants) >= MAX_GRANTS:
        _grants.clear()
    _grants[(grant.key_id, grant.answer.connection)] = grant


def grant_find(key_id: str, slug: str, now: datetime) -> Grant | None:
    grant = _grants.get((key_id, slug))
    if grant is not None and now - grant.stored_at > MAX_GRANT_AGE:
        del _grants[(key_id, slug)]
        return None
    return grant


def grant_use(grant: Grant, *, window: int, event: dict[str, Any]) -> bool:
    """Count the request and queue its audit event if the grant still holds and the key is under its limit."""
    try:
        keys = (
            _identity_counter(),
            _token_counter(grant.answer.connection),
            _rate_counter(grant.key_id, window),
            audit_queue(),
        )
        arguments = (*grant.counters, settings.TOKEN_RATE_LIMIT_PER_MINUTE, json.dumps(event))
        try:
            result = _hot_command("EVALSHA", USE_GRANT_SHA, len(keys), *keys, *arguments)
        except NoScriptError:  # first use on this Redis, or it restarted
            result = _hot_command("EVAL", USE_GRANT_SCRIPT, len(keys), *keys, *arguments)
    except redis.RedisError:
        logger.warning("Redis did not answer the token cache; the full path answers instead.", exc_info=True)
        return False
    if result == COUNTER_MOVED:
        _grants.pop((grant.key_id, grant.answer.connection), None)
    if result == 1:
        _queue_drain_soon()  # the queue was empty: nobody has asked for a drain yet
    return result > 0


def _queue_drain_soon() -> None:
    from connections.tasks import audit_queue_drain

    try:
        # A second's delay gathers what arrives meanwhile into the same batch.
        audit_queue_drain.apply_async(countdown=1)
    except Exception:  # the broker is down: beat's periodic drain picks the events up later
        logger.warning("Could not queue the audit drain; the periodic drain will do it.", exc_info=True)


def grants_changed(*, slug: str | None = None) -> None:
    """Invalidate the grants of every process: all of them (slug None), or those of one connection's tokens."""
    if not enabled():
        return
    counter = _identity_counter() if slug is None else _token_counter(slug)
    # Now, for reads later in this transaction; and after commit, since a grant stored meanwhile may have been
    # read from the rows as they were before this write.
    _counter_move(counter)
    transaction.on_commit(lambda: _counter_move(counter))


def _counter_move(counter: str) -> None:
    try:
        _redis().incr(counter)
    except redis.RedisError:
        logger.error("Redis did not answer: grants are stale until they expire (%s).", MAX_GRANT_AGE, exc_info=True)


@contextmanager
def audit_queue_lock() -> Iterator[Lock | None]:
    """One drainer at a time (None: another holds it). A drainer that dies frees it within a minute; one that
    lives calls reacquire() between batches to keep it."""
    lock = _redis().lock(cache.make_key("audit-queue-drain"), timeout=60, blocking=False)
    acquired = lock.acquire()
    try:
        yield lock if acquired else None
    finally:
        if acquired:
            lock.release()


def audit_queue_peek(count: int) -> list[dict[str, Any]]:
    return [json.loads(item) for item in _redis().lrange(audit_queue(), 0, count - 1)]


def audit_queue_remove(count: int) -> None:
    # Events are only appended at the tail while the single drainer removes from the head.
    _redis().ltrim(audit_queue(), count, -1)


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
