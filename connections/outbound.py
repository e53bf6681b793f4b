"""The outbound policy every call to a provider passes: https only (except hosts the operator allows), the SSRF
guard, the forward proxy, and the timeout. connections.oauth_client builds its sessions here; so does anything
else that calls out on an operator's behalf.
"""

import ipaddress
import re
import socket
from typing import Any
from urllib.parse import urlsplit

import requests
from django.conf import settings
from requests_oauthlib import OAuth2Session
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool


class ProviderError(Exception):
    """A provider call failed. `message` is a sentence for a person and never contains a secret."""

    def __init__(self, message: str, *, error: str, permanent: bool, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.error = error
        self.permanent = permanent
        self.status = status


def check_url(url: str) -> None:
    """https only, except hosts the operator allows over http (loopback in development)."""
    try:
        parts = urlsplit(url)
        parts.hostname  # noqa: B018 - raises ValueError for a malformed bracketed host
    except ValueError:
        raise ProviderError("This is not a valid URL.", error="invalid_url", permanent=True) from None
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and parts.hostname and _allowed_host(parts.hostname):
        return
    raise ProviderError(
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
    host = host.strip("[]").rstrip(".").lower()
    return host in {allowed.strip("[]").rstrip(".").lower() for allowed in settings.OUTBOUND_HTTP_ALLOWED_HOSTS}


def blocked_kind(address: str) -> str:
    """Why an IP address may not be called with OUTBOUND_BLOCK_PRIVATE_ADDRESSES on ("" if it may)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    for kind, flag in (
        ("an unspecified", ip.is_unspecified),
        ("a loopback", ip.is_loopback),
        ("a link-local", ip.is_link_local),
        ("a multicast", ip.is_multicast),
        ("a private", ip.is_private),
        ("a reserved", ip.is_reserved),
        # e.g. 100.64.0.0/10 (carrier-grade NAT, some clouds' metadata services): neither private nor public.
        ("a non-public", not ip.is_global),
    ):
        if flag:
            return kind
    return ""


def _blocked_error(scheme: str, host: str, kind: str) -> ProviderError:
    return ProviderError(
        f"Refused to call {scheme}://{host}: it resolves to {kind} address, and OUTBOUND_BLOCK_PRIVATE_ADDRESSES "
        "forbids calling those (list the host in OUTBOUND_HTTP_ALLOWED_HOSTS to allow it).",
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
        addresses = {info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)}
    except (OSError, UnicodeError, ValueError):
        raise ProviderError(
            f"Could not resolve {host} to check it against OUTBOUND_BLOCK_PRIVATE_ADDRESSES.",
            error="dns_failure",
            permanent=False,
        ) from None
    for address in sorted(addresses):
        kind = blocked_kind(address)
        if kind:
            raise _blocked_error(parts.scheme, host, kind)


class _AddressGuard:
    """Mixin for urllib3 connections: refuse a blocked peer address right after the TCP connect."""

    host: str

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()  # type: ignore[misc]
        if settings.OUTBOUND_BLOCK_PRIVATE_ADDRESSES and not _allowed_host(self.host):
            kind = blocked_kind(sock.getpeername()[0])
            if kind:
                sock.close()
                raise _blocked_error("https" if isinstance(self, HTTPSConnection) else "http", self.host, kind)
        return sock


class _GuardedHTTPConnection(_AddressGuard, HTTPConnection):
    pass


class _GuardedHTTPSConnection(_AddressGuard, HTTPSConnection):
    pass


class _GuardedHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = _GuardedHTTPConnection


class _GuardedHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


class _GuardedAdapter(requests.adapters.HTTPAdapter):
    """Direct connections get _AddressGuard; connections to the forward proxy (proxy_manager_for) do not."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _GuardedHTTPConnectionPool,
            "https": _GuardedHTTPSConnectionPool,
        }


# --- The forward proxy ------------------------------------------------------------------------------------------------


def _proxy_label() -> str:
    """The proxy's host:port, never its credentials."""
    proxy = urlsplit(settings.OUTBOUND_PROXY_URL)
    return f"{proxy.hostname}:{proxy.port}"


def proxy_auth_error() -> ProviderError:
    return ProviderError(
        f"The outbound proxy {_proxy_label()} refused authentication (HTTP 407 Proxy Authentication Required): "
        "check the user and password in OUTBOUND_PROXY_URL.",
        error="proxy_authentication_failed",
        permanent=False,
        status=407,
    )


def proxy_error(what: str, exc: requests.exceptions.ProxyError) -> ProviderError:
    # urllib3 reports a refused CONNECT as "Tunnel connection failed: 407 Proxy Authentication Required".
    if re.search(r"Tunnel connection failed: 407\b", str(exc)):
        return proxy_auth_error()
    return ProviderError(
        f"Could not reach the provider for the {what} through the outbound proxy {_proxy_label()} (the proxy "
        "refused or dropped the connection).",
        error="proxy_error",
        permanent=False,
    )


def _bypasses_proxy(host: str) -> bool:
    for entry in settings.OUTBOUND_PROXY_BYPASS:
        entry = entry.strip().lower()
        if not entry:
            continue
        if host == entry or host.endswith("." + entry.lstrip(".")):
            return True
        try:
            if ipaddress.ip_address(host) in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue
    return False


def proxies_for(url: str) -> dict[str, str]:
    host = (urlsplit(url).hostname or "").lower()
    if not settings.OUTBOUND_PROXY_URL or _bypasses_proxy(host):
        return {}
    return {"http": settings.OUTBOUND_PROXY_URL, "https": settings.OUTBOUND_PROXY_URL}


class PolicySession(OAuth2Session):
    """Every request, including each redirect hop, passes the URL policy and gets the timeout and proxy."""

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        check_url(request.url or "")
        check_destination(request.url or "")
        kwargs["proxies"] = proxies_for(request.url or "")
        kwargs["timeout"] = settings.OUTBOUND_TIMEOUT
        # On a redirect hop requests puts the proxy credentials into this header (rebuild_proxies), even when the
        # new host bypasses the proxy: it would go to the provider in clear. urllib3 adds it itself for the proxy.
        request.headers.pop("Proxy-Authorization", None)
        response = super().send(request, **kwargs)
        if response.status_code == 407 and kwargs["proxies"]:
            # Plain-http requests through the proxy get its 407 as their response (https ones get a ProxyError).
            response.close()
            raise proxy_auth_error()
        return response

    def get_redirect_target(self, response: requests.Response) -> str | None:
        # Token and revocation endpoints answer directly (RFC 6749 3.2, RFC 7009 2); following a 307/308 would
        # send the code, the refresh token or the client secret on to wherever the redirect points.
        if response.request is not None and response.request.method == "POST":
            return None
        return super().get_redirect_target(response)


def policy_session(**oauth2_session_options: Any) -> PolicySession:
    """A session (requests-oauthlib's, so OAuth flows can use it too) under the outbound policy."""
    session = PolicySession(**oauth2_session_options)
    # The operator's proxy settings apply, not the process environment's.
    session.trust_env = False
    session.mount("http://", _GuardedAdapter())
    session.mount("https://", _GuardedAdapter())
    return session
