"""The outbound policy every call to a provider passes: https only (except hosts the operator allows), the SSRF
guard, the forward proxy, a hard deadline on the whole call with a bounded answer, and never a call while a
database transaction is open. connections.oauth.client builds its sessions here; so does anything else that
calls out on an operator's behalf (the notification webhook).
"""

import http.cookiejar
import ipaddress
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import requests
import urllib3
from django.conf import settings
from django.db import connections as db_connections
from requests_oauthlib import OAuth2Session
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from connections.errors import CallInTransaction, DeadlinePassed, OutboundError
from connections.outbound import deadline, requests_checks
from connections.outbound.forward_proxy import proxies_for, proxy_auth_error

logger = logging.getLogger(__name__)
requests_checks.install()  # every session is made here

# A token, revocation or discovery answer is a few kilobytes; anything this large is not one.
MAX_RESPONSE_BYTES = 1024 * 1024
NAT64_PREFIX = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052: the IPv4 address is the last 32 bits


def check_url(url: str) -> None:
    """https only, except hosts the operator allows over http (loopback in development)."""
    try:
        parts = urlsplit(url)
        parts.hostname  # noqa: B018 - raises ValueError for a malformed bracketed host
    except ValueError:
        raise OutboundError("This is not a valid URL.", error="invalid_url", permanent=True) from None
    if not parts.scheme or not parts.hostname:
        shown = "".join(char if char.isprintable() else " " for char in url)[:100]
        raise OutboundError(
            f"{shown!r} is not a URL: give the whole address, e.g. https://login.example.com/oauth/token.",
            error="invalid_url",
            permanent=True,
        )
    if parts.scheme == "https":
        return
    if parts.scheme == "http" and parts.hostname and _allowed_host(parts.hostname):
        return
    raise OutboundError(
        f"Refused to call {parts.scheme}://{parts.hostname or ''}: provider URLs must use https "
        "(plain http is allowed only for hosts in OUTBOUND_HTTP_ALLOWED_HOSTS).",
        error="insecure_url",
        permanent=True,
    )


# --- OUTBOUND_BLOCK_PRIVATE_ADDRESSES (SSRF protection) -------------------------------------------------------------
#
# Hosts in OUTBOUND_HTTP_ALLOWED_HOSTS are exempt, whatever the scheme: the operator named them explicitly (loopback
# in development, an on-premises identity provider), and the block exists for the URLs an administrator types in.
#
# Two checks, because resolving a name and connecting to it are separate steps (DNS rebinding: a name can answer
# with a public address to the check and a private one to the connection):
# 1. check_destination(), from _PolicySession.send on every request and redirect hop: resolves the host and refuses
#    if ANY of its addresses is blocked. It gives the clear message early, and it is the only check for requests
#    through the forward proxy, where the proxy resolves the name itself (the proxy's own rules must cover
#    rebinding there).
# 2. _AddressGuard, on every direct connection: checks the address the socket actually connected to, before a byte
#    of the request (or of a TLS handshake) is sent. That pins the check to the connection, rebinding or not.
# Name resolution (getaddrinfo) has no timeout of its own: the system resolver's applies.


def _allowed_host(host: str) -> bool:
    """A host the operator named: over plain http (OUTBOUND_HTTP_ALLOWED_HOSTS) or on a private network
    (OUTBOUND_ALLOWED_PRIVATE), either way exempt from the private-address guard."""
    host = host.strip("[]").rstrip(".").lower()
    named = [*settings.OUTBOUND_HTTP_ALLOWED_HOSTS, *settings.OUTBOUND_ALLOWED_PRIVATE]
    return host in {allowed.strip("[]").rstrip(".").lower() for allowed in named}


