"""The Redis client of this process, shared by the token cache and the audit queue (the scaled-out deployment)."""

import functools
import os

import redis
from django.conf import settings
from redis.backoff import NoBackoff
from redis.retry import Retry


def enabled() -> bool:
    return bool(settings.REDIS_URL)


def client() -> redis.Redis:
    """This process's client for REDIS_URL; a forked child gets its own, as a connection must not be shared."""
    return _client_of(os.getpid(), settings.REDIS_URL)


def connect(url: str) -> redis.Redis:
    # Fail fast: with Redis away the database answers instead, so a request must not wait out redis-py's
    # default retries with backoff (seconds) first.
    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2, retry=Retry(NoBackoff(), 1))


@functools.cache
def _client_of(pid: int, url: str) -> redis.Redis:
    return connect(url)
