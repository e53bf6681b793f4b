"""ProxySession: a requests.Session whose requests go through Control Room's API proxy for one connection, so the
bot never holds the connection's token (ControlRoom(...).session("salesforce-prod"))."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import requests

from controlroom_client.errors import ConfigurationError

if TYPE_CHECKING:
    from controlroom_client.client import ControlRoom

# Set by Control Room on its own refusals (a bad key, a refused path ...), not on what the API answers.
ERROR_HEADER = "X-ControlRoom-Error"


class ProxySession(requests.Session):
    """`session.get("services/data")`: relative URLs are sent to <Control Room>/api/v1/connections/<slug>/proxy/,
    with the bot key; Control Room adds the token and answers with the API's answer. An absolute URL is refused
    unless it is under that address (the key goes nowhere else), and redirects are not followed (a redirect to the
    API's own host would reach it without the token)."""

    def __init__(self, client: ControlRoom, slug: str) -> None:
        super().__init__()
        self.base = f"{client.url}/api/v1/connections/{quote(slug, safe='')}/proxy/"
        self.timeout = client.timeout
        self.headers["Authorization"] = f"Bearer {client.key_for_session()}"
        self.headers["User-Agent"] = client.user_agent

    def __repr__(self) -> str:  # never the key
        return f"ProxySession({self.base!r})"

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        url = url.decode() if isinstance(url, bytes) else url
        if urlsplit(url).scheme or url.startswith("//"):
            if not url.startswith(self.base):
                raise ConfigurationError(f"A proxy session calls paths under {self.base} only, not {url[:100]!r}.")
        else:
            url = self.base + url.lstrip("/")
        kwargs.setdefault("timeout", self.timeout)
        kwargs.setdefault("allow_redirects", False)
        return super().request(method, url, *args, **kwargs)