def _allowed_address(address: str) -> bool:
    """An address in a network the operator listed in OUTBOUND_ALLOWED_PRIVATE (an internal identity provider)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    for entry in settings.OUTBOUND_ALLOWED_PRIVATE:
        try:
            if ip in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:  # a host name: _allowed_host's
            continue
    return False


def _embedded_ipv4(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries and reaches (mapped, 6to4, NAT64), which is what gets called."""
    if ip.version == 4:
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in NAT64_PREFIX:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def blocked_kind(address: str) -> str:
    """Why an IP address may not be called with OUTBOUND_BLOCK_PRIVATE_ADDRESSES on ("" if it may): only global
    unicast addresses may, judged by the IPv4 address an IPv6 one carries, if it carries one."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    ip = _embedded_ipv4(ip) or ip
    site_local = ip.version == 6 and ip.is_site_local  # fec0::/10: deprecated, still routed in some networks
    if ip.is_global and not ip.is_multicast and not site_local:
        return ""
    for kind, flag in (
        ("an unspecified", ip.is_unspecified),
        ("a loopback", ip.is_loopback),
        ("a link-local", ip.is_link_local),
        ("a multicast", ip.is_multicast),
        ("a site-local", site_local),
        ("a private", ip.is_private),
        ("a reserved", ip.is_reserved),
    ):
        if flag:
            return kind
    # e.g. 100.64.0.0/10 (carrier-grade NAT, some clouds' metadata services): neither private nor public.
    return "a non-public"


def _blocked_error(scheme: str, host: str, kind: str) -> OutboundError:
    return OutboundError(
        f"Refused to call {scheme}://{host}: it resolves to {kind} address, which Control Room does not call "
        "(OUTBOUND_BLOCK_PRIVATE_ADDRESSES; an operator allows an internal host by listing its name or network in "
        "OUTBOUND_ALLOWED_PRIVATE).",
        error="blocked_address",
        permanent=True,
    )


def check_destination(url: str) -> None:
    """With OUTBOUND_BLOCK_PRIVATE_ADDRESSES, refuse a host if any address it resolves to is not public."""
    if not settings.OUTBOUND_BLOCK_PRIVATE_ADDRESSES:
        return
    parts = urlsplit(url)
    host = parts.hostname or ""
    if _allowed_host(host):
        return
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        # An IPv4 or IPv6 socket address: (address text, port, ...).
        addresses = {str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)}
    except (OSError, UnicodeError, ValueError):
        raise OutboundError(
            f"Could not resolve {host} to check it against OUTBOUND_BLOCK_PRIVATE_ADDRESSES.",
            error="dns_failure",
            permanent=False,
        ) from None
    for address in sorted(addresses):
        kind = blocked_kind(address)
        if kind and not _allowed_address(address):
            raise _blocked_error(parts.scheme, host, kind)


def _deadline_error() -> OutboundError:
    return OutboundError(
        f"The provider did not answer within {settings.OUTBOUND_TIMEOUT:g} seconds.", error="timeout", permanent=False
    )


def _refuse_inside_a_transaction() -> None:
    """A provider call holds what the transaction locked for as long as the provider takes, and a refresh token
    the provider rotates is lost if the transaction then rolls back. The test runner's own transaction is not
    one: Django marks it."""
    open_blocks = [
        block
        for connection in db_connections.all(initialized_only=True)
        for block in connection.atomic_blocks
        if not getattr(block, "_from_testcase", False)
    ]
    if not open_blocks:
        return
    if settings.OUTBOUND_RAISE_IN_TRANSACTION:
        raise CallInTransaction("A provider is being called inside a database transaction; call it outside.")
    logger.error("A provider is being called inside a database transaction; it should be called outside.")


class _AddressGuard(deadline.DeadlineConnection):
    """Mixin for direct urllib3 connections: refuse a blocked peer address right after the TCP connect."""

    host: str

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        if settings.OUTBOUND_BLOCK_PRIVATE_ADDRESSES and not _allowed_host(self.host):
            peer = sock.getpeername()[0]
            kind = blocked_kind(peer)
            if kind and not _allowed_address(peer):
                sock.close()
                raise _blocked_error("https" if isinstance(self, HTTPSConnection) else "http", self.host, kind)
        return sock


KEEP_ALIVE_IDLE = 1.0  # seconds a kept-alive connection may have been idle and still be reused
idle_clock = time.monotonic  # what idle time is measured by (a test gives its own clock)


class _RecentConnections:
    """Mixin for urllib3 pools: a kept-alive connection idle for longer than KEEP_ALIVE_IDLE is closed, not
    reused. Servers close idle connections on their own schedule (gunicorn after 2 s, nginx 75 s, load balancers
    60 s), and a request sent just as one does is lost without an answer; a refresh must not be sent twice, so
    it could not be retried. A provider in steady use keeps its connections; a quiet one gets a new one."""

    def _get_conn(self, timeout: float | None = None) -> HTTPConnection:
        conn = super()._get_conn(timeout)  # type: ignore[misc]
        if not conn.is_closed and idle_clock() - getattr(conn, "pooled_at", 0.0) > KEEP_ALIVE_IDLE:
            conn.close()
        return conn

    def _put_conn(self, conn: HTTPConnection | None) -> None:
        if conn is not None:
            conn.pooled_at = idle_clock()  # type: ignore[attr-defined]
        super()._put_conn(conn)  # type: ignore[misc]


_POOL_MIXINS = (_RecentConnections, deadline.DeadlinePool)


def _pool_classes(guard: type) -> dict[str, type]:
    http = type("HTTPConnection", (guard, HTTPConnection), {})
    https = type("HTTPSConnection", (guard, HTTPSConnection), {})
    return {
        "http": type("HTTPConnectionPool", (*_POOL_MIXINS, HTTPConnectionPool), {"ConnectionCls": http}),
        "https": type("HTTPSConnectionPool", (*_POOL_MIXINS, HTTPSConnectionPool), {"ConnectionCls": https}),
    }


_DIRECT_POOLS = _pool_classes(_AddressGuard)
_PROXY_POOLS = _pool_classes(deadline.DeadlineConnection)


class _GuardedAdapter(requests.adapters.HTTPAdapter):
    """Direct connections get the address guard; connections to the forward proxy do not (the proxy resolves and
    connects). Both are watched by the call's deadline."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _DIRECT_POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> urllib3.ProxyManager:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        manager.pool_classes_by_scheme = _PROXY_POOLS
        return manager


