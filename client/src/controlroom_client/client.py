"""ControlRoom: asks `GET {url}/api/v1/connections/{slug}/token` with a bot key, and keeps each token in memory
until it comes within `min_validity` seconds of expiry."""

from __future__ import annotations

import os
import threading
import time
from typing import Any
from urllib.parse import quote

import requests

from controlroom_client._version import __version__
from controlroom_client.errors import (
    ConfigurationError,
    ControlRoomUnreachable,
    InvalidResponse,
    error_from_response,
)
from controlroom_client.token import Token

URL_ENV = "CONTROLROOM_URL"
KEY_ENV = "CONTROLROOM_KEY"
DEFAULT_MIN_VALIDITY = 60
# Control Room may call the provider to refresh before it answers; its own outbound timeout bounds that call.
DEFAULT_TIMEOUT = 30.0
# A resource server that keeps refusing a token just replaced (a missing scope, not an expiry) does not get the
# provider asked for yet another one more often than this.
REPLACED_RECENTLY = 30.0
USER_AGENT = f"controlroom-client/{__version__}"


class ControlRoom:
    """A client for one Control Room and one bot key; safe to share between threads.

    `url` and `key` default to the environment variables CONTROLROOM_URL and CONTROLROOM_KEY. `session` is a
    `requests.Session` to send through (proxies, CA bundle, adapters); `timeout` is in seconds, or requests'
    (connect, read) pair.
    """

    def __init__(
        self,
        url: str | None = None,
        key: str | None = None,
        *,
        session: requests.Session | None = None,
        timeout: float | tuple[float, float] = DEFAULT_TIMEOUT,
    ) -> None:
        url = url or os.environ.get(URL_ENV, "")
        key = key or os.environ.get(KEY_ENV, "")
        if not url.strip():
            raise ConfigurationError(
                f"No Control Room URL: pass url=... or set {URL_ENV} (e.g. https://controlroom.example)."
            )
        if not url.strip().lower().startswith(("http://", "https://")):
            raise ConfigurationError(f"The Control Room URL must start with http:// or https://, not {url.strip()!r}.")
        if not key.strip():
            raise ConfigurationError(f"No bot key: pass key=... or set {KEY_ENV} (a key starts with crk_).")
        self.url = url.strip().rstrip("/")
        self._key = key.strip()
        self._own_session = session is None
        self._session = session if session is not None else requests.Session()
        self.timeout = timeout
        self._tokens: dict[str, Token] = {}
        self._forced_at: dict[str, float] = {}  # the monotonic clock of each slug's last forced refresh
        self._slug_locks: dict[str, threading.Lock] = {}
        self._slug_locks_guard = threading.Lock()

    def __repr__(self) -> str:  # never the key
        return f"ControlRoom(url={self.url!r})"

    def __enter__(self) -> ControlRoom:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the session if this client made it."""
        if self._own_session:
            self._session.close()

    # --- The API proxy ---------------------------------------------------------------------------------------

    def session(self, slug: str) -> requests.Session:
        """A requests.Session for the connection's API through Control Room's proxy: relative URLs
        (session.get("services/data")) go to {url}/api/v1/connections/{slug}/proxy/, and the token never reaches
        this process."""
        from controlroom_client.proxy import ProxySession  # it imports this module for its types

        _check_arguments(slug, DEFAULT_MIN_VALIDITY)
        return ProxySession(self, slug)

    def key_for_session(self) -> str:
        return self._key

    user_agent = USER_AGENT

    # --- Tokens ----------------------------------------------------------------------------------------------

    def token(self, slug: str, min_validity: int = DEFAULT_MIN_VALIDITY, force_refresh: bool = False) -> str:
        """A valid access token for the connection `slug`, valid for at least `min_validity` more seconds."""
        return self.get_token(slug, min_validity=min_validity, force_refresh=force_refresh).access_token

    def get_token(self, slug: str, *, min_validity: int = DEFAULT_MIN_VALIDITY, force_refresh: bool = False) -> Token:
        """The whole answer (access_token, token_type, expires_at, expires_in, scope, extra).

        Answered from memory while the token kept for `slug` has more than `min_validity` seconds left; otherwise
        (or with `force_refresh`) asked from Control Room, which refreshes at the provider first when needed.
        Threads asking for the same slug at once wait for one request. Raises a ControlRoomError subclass.
        """
        _check_arguments(slug, min_validity)
        kept = self._tokens.get(slug)  # without the lock: a kept token is not held up by another's request
        if kept is not None and not force_refresh and not kept.expires_within(min_validity):
            return kept
        with self._lock_for(slug):
            kept = self._tokens.get(slug)
            if kept is not None and not force_refresh and not kept.expires_within(min_validity):
                return kept
            return self._ask(slug, min_validity=min_validity, force_refresh=force_refresh)

    def replace_rejected(
        self, slug: str, rejected_access_token: str, *, min_validity: int = DEFAULT_MIN_VALIDITY
    ) -> Token:
        """A new token after a resource server refused `rejected_access_token` (HTTP 401): asks Control Room with
        force_refresh, unless another thread has replaced that token meanwhile (a burst of 401s costs one
        request), or it was itself replaced less than REPLACED_RECENTLY seconds ago: then it is returned as it is,
        the same token, and the 401 stands (a token the provider just issued is refused for another reason)."""
        _check_arguments(slug, min_validity)
        with self._lock_for(slug):
            kept = self._tokens.get(slug)
            if kept is not None and not kept.expires_within(min_validity):
                replaced_meanwhile = kept.access_token != rejected_access_token
                just_replaced = time.monotonic() - self._forced_at.get(slug, -REPLACED_RECENTLY) < REPLACED_RECENTLY
                if replaced_meanwhile or just_replaced:
                    return kept
            return self._ask(slug, min_validity=min_validity, force_refresh=True)

    def forget(self, slug: str | None = None) -> None:
        """Drop the token kept for `slug` (all of them without one): the next call asks Control Room."""
        with self._slug_locks_guard:
            if slug is None:
                self._tokens.clear()
            else:
                self._tokens.pop(slug, None)

    # --- The request -----------------------------------------------------------------------------------------

    def _lock_for(self, slug: str) -> threading.Lock:
        with self._slug_locks_guard:
            return self._slug_locks.setdefault(slug, threading.Lock())

    def _ask(self, slug: str, *, min_validity: int, force_refresh: bool) -> Token:
        """One request to the endpoint; the token is kept for the next calls. Called holding the slug's lock."""
        params = {"min_validity": str(min_validity)}
        if force_refresh:
            params["force_refresh"] = "true"
        response = self._send(f"{self.url}/api/v1/connections/{quote(slug, safe='')}/token", params)
        if response.status_code != 200:
            raise error_from_response(response)
        try:
            token = Token.from_answer(response.json())
        except ValueError as exc:
            raise InvalidResponse(
                f"Control Room answered HTTP 200 without a usable token ({exc}); check CONTROLROOM_URL.",
                status=200,
            ) from None
        with self._slug_locks_guard:
            self._tokens[slug] = token
            if force_refresh:
                self._forced_at[slug] = token.received_at
        return token

    def _send(self, url: str, params: dict[str, str]) -> requests.Response:
        headers = {"Authorization": f"Bearer {self._key}", "Accept": "application/json", "User-Agent": USER_AGENT}
        try:
            # No redirects: a redirect means a wrong URL, and the key must not follow it anywhere.
            response = self._session.get(
                url, params=params, headers=headers, timeout=self.timeout, allow_redirects=False
            )
        except requests.RequestException as exc:
            # requests' message names the host and path, never the headers: the key stays out of it.
            raise ControlRoomUnreachable(f"Cannot reach Control Room at {self.url}: {_reason(exc)}") from None
        if response.is_redirect:
            raise InvalidResponse(
                f"Control Room answered HTTP {response.status_code}, a redirect to "
                f"{response.headers.get('Location', '?')}; set CONTROLROOM_URL to the site's root (the address before "
                "/api/), over https if it redirects there.",
                status=response.status_code,
            )
        return response


def _check_arguments(slug: Any, min_validity: Any) -> None:
    if not isinstance(slug, str) or not slug:
        raise ValueError("slug must be a connection's slug, e.g. 'salesforce-prod'")
    if not isinstance(min_validity, int) or isinstance(min_validity, bool):
        raise TypeError("min_validity must be whole seconds (an int)")
    if min_validity < 0:
        raise ValueError("min_validity must be 0 or more seconds")


def _reason(exc: requests.RequestException) -> str:
    """What went wrong, without urllib3's retry wrapper: 'Connection refused' is what a person needs."""
    cause = exc.args[0] if exc.args else exc
    cause = getattr(cause, "reason", None) or cause  # urllib3's MaxRetryError holds the real error
    return f"{type(exc).__name__}: {cause}"
