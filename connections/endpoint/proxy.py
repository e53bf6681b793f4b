"""The API proxy's logic: a bot calls its connection's API through Control Room and never holds the token.

ANY /api/v1/connections/<slug>/proxy/<path> passes the token endpoint's checks (issuing.token_checked: key, rate
limit, invitation, token access, a token valid for a minute), then calls <api_base_url>/<path> with the query and
body as the bot sent them and the token added (in the provider type's api_token_header, after its api_token_prefix),
under the outbound policy (policy.streaming_session). Both bodies stream in CHUNK pieces: memory stays bounded
whatever their size, except a body of up to REPLAYABLE_BYTES, kept so that it can be sent again after a 401 and one
forced refresh. Each call is audited once its answer has streamed (with the token endpoint's answers, by the report
thread of connections.cache.token_cache) and counted.
"""

import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import requests
import urllib3
from django.conf import settings
from django.utils import timezone

from connections.audit.events import Action, Outcome
from connections.cache import token_cache
from connections.endpoint import issuing
from connections.errors import OutboundError, TokenRequestError
from connections.models import AuditEvent
from connections.oauth.answers import retry_after_seconds
from connections.ops import metrics
from connections.outbound import policy
from providers.models import Provider

logger = logging.getLogger(__name__)

CHUNK = 64 * 1024
REPLAYABLE_BYTES = 1024 * 1024  # a body up to this size is kept, to be sent again after a 401
# RFC 9110 7.6.1: meaningful for one connection only; Proxy-* are the bot's dealings with a proxy of its own.
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te", "trailer"}
    | {"transfer-encoding", "upgrade"}
)
# Host is the API's; Cookie and Authorization are the bot's credentials for Control Room, never the API's;
# Content-Length is set again from the body that is sent.
NOT_FORWARDED = HOP_BY_HOP | {"host", "cookie", "authorization", "content-length"}
NOT_RETURNED = HOP_BY_HOP | {"set-cookie", "set-cookie2"}  # the API's cookies are not for the bot's browser
ENCODED_SEPARATOR = re.compile(r"%(2f|5c)", re.IGNORECASE)
SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
# Optional retries (PROXY_RETRIES): of methods that may be sent twice, on answers that say "not now" (RFC 9110 15.6).
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
RETRIED_STATUSES = frozenset({502, 503, 504})
RETRY_BACKOFF = 0.2  # seconds before the first retry without a Retry-After; doubled for each next one
PATH_SAFE = "/%:@!$&'()*+,;=-._~"  # kept as they are when a path is quoted: RFC 3986's pchar and "/"


@dataclass
class Body:
    """The bot's request body: `data` to send (bytes, an Upload, or None) and whether it can be sent again."""

    data: Any = None
    replayable: bool = True
    size: int = 0


@dataclass
class ProxyRequest:
    """What the view hands over, as plain values."""

    method: str
    path: str  # after /proxy/, percent-encoded as the bot sent it
    query: str  # as the bot sent it
    headers: dict[str, str]  # the bot's, by their HTTP names
    body: Body = field(default_factory=Body)


class Upload:
    """A body too large to keep, streamed from the bot's request as the API reads it. Its length lets requests
    send a Content-Length (not chunked) when the bot gave one."""

    def __init__(self, read: Callable[[int], bytes], length: int | None) -> None:
        # Not named read: urllib3 would take a `read` for a file's and bypass the length checked below.
        self._read, self.length, self.sent, self.cut_short = read, length, 0, False

    def __len__(self) -> int:
        return self.length or 0  # 0 when unknown: requests then sends the body chunked

    def __bool__(self) -> bool:
        # A body, even of unknown length: requests takes `data or {}`, which would send a chunked one as empty.
        return True

    def __iter__(self) -> Iterator[bytes]:
        while self.length is None or self.sent < self.length:
            want = CHUNK if self.length is None else min(CHUNK, self.length - self.sent)
            chunk = self._read(want)
            if not chunk:
                # The bot went away before its Content-Length: the API must not take a short body as whole.
                self.cut_short = self.length is not None
                if self.cut_short:
                    raise OSError("The request body ended before its Content-Length.")
                return
            self.sent += len(chunk)
            yield chunk