def _read_bounded(response: requests.Response, call: deadline.Call) -> None:
    """Read the whole answer now, at most MAX_RESPONSE_BYTES of it, within the call's deadline."""
    chunks, size = [], 0
    for chunk in response.iter_content(64 * 1024):
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            response.close()
            raise OutboundError(
                f"The provider's answer was too large (over {MAX_RESPONSE_BYTES // 1024} KiB); it is not a token "
                "response.",
                error="invalid_response",
                permanent=False,
                status=response.status_code,
            )
        chunks.append(chunk)
    if call.expired:
        raise _deadline_error()  # an answer cut short by the watchdog can look complete
    response._content = b"".join(chunks)  # what requests keeps once it has read the body itself


class PolicySession(OAuth2Session):
    """Every request, including each redirect hop, passes the URL policy and gets the proxy, and each call (a
    request with its redirects) one deadline and a bounded answer. Never inside a database transaction.

    A streaming session (streaming_session) leaves the answer's body to its caller: the deadline then covers
    connecting, sending the request and the answer's headers, and each later read has the socket timeout."""

    streaming = False
    seconds = 0.0  # the call's deadline; 0: OUTBOUND_TIMEOUT

    def request(self, *args: Any, **kwargs: Any) -> requests.Response:
        return self._within_deadline(lambda: super(PolicySession, self).request(*args, **kwargs))

    def prepared_send(self, request: requests.PreparedRequest) -> requests.Response:
        """A request the caller prepared, sent as it is: no session settings merged in (no default headers), no
        redirect followed. The API proxy's way: Session.request's merging costs more CPU than its call."""
        return self._within_deadline(lambda: self.send(request, allow_redirects=False))

    def _within_deadline(self, call_it: Callable[[], requests.Response]) -> requests.Response:
        _refuse_inside_a_transaction()
        with deadline.call_deadline(self.seconds or settings.OUTBOUND_TIMEOUT) as call:
            try:
                return call_it()
            except DeadlinePassed:
                raise _deadline_error() from None
            except (requests.RequestException, urllib3.exceptions.HTTPError, OSError):
                if call.expired or call.remaining() <= 0:  # the watchdog, or a socket timeout at the deadline
                    raise _deadline_error() from None
                raise

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        check_url(request.url or "")
        check_destination(request.url or "")
        seconds = self.seconds or settings.OUTBOUND_TIMEOUT
        call = deadline.current_call() or deadline.Call(deadline=time.monotonic() + seconds)
        if call.remaining() <= 0:
            raise _deadline_error()
        kwargs["proxies"] = proxies_for(request.url or "")
        kwargs["timeout"] = min(seconds, call.remaining())
        kwargs["stream"] = True  # read below, bounded (or by the caller of a streaming session)
        # On a redirect hop requests puts the proxy credentials into this header (rebuild_proxies), even when the
        # new host bypasses the proxy: it would go to the provider in clear. urllib3 adds it itself for the proxy.
        request.headers.pop("Proxy-Authorization", None)
        response = super().send(request, **kwargs)
        if response.status_code == 407 and kwargs["proxies"]:
            # Plain-http requests through the proxy get its 407 as their response (https ones get a ProxyError).
            response.close()
            raise proxy_auth_error()
        if not self.streaming:
            _read_bounded(response, call)
        return response

    def get_redirect_target(self, response: requests.Response) -> str | None:
        # Token and revocation endpoints answer directly (RFC 6749 3.2, RFC 7009 2); following a 307/308 would
        # send the code, the refresh token or the client secret on to wherever the redirect points.
        if response.request is not None and response.request.method == "POST":
            return None
        return super().get_redirect_target(response)


