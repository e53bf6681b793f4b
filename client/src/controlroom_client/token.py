"""The token endpoint's answer, and how long it stays usable."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

EXPIRES_AT_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


@dataclass(frozen=True)
class Token:
    """One answer of `GET /api/v1/connections/<slug>/token` (its `repr` leaves the access token out)."""

    connection: str
    access_token: str = field(repr=False)
    token_type: str
    expires_at: datetime | None  # UTC; None when the provider gave no lifetime
    expires_in: int | None  # seconds left when the answer came
    scope: str
    extra: dict[str, Any] = field(default_factory=dict)
    # The monotonic clock when the answer came: expiry is counted from here with `expires_in`, so a wrong or
    # changing wall clock on the bot's machine does not matter.
    received_at: float = field(default_factory=time.monotonic, repr=False, compare=False)

    @classmethod
    def from_answer(cls, answer: object) -> Token:
        """Read the endpoint's JSON; ValueError when it is not that shape."""
        if not isinstance(answer, dict):
            raise ValueError("the answer is not a JSON object")
        access_token = answer.get("access_token")
        if not isinstance(access_token, str) or not access_token:
            raise ValueError("the answer has no access_token")
        expires_in = answer.get("expires_in")
        if expires_in is not None and (not isinstance(expires_in, int) or isinstance(expires_in, bool)):
            raise ValueError("expires_in is not whole seconds")
        extra = answer.get("extra")
        return cls(
            connection=str(answer.get("connection") or ""),
            access_token=access_token,
            token_type=str(answer.get("token_type") or "Bearer"),
            expires_at=_parse_expires_at(answer.get("expires_at")),
            expires_in=expires_in,
            scope=str(answer.get("scope") or ""),
            extra=extra if isinstance(extra, dict) else {},
        )

    def seconds_left(self) -> float | None:
        """Seconds until expiry by this process's clock; None when the token has no known expiry."""
        if self.expires_in is None:
            return None
        return self.expires_in - (time.monotonic() - self.received_at)

    def expires_within(self, seconds: float) -> bool:
        """True when the token expires within `seconds` (a token without a known expiry never does)."""
        left = self.seconds_left()
        return left is not None and left <= seconds

    def as_dict(self) -> dict[str, Any]:
        """The endpoint's JSON, with `expires_in` counted down to now."""
        left = self.seconds_left()
        return {
            "connection": self.connection,
            "access_token": self.access_token,
            "token_type": self.token_type,
            "expires_at": self.expires_at.strftime(EXPIRES_AT_FORMAT) if self.expires_at else None,
            "expires_in": None if left is None else max(0, int(left)),
            "scope": self.scope,
            "extra": self.extra,
        }


def _parse_expires_at(value: object) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("expires_at is not a string")
    try:
        return datetime.strptime(value, EXPIRES_AT_FORMAT).replace(tzinfo=timezone.utc)
    except ValueError:
        raise ValueError("expires_at is not a UTC time like 2026-11-28T12:00:00Z") from None
