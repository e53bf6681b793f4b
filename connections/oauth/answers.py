"""Reading a token URL's answer: what oauthlib is given to parse (checked, odd but usable values made plain, a
provider's own field names mapped to RFC 6749's), and what is stored of it (a TokenResponse). No HTTP here:
connections.oauth.client makes the calls and hands their answers to this module.
"""

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import requests

from connections.errors import ProviderError

STANDARD_FIELDS = frozenset(
    {"access_token", "refresh_token", "id_token", "token_type", "scope", "expires_in", "expires_at"}
)
# A field whose name holds one of these is a secret (a token, a client secret, an authorization code, a signed
# assertion, a webhook's secret URL), at whatever depth of the answer it is: never kept, never given to a bot.
SECRET_WORDS = ("token", "secret", "password", "code", "assertion", "webhook")


@dataclass(frozen=True)
class TokenResponse:
    access_token: str = field(repr=False)
    refresh_token: str = field(repr=False)
    id_token: str = field(repr=False)
    token_type: str
    scope: str
    expires_in: int | None
    extra: dict[str, Any]  # without a secret at any depth (without_secrets)


RATE_LIMITED = "rate_limited"  # the error of a ProviderError for HTTP 429: the provider wants fewer calls
RETRY_AFTER_DEFAULT = 30  # seconds to wait after a 429 without a usable Retry-After
RETRY_AFTER_MAX = 3600  # a longer Retry-After is taken as this: a token must not wait past its expiry for it
MAX_LIFETIME = 10 * 365 * 24 * 3600  # an expires_in beyond this is taken as this (a datetime must hold it)
MAX_SCOPE_LENGTH = 10_000
MAX_EXTRA_BYTES = 10_000  # the non-secret fields kept besides the standard ones, as JSON
MAX_PROVIDER_TEXT = 200  # what is kept of text a provider wrote (error_description): it goes into logs and emails


def provider_text(text: object) -> str:
    """Text a provider (or a browser) sent, fit to quote: printable, and short."""
    cleaned = "".join(char if char.isprintable() else " " for char in str(text))
    return cleaned[:MAX_PROVIDER_TEXT] + ("…" if len(cleaned) > MAX_PROVIDER_TEXT else "")