_adapter_lock = threading.Lock()
_adapters: dict[int, _GuardedAdapter] = {}  # by pid: a forked child must not share its parent's sockets


def _shared_adapter() -> _GuardedAdapter:
    """The process's connection pools, kept alive between calls: a refresh reuses the TCP (and TLS) connection
    to its token URL rather than opening one per call. urllib3 pools are thread-safe; a pooled connection the
    provider has closed is noticed before it is reused."""
    with _adapter_lock:
        if os.getpid() not in _adapters:
            # Pools for up to 100 hosts (the least recently used is closed beyond that), each keeping as many
            # idle connections as a worker has refresh threads.
            size = max(10, settings.REFRESH_CONCURRENCY)
            _adapters[os.getpid()] = _GuardedAdapter(pool_connections=100, pool_maxsize=size)
        return _adapters[os.getpid()]


def policy_session(**oauth2_session_options: Any) -> PolicySession:
    """A session (requests-oauthlib's, so OAuth flows can use it too) under the outbound policy."""
    session = PolicySession(**oauth2_session_options)
    # The operator's proxy settings apply, not the process environment's.
    session.trust_env = False
    adapter = _shared_adapter()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def streaming_session(seconds: float) -> PolicySession:
    """A session for the API proxy: the same policy, but the answer's body is the caller's to stream (never held
    whole), and `seconds` bounds connecting, sending the request and the answer's headers. One a thread, kept:
    making a session (requests makes two adapters with their pools, which the shared one replaces) costs more than
    a proxied call's own work. It keeps no cookie, the API's cookies being no bot's, and nothing else between calls
    (the proxy sends prepared requests: no session defaults are merged into them)."""
    session = getattr(_streaming_sessions, "session", None)
    if session is None or _streaming_sessions.pid != os.getpid():
        session = policy_session()
        session.streaming = True
        session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))  # no domain: none kept
        _streaming_sessions.session, _streaming_sessions.pid = session, os.getpid()
    session.seconds = seconds
    return session


_streaming_sessions = threading.local()
