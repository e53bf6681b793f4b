"""ControlRoomAuth: a `requests` auth that sends a connection's access token, and on a 401 gets a fresh one once."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import requests
from requests.cookies import extract_cookies_to_jar

from controlroom_client.client import DEFAULT_MIN_VALIDITY, ControlRoom

_BODY_POSITION = "_controlroom_body_position"  # where a file-like body started, to send it again
_SENT_TOKEN = "_controlroom_sent_token"  # noqa: S105 - an attribute name: where the token this auth sent is kept


class ControlRoomAuth(requests.auth.AuthBase):
    """`requests.get(url, auth=ControlRoomAuth("salesforce-prod"))`, or `session.auth = ControlRoomAuth(...)`.

    Adds `Authorization: Bearer <token>` with the connection's token (kept in memory by the client). When the
    resource server answers 401, the token has been revoked or has expired early at the provider: the auth asks
    Control Room once with force_refresh and sends the request once more, the way requests' HTTPDigestAuth
    answers its challenge. A second 401 is returned as it is. When the forced refresh cannot be made (the provider
    is down), Control Room's answer is raised: ProviderUnavailable, with when to retry. Only a 401 to the very
    request this auth signed is answered so: after a redirect to another host or scheme (where requests removed the
    token), the 401 is returned as it is and the token goes nowhere else. `client` defaults to ControlRoom() from
    the environment; share one client between auths, so that they share its tokens.
    """

    def __init__(self, slug: str, client: ControlRoom | None = None, min_validity: int = DEFAULT_MIN_VALIDITY) -> None:
        self.slug = slug
        self.client = client if client is not None else ControlRoom()
        self.min_validity = min_validity

    def __repr__(self) -> str:
        return f"ControlRoomAuth({self.slug!r}, client={self.client!r})"

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        token = self.client.get_token(self.slug, min_validity=self.min_validity)
        request.headers["Authorization"] = f"Bearer {token.access_token}"
        setattr(request, _SENT_TOKEN, token.access_token)
        try:
            setattr(request, _BODY_POSITION, request.body.tell())  # type: ignore[union-attr]
        except (AttributeError, OSError):
            setattr(request, _BODY_POSITION, None)
        request.register_hook("response", self._retry_once_on_401)
        return request

    def _retry_once_on_401(self, response: requests.Response, **send_kwargs: Any) -> requests.Response:
        if response.status_code != 401:
            return response
        sent = response.request
        signed = response.history[0].request if response.history else sent  # the request this auth was given
        rejected = (sent.headers.get("Authorization") or "").removeprefix("Bearer ")
        ours = getattr(signed, _SENT_TOKEN, None)
        if not ours or rejected != ours or _origin(sent.url) != _origin(signed.url):
            return response  # refused somewhere a redirect led, or without our token: not ours to answer
        fresh = self.client.replace_rejected(self.slug, rejected, min_validity=self.min_validity)
        if fresh.access_token == rejected:
            return response  # replaced moments ago and still refused: not an expiry, sending it again would not help
        if not _rewind_body(sent):
            return response  # a streamed body cannot be sent twice; the next request gets the fresh token
        # Read and release the 401's connection before sending again on the same adapter.
        response.content  # noqa: B018
        response.close()
        retry = sent.copy()
        extract_cookies_to_jar(retry._cookies, sent, response.raw)  # type: ignore[attr-defined]
        retry.prepare_cookies(retry._cookies)  # type: ignore[attr-defined]
        retry.headers["Authorization"] = f"Bearer {fresh.access_token}"
        setattr(retry, _SENT_TOKEN, fresh.access_token)
        # The adapter sends without running hooks: this retry cannot trigger another.
        second = response.connection.send(retry, **send_kwargs)
        second.history.append(response)
        second.request = retry
        return second


def _origin(url: str | None) -> tuple[str, str, int | None]:
    """Scheme, host and port: a token sent to one origin is not sent to another."""
    parts = urlsplit(url or "")
    return parts.scheme, (parts.hostname or "").lower(), parts.port


def _rewind_body(request: requests.PreparedRequest) -> bool:
    """Whether the body can be sent again: none, bytes or text, or a file rewound to where it started."""
    body = request.body
    if body is None or isinstance(body, (bytes, str)):
        return True
    position = getattr(request, _BODY_POSITION, None)
    if position is None or not hasattr(body, "seek"):
        return False
    body.seek(position)
    return True
