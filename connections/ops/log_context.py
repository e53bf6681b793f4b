"""What a log line is about, beyond its message: the request it belongs to and the connection it concerns, kept
in context variables (one value per thread or task) that the logging configuration's filter reads
(controlroom.logging). Set by the request-id middleware, the token endpoint, and the refresh and device paths."""

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
connection: contextvars.ContextVar[str | None] = contextvars.ContextVar("connection", default=None)


@contextmanager
def about_connection(slug: str) -> Iterator[None]:
    """Log lines written inside are about this connection."""
    reset = connection.set(slug)
    try:
        yield
    finally:
        connection.reset(reset)
