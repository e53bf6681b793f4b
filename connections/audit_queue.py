"""The queue of audit events for the token endpoint's answers from memory: the token cache appends them to a
Redis list as JSON, and connections.audit drains them into the audit table. Imports no models: it moves JSON.
"""

import functools
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery import current_app
from django.core.cache import cache
from redis.client import Pipeline
from redis.lock import Lock

from connections import redis_connection

logger = logging.getLogger(__name__)

# What a queued event holds besides its time and address: AuditEvent's own field names.
EVENT_FIELDS = ("actor_id", "actor_label", "connection_id", "connection_label", "action", "outcome", "detail")
DRAIN_TASK = "connections.tasks.audit_queue_drain"


@functools.cache
def key() -> str:
    return cache.make_key("audit-queue")


def push(pipe: Pipeline, events: list[str]) -> None:
    """Append JSON events in the caller's pipeline; its result is the list's new length."""
    pipe.rpush(key(), *events)


def drain_soon() -> None:
    """Ask a worker to drain the queue (by task name: this module sits below the tasks that use it)."""
    try:
        # A second's delay gathers what arrives meanwhile into the same batch.
        current_app.send_task(DRAIN_TASK, countdown=1)
    except Exception:  # the broker is down: beat's periodic drain picks the events up later
        logger.warning("Could not queue the audit drain; the periodic drain will do it.", exc_info=True)


@contextmanager
def drain_lock() -> Iterator[Lock | None]:
    """One drainer at a time (None: another holds it). A drainer that dies frees it within a minute; one that
    lives calls reacquire() between batches to keep it."""
    lock = redis_connection.client().lock(cache.make_key("audit-queue-drain"), timeout=60, blocking=False)
    acquired = lock.acquire()
    try:
        yield lock if acquired else None
    finally:
        if acquired:
            lock.release()


def peek(count: int) -> list[dict[str, Any]]:
    return [json.loads(item) for item in redis_connection.client().lrange(key(), 0, count - 1)]


def remove(count: int) -> None:
    # Events are only appended at the tail while the single drainer removes from the head.
    redis_connection.client().ltrim(key(), count, -1)
