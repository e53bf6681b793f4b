"""What can go wrong when asking Control Room for a token: one exception class per error code of the token
endpoint (connections/openapi.yaml in the Control Room repository), and three for what happens on the way.

Every exception carries `status` (the HTTP status, None when there was no answer), `code` (the endpoint's
`error`), `detail` (its sentence for a person) and `retry_after` (seconds from the `Retry-After` header, None
when absent). None of them ever holds the bot key.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

import requests


class ControlRoomError(Exception):
    """Any failure to get a token; also what an error code this client does not know yet becomes."""

    code: str | None = None
    exit_code = 1  # of the controlroom-token command

    def __init__(
        self, detail: str, *, status: int | None = None, code: str | None = None, retry_after: int | None = None
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status
        self.code = code if code is not None else type(self).code
        self.retry_after = retry_after

    def __str__(self) -> str:
        where = f" (HTTP {self.status})" if self.status is not None else ""
        retry = f" Retry after {self.retry_after} s." if self.retry_after is not None else ""
        return f"{self.code or 'error'}{where}: {self.detail}{retry}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status!r}, code={self.code!r}, detail={self.detail!r})"


class TemporaryError(ControlRoomError):
    """Asking again later may work: refresh backoff, rate limit, provider or Control Room unreachable."""


# --- The token endpoint's error codes ----------------------------------------------------------------------


class BadRequest(ControlRoomError):
    """400: min_validity or force_refresh is not a value the endpoint takes."""

    code = "bad_request"
    exit_code = 10


class InvalidKey(ControlRoomError):
    """401: no bot key, or an unknown, revoked or expired one, or its user is deactivated."""

    code = "invalid_key"
    exit_code = 11


class Forbidden(ControlRoomError):
    """403: the key is valid, but no role of its user is invited to the connection, or it is disabled."""

    code = "forbidden"
    exit_code = 12


class NotFound(ControlRoomError):
    """404: no connection has this slug."""

    code = "not_found"
    exit_code = 13


class NotConnected(ControlRoomError):
    """409: nobody (for a user-specific connection: not the key's user) has authorized the connection yet."""

    code = "not_connected"
    exit_code = 14


class ReauthorizationRequired(ControlRoomError):
    """409: the provider rejected the refresh token or the client; someone must authorize again."""

    code = "reauthorization_required"
    exit_code = 15


class RefreshBackoff(TemporaryError):
    """424: recent refreshes failed and the token has expired; `retry_after` says when to ask again."""

    code = "refresh_backoff"
    exit_code = 20


class RateLimited(TemporaryError):
    """429: this key asked too often this minute (or this address presented wrong keys too often)."""

    code = "rate_limited"
    exit_code = 21


class ProviderUnavailable(TemporaryError):
    """503: the provider failed for now and no valid token is left."""

    code = "provider_unavailable"
    exit_code = 22


class NotConfigured(ControlRoomError):
    """409 (the API proxy): the connection has no API base URL for the proxy to call."""

    code = "not_configured"
    exit_code = 23


class ApiUnreachable(TemporaryError):
    """502 (the API proxy): the API could not be reached, or the outbound policy refused its address."""

    code = "api_unreachable"
    exit_code = 24


class ApiTimeout(TemporaryError):
    """504 (the API proxy): the API did not answer in time."""

    code = "api_timeout"
    exit_code = 25


# --- On the way ----------------------------------------------------------------------------------------------


class ConfigurationError(ControlRoomError):
    """The URL or the bot key is missing or unusable (neither passed nor in the environment)."""

    code = "configuration"
    exit_code = 3


class ControlRoomUnreachable(TemporaryError):
    """No answer: connection refused, DNS, TLS or timeout."""

    code = "unreachable"
    exit_code = 4


class ControlRoomUnavailable(TemporaryError):
    """A 5xx answer without the endpoint's own error: Control Room, or a proxy before it, is failing for now (a
    deploy, a database restart)."""

    code = "unavailable"
    exit_code = 6


class InvalidResponse(ControlRoomError):
    """An answer that is not the endpoint's JSON: a proxy's error page, a redirect, a wrong URL."""

    code = "invalid_response"
    exit_code = 5


ERRORS_BY_CODE: dict[str, type[ControlRoomError]] = {
    cls.code: cls
    for cls in (
        BadRequest,
        InvalidKey,
        Forbidden,
        NotFound,
        NotConnected,
        ReauthorizationRequired,
        RefreshBackoff,
        RateLimited,
        ProviderUnavailable,
        NotConfigured,
        ApiUnreachable,
        ApiTimeout,
    )
    if cls.code is not None
}


def retry_after_seconds(value: str | None, now: datetime | None = None) -> int | None:
    """`Retry-After` as whole seconds: delay-seconds or an HTTP-date (RFC 9110 section 10.2.3); None if absent or
    unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return int(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # an HTTP-date is always GMT
        when = when.replace(tzinfo=timezone.utc)
    return max(0, math.ceil((when - (now or datetime.now(timezone.utc))).total_seconds()))


def error_from_response(response: requests.Response) -> ControlRoomError:
    """The exception for a token endpoint answer other than 200."""
    retry_after = retry_after_seconds(response.headers.get("Retry-After"))
    try:
        body = response.json()
    except ValueError:
        body = None
    code = body.get("error") if isinstance(body, dict) else None
    known = isinstance(code, str) and code in ERRORS_BY_CODE
    if response.status_code >= 500 and not known:
        return ControlRoomUnavailable(
            f"Control Room answered HTTP {response.status_code} without its own error: it is failing for now.",
            status=response.status_code,
            retry_after=retry_after,
        )
    if not isinstance(code, str) or not code:
        content_type = response.headers.get("Content-Type") or "no content type"
        return InvalidResponse(
            f"Control Room answered HTTP {response.status_code} ({content_type}) without its JSON error; "
            "check CONTROLROOM_URL.",
            status=response.status_code,
            retry_after=retry_after,
        )
    detail = body.get("detail")
    if not isinstance(detail, str) or not detail:
        detail = f"Control Room refused the request ({code})."
    cls = ERRORS_BY_CODE.get(code, ControlRoomError)
    return cls(" ".join(detail.split()), status=response.status_code, code=code, retry_after=retry_after)