def body_read(read: Callable[[int], bytes], length: int | None, chunked: bool) -> Body:
    """The body as it will be sent: kept whole up to REPLAYABLE_BYTES, else streamed (a chunked body of unknown
    length too); none when the bot sent none."""
    if length is None:
        return Body(Upload(read, None), replayable=False) if chunked else Body()
    if length > REPLAYABLE_BYTES:
        return Body(Upload(read, length), replayable=False, size=length)
    data = b""
    while len(data) < length:
        chunk = read(length - len(data))
        if not chunk:
            raise TokenRequestError(400, "bad_request", "The request body ended before its Content-Length.")
        data += chunk
    return Body(data or None, size=length)


def proxied_path(raw: str) -> str:
    """The path under the API base, or 400: nothing that could leave it (.. segments, encoded or back slashes,
    an absolute URL, a host of its own) is passed on."""
    problem = ""
    segments = raw.split("/")
    if "\\" in raw or ENCODED_SEPARATOR.search(raw):
        problem = "encoded slashes and backslashes are not allowed"
    elif SCHEME.match(raw) or raw.startswith("/"):
        problem = "give a path under the API base, not a URL or a host"
    elif any(unquote(segment) in (".", "..") for segment in segments) or "" in segments[:-1]:
        problem = "empty, . and .. segments are not allowed"
    elif any(ord(char) < 0x20 or ord(char) == 0x7F for char in unquote(raw)):
        problem = "control characters are not allowed"
    if problem:
        raise TokenRequestError(400, "bad_request", f"The API path is refused: {problem}.")
    return quote(raw, safe=PATH_SAFE)


def _url(base: str, path: str, query: str) -> str:
    url = f"{base}/{path}" + (f"?{query}" if query else "")
    # Belt and braces: what is called is on the base's scheme, host and port, under its path.
    got, want = urlsplit(url), urlsplit(base)
    if (got.scheme, got.netloc) != (want.scheme, want.netloc) or not got.path.startswith(want.path):
        raise TokenRequestError(400, "bad_request", "The API path is refused: it leaves the API base.")
    return url


@dataclass(frozen=True)
class ProxyTarget:
    """What calling a connection's API needs, as the full path found it (the token, the API base its fields filled
    in, how the provider type's API takes the token): kept as the answer from memory for the key's next calls to
    that connection (issuing.answer_remember), so that they read nothing from the database."""

    connection: str  # its slug
    base: str
    token_header: str  # the provider type's api_token_header
    token_prefix: str
    provider: str  # the provider type's slug: the metrics' label
    access_token: str = field(repr=False)

    def headers_with_token(self, headers: dict[str, str]) -> dict[str, str]:
        """The token as the provider type's API takes it: "Authorization: Bearer <token>" unless it says otherwise."""
        prefix = self.token_prefix
        return {**headers, self.token_header: f"{prefix} {self.access_token}" if prefix else self.access_token}


def _target_of(checked: issuing.CheckedToken, token: Any) -> ProxyTarget:
    """The API base with the token's fields filled in, and the provider type (how its API takes the token)."""
    connection = checked.connection  # read with what this needs (connections.endpoint.read, for_proxy)
    base = connection.effective_api_base_url(token.extra)
    if not base:
        raise TokenRequestError(
            409,
            "not_configured",
            f"{connection.slug} has no API base URL (or its token lacks what fills it in): an administrator sets "
            "one on the connection.",
        )
    provider: Provider = connection.provider
    return ProxyTarget(
        connection.slug,
        base,
        provider.api_token_header,
        provider.api_token_prefix,
        provider.slug,
        token.access_token,
    )


def forwarded_headers(headers: dict[str, str], also_dropped: str = "") -> dict[str, str]:
    """The bot's headers less those never passed on, those its Connection header names (RFC 9110 7.6.1) and
    `also_dropped`."""
    named = {name.strip().lower() for name in headers.get("Connection", "").split(",")} | {also_dropped.lower()}
    return {name: value for name, value in headers.items() if name.lower() not in NOT_FORWARDED | named}