def _lifetime(value: object) -> int | None:
    """expires_in as whole seconds: numbers as strings or with fractions are fine; anything else is no value."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    if not math.isfinite(seconds) or seconds < 1:
        return None
    return int(min(seconds, MAX_LIFETIME))


def _storable(value: object) -> bool:
    """JSON that PostgreSQL can keep: no NUL character and no lone surrogate anywhere."""
    text = json.dumps(value, ensure_ascii=False)
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return "\\u0000" not in text


def _usable_body(body: dict[str, Any]) -> dict[str, Any]:
    """The token answer as oauthlib and the database can take it: odd but usable values made plain, unusable
    ones dropped (a missing expires_in gets the default lifetime, a missing scope keeps the stored one)."""
    usable = {key: value for key, value in body.items() if isinstance(key, str) and _storable({key: value})}
    for name in ("access_token", "refresh_token", "id_token"):
        if name in usable and not isinstance(usable[name], str):
            usable.pop(name)
    lifetime = _lifetime(usable.pop("expires_in", None))
    usable.pop("expires_at", None)  # computed from expires_in; a provider's own may be anything
    if lifetime is not None:
        usable["expires_in"] = lifetime
    scope = usable.pop("scope", None)
    if isinstance(scope, list | tuple) and all(isinstance(item, str) for item in scope):
        scope = " ".join(scope)
    if isinstance(scope, str) and _storable(scope):
        usable["scope"] = scope[:MAX_SCOPE_LENGTH]
    token_type = usable.get("token_type")
    if not (isinstance(token_type, str) and 0 < len(token_type) <= 40 and token_type.isprintable()):
        usable["token_type"] = "Bearer"  # noqa: S105 - the usual type, not a secret
    return usable


class TokenAnswers:
    """The compliance hook of one session: checks the token URL's answer before oauthlib reads it, makes it
    usable, and keeps the refresh token it carries so that a failure later in the call does not lose it."""

    def __init__(self, fields: dict[str, str] | None = None) -> None:
        self.refresh_token = ""
        self.fields = fields or {}  # Provider.token_response_fields: where the answer holds a standard field

    def __call__(self, response: requests.Response) -> requests.Response:
        body = _fields_moved(json_object(response), self.fields)
        if isinstance(body.get("refresh_token"), str) and _storable(body["refresh_token"]):
            self.refresh_token = body["refresh_token"]
        response._content = json.dumps(_usable_body(body)).encode()  # what oauthlib reads next
        return response


def _fields_moved(body: dict[str, Any], fields: dict[str, str]) -> dict[str, Any]:
    """The answer with each standard field read from the dotted path the provider keeps it at (Slack v2 puts a
    user's token under authed_user); a path the answer lacks leaves the field as it is (an error answer)."""
    moved = dict(body)
    for name, path in fields.items():
        value: Any = body
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is not None:
            moved[name] = value
    for path in fields.values():  # the containers go: what else they hold is the other grant's (Slack's bot token)
        if "." in path:
            moved.pop(path.split(".")[0], None)
    return moved


def without_secrets(value: Any) -> Any:
    """The value with every field named like a secret (SECRET_WORDS) removed, at every depth."""
    if isinstance(value, dict):
        return {
            key: without_secrets(item)
            for key, item in value.items()
            if not (isinstance(key, str) and any(word in key.lower() for word in SECRET_WORDS))
        }
    if isinstance(value, list):
        return [without_secrets(item) for item in value]
    return value


def retry_after_seconds(value: str) -> float:
    """A Retry-After header (RFC 9110 10.2.3: seconds, or an HTTP date) as seconds to wait, within bounds; a
    missing or unreadable one means RETRY_AFTER_DEFAULT."""
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds()
        except (TypeError, ValueError):
            seconds = RETRY_AFTER_DEFAULT
    if not math.isfinite(seconds):
        seconds = RETRY_AFTER_DEFAULT
    return float(min(max(math.ceil(seconds), 1), RETRY_AFTER_MAX))


def json_object(response: requests.Response) -> dict[str, Any]:
    """The answer's JSON object, or a ProviderError for what oauthlib would misread (5xx, HTML, rate limits)."""
    status = response.status_code
    if status == 429:
        wait = retry_after_seconds(response.headers.get("Retry-After", ""))
        raise ProviderError(
            f"The provider's token URL asked to slow down (HTTP 429); it will be asked again in {wait:g} s.",
            error=RATE_LIMITED,
            permanent=False,
            status=status,
            retry_after=wait,
        )
    if status >= 500:
        raise ProviderError(
            f"The provider's token URL answered HTTP {status}; it will be retried.",
            error="temporarily_unavailable",
            permanent=False,
            status=status,
        )
    try:
        body = response.json()
    except ValueError:
        content_type = provider_text(response.headers.get("Content-Type", "unknown").split(";")[0])
        raise ProviderError(
            f"The provider's token URL answered HTTP {status} with {content_type} instead of JSON.",
            error="invalid_response",
            permanent=False,
            status=status,
        ) from None
    if not isinstance(body, dict):
        raise ProviderError(
            "The provider's token URL answered with JSON that is not an object.",
            error="invalid_response",
            permanent=False,
            status=status,
        )
    if status >= 400 and "error" not in body:
        raise ProviderError(
            f"The provider's token URL answered HTTP {status} without an OAuth error code.",
            error="invalid_response",
            permanent=False,
            status=status,
        )
    return body


def token_response_of(token: dict[str, Any]) -> TokenResponse:
    """What is stored of a token URL's answer (made usable by TokenAnswers): its tokens, lifetime, scope and the
    fields besides."""
    access_token = token.get("access_token")
    if not access_token or not isinstance(access_token, str):
        raise ProviderError(
            "The provider's token response has no access_token.", error="invalid_response", permanent=False
        )
    extra = without_secrets({key: value for key, value in token.items() if key not in STANDARD_FIELDS})
    if len(json.dumps(extra)) > MAX_EXTRA_BYTES:
        extra = {key: value for key, value in extra.items() if len(json.dumps(value)) <= 200}
    return TokenResponse(
        access_token=access_token,
        refresh_token=str(token.get("refresh_token") or ""),
        id_token=str(token.get("id_token") or ""),
        token_type=str(token.get("token_type") or "Bearer"),
        scope=" ".join(token["scope"]) if isinstance(token.get("scope"), list) else str(token.get("scope") or ""),
        expires_in=_lifetime(token.get("expires_in")),
        extra=extra,
    )


def device_answer_fields(body: dict[str, Any]) -> dict[str, Any]:
    """A device authorization answer's fields (RFC 8628 3.2), made plain: the interval defaults to five seconds,
    Google's older verification_url is read as verification_uri."""
    uri = body.get("verification_uri") or body.get("verification_url")
    lifetime = _lifetime(body.get("expires_in"))
    missing = [name for name in ("device_code", "user_code") if not isinstance(body.get(name), str) or not body[name]]
    if missing or not isinstance(uri, str) or lifetime is None:
        absent = ", ".join(missing + ([] if isinstance(uri, str) else ["verification_uri"]))
        absent += ", expires_in" if lifetime is None else ""
        raise ProviderError(
            f"The provider's device authorization answer lacks {absent.strip(', ')}.",
            error="invalid_response",
            permanent=False,
        )
    complete = body.get("verification_uri_complete")
    complete = complete if isinstance(complete, str) else ""
    # What is stored and shown: bounded and printable, or the answer is not one to keep.
    bounds = {"device_code": 4000, "user_code": 64, "verification_uri": 1000, "verification_uri_complete": 2000}
    values = {"device_code": body["device_code"], "user_code": body["user_code"], "verification_uri": uri}
    values["verification_uri_complete"] = complete
    for name, limit in bounds.items():
        if len(values[name]) > limit or not values[name].isprintable():
            raise ProviderError(
                f"The provider's device authorization answer has an unusable {name}.",
                error="invalid_response",
                permanent=False,
            )
    return {
        "device_code": body["device_code"],
        "user_code": body["user_code"],
        "verification_uri": uri,
        "verification_uri_complete": complete,
        "expires_in": lifetime,
        "interval": _lifetime(body.get("interval")) or 5,
    }