def returned_headers(upstream: requests.Response) -> list[tuple[str, str]]:
    named = {name.strip().lower() for name in upstream.headers.get("Connection", "").split(",")}
    return [(name, value) for name, value in upstream.headers.items() if name.lower() not in NOT_RETURNED | named]


def _send(method: str, url: str, headers: dict[str, str], body: Body) -> requests.Response:
    # The session is never closed: closing it would close the adapter's pools, which are the whole process's
    # (policy._shared_adapter), and every kept-alive connection to every API and token URL with them.
    session = policy.streaming_session(settings.PROXY_TIMEOUT)
    try:
        # Prepared here: requests' own default headers (Accept-Encoding ...) are not the bot's.
        prepared = requests.Request(method, url, headers=headers, data=body.data).prepare()
        return session.prepared_send(prepared)
    except OutboundError as exc:
        if exc.error == "timeout":
            within = f"{settings.PROXY_TIMEOUT:g} s"
            raise TokenRequestError(504, "api_timeout", f"The API did not answer within {within}.") from None
        raise TokenRequestError(502, "api_unreachable", f"The API could not be called: {exc.message}") from None
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
        if isinstance(body.data, Upload) and body.data.cut_short:
            raise TokenRequestError(400, "bad_request", "The request body ended before its Content-Length.") from None
        logger.warning("The API proxy could not reach %s: %s", urlsplit(url).netloc, type(exc).__name__)
        raise TokenRequestError(502, "api_unreachable", "The API could not be reached (connection failed).") from None


@dataclass
class Call:
    """One proxied call, for its audit event and its count."""

    subject: dict[str, Any]  # issuing.audit_subject: the key and the connection
    provider: str  # its connection's provider type
    request: ProxyRequest
    remote_addr: str | None
    started: float = field(default_factory=time.monotonic)

    def recorded(self, status: int, received: int, detail: str = "") -> None:
        query = "&".join(f"{name}=…" for name, _ in parse_qsl(self.request.query, keep_blank_values=True))
        shown = f"/{self.request.path[:300]}" + (f"?{query[:200]}" if query else "")  # names, never values
        took = round((time.monotonic() - self.started) * 1000)
        sent = self.request.body.data.sent if isinstance(self.request.body.data, Upload) else self.request.body.size
        event = {
            **self.subject,
            "action": Action.PROXY_REQUEST.value,
            "outcome": (Outcome.SUCCESS if status < 400 else Outcome.FAILURE).value,
            "detail": f"{self.request.method[:10]} {shown} → {status} in {took} ms, {sent} bytes sent, {received} "
            f"bytes received{detail}",
            "kind": AuditEvent.Kind.PROXY.value,  # rolled up: the row's detail is its latest call's
        }
        token_cache.audit_later(event, timezone.now(), self.remote_addr)
        metrics.proxy_request_counted(self.provider, status)


class Relay:
    """The API's body to the bot, CHUNK by CHUNK as it arrives, undecoded (Content-Encoding passes through).
    Closed by the server when the answer is over, or when the bot goes away: the call is audited then."""

    def __init__(self, upstream: requests.Response, call: Call) -> None:
        self.upstream, self.call, self.received, self.closed, self.note = upstream, call, 0, False, ""
        self.finished = False  # the whole body relayed: its connection may serve the next call

    def __iter__(self) -> Iterator[bytes]:
        try:
            for chunk in self.upstream.raw.stream(CHUNK, decode_content=False):
                self.received += len(chunk)
                yield chunk
            self.finished = True
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            # Headers are sent: the bot sees a body shorter than its Content-Length (or no last chunk).
            self.note = f" (cut short: {type(exc).__name__})"
            logger.warning("The API's answer was cut short while the proxy relayed it.")

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.finished:
                # Back to the pool, kept alive (requests' Response.close() would close the connection of a body it
                # did not read itself: a new TCP and TLS handshake for every call).
                self.upstream.raw.release_conn()
            else:
                self.upstream.close()  # a body left half read: the connection cannot serve another call
            self.call.recorded(self.upstream.status_code, self.received, self.note)


@dataclass
class ProxyAnswer:
    status: int
    headers: list[tuple[str, str]]
    body: Iterable[bytes]  # a Relay: closing it ends the call


def proxy_call(*, authorization: str, slug: str, request: ProxyRequest, remote_addr: str | None) -> ProxyAnswer:
    """Call the connection's API for a bot; raises TokenRequestError for every refusal (audited and counted)."""
    checks = Checks(authorization, slug, remote_addr)
    cached = issuing.answer_from_memory(
        authorization, slug, issuing.DEFAULT_MIN_VALIDITY, remote_addr=remote_addr, for_proxy=True
    )
    if cached is not None:
        target, call = cached.answer, Call(cached.audit, cached.answer.provider, request, remote_addr)
    else:
        read_at = token_cache.clock()  # no later than the read the target may be kept under
        checked = checks.full_path(counted=False)
        call = Call(issuing.audit_subject(checked), checked.connection.provider.slug, request, remote_addr)
    try:
        if cached is None:
            target = _target_of(checked, checked.token)
            issuing.answer_remember(checked.read, read_at, checked.token, target, call.subject, for_proxy=True)
        path = proxied_path(request.path)
        # The bot's own header of that name is dropped: only the connection's token is sent in it.
        headers = forwarded_headers(request.headers, also_dropped=target.token_header)

        def sent(target: ProxyTarget) -> requests.Response:
            url = _url(target.base, path, request.query)
            return _send(request.method, url, target.headers_with_token(headers), request.body)

        upstream = sent(target)
        if upstream.status_code == 401 and request.body.replayable:
            # The token was refused (revoked, or expired early): one forced refresh, one retry.
            upstream.close()
            target = checks.refreshed(target)
            upstream = sent(target)
        for attempt in range(_retries_allowed(request)):
            wait = _retry_wait(upstream, attempt)
            if wait is None:
                break
            upstream.close()
            time.sleep(wait)
            upstream = sent(target)
    except TokenRequestError as exc:
        if exc is not checks.refusal:  # the checks' own refusal is audited and counted already
            call.recorded(exc.status, 0, f" ({exc.error})")
        raise
    return ProxyAnswer(upstream.status_code, returned_headers(upstream), Relay(upstream, call))


@dataclass
class Checks:
    """The token endpoint's checks for one proxied call, made when its answer from memory would not do."""

    authorization: str
    slug: str
    remote_addr: str | None
    checked: issuing.CheckedToken | None = None
    refusal: TokenRequestError | None = None  # audited by the checks themselves (issuing.token_checked)

    def full_path(self, *, counted: bool) -> issuing.CheckedToken:
        try:
            # No parameters: the query string is the API's, not Control Room's.
            self.checked = issuing.token_checked(
                authorization=self.authorization,
                slug=self.slug,
                params={},
                remote_addr=self.remote_addr,
                action=Action.PROXY_REQUEST,
                counted=counted,
            )
        except TokenRequestError as exc:
            metrics.proxy_request_counted("", exc.status)
            self.refusal = exc
            raise
        return self.checked

    def refreshed(self, refused: ProxyTarget) -> ProxyTarget:
        """The target with a token other than the one the API refused: one another request's refresh stored since,
        or one forced refresh through the single flight (a call answered from memory reads its rows first)."""
        checked = self.checked or self.full_path(counted=True)
        if checked.token.access_token != refused.access_token:
            return _target_of(checked, checked.token)
        return _target_of(checked, issuing.token_forced(checked))


def _retries_allowed(request: ProxyRequest) -> int:
    """PROXY_RETRIES for a call that may be sent again: an idempotent method (RFC 9110 9.2.2) with a body kept."""
    return settings.PROXY_RETRIES if request.method in IDEMPOTENT and request.body.replayable else 0


def _retry_wait(upstream: requests.Response, attempt: int) -> float | None:
    """Seconds to wait before sending a call the API could not serve for now again; None: no retry (it was
    served, or asks for a longer wait than PROXY_RETRY_WAIT_MAX: its answer goes back to the bot, Retry-After
    with it, rather than holding a request thread)."""
    if upstream.status_code not in RETRIED_STATUSES:
        return None
    asked = upstream.headers.get("Retry-After", "")
    wait = retry_after_seconds(asked) if asked else RETRY_BACKOFF * 2**attempt
    return wait if wait <= settings.PROXY_RETRY_WAIT_MAX else None
