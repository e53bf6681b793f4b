"""The only module that talks to providers: requests-oauthlib sessions with our timeout, proxy and URL policy.

Services build a ClientConfig from a connection and call the functions below; they get back a TokenResponse or
a ProviderError that says, in words, what went wrong and whether retrying can help.
"""

import ipaddress
import os
import re
import socket
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests
from django.conf import settings
from oauthlib.oauth2 import BackendApplicationClient, OAuth2Error, WebApplicationClient
from requests_oauthlib import OAuth2Session
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

# oauthlib's own https check cannot allow the loopback hosts an operator lists; check_url() below replaces it
# and runs on every request, redirects included. Scope changes by the provider are normal (RFC 6749 5.1).
os.environ["OAUTHLIB_INSECURE_TRANSPORT"] = "1"
os.environ["OAUTHLIB_RELAX_TOKEN_SCOPE"] = "1"  # noqa: S105 - a flag, not a secret

# RFC 6749 5.2 errors that retrying cannot fix: a person must authorize again or fix the connection.
PERMANENT_ERRORS = frozenset(
    {"invalid_grant", "invalid_client", "unauthorized_client", "unsupported_grant_type", "invalid_scope"}
)
STANDARD_FIELDS = frozenset(
    {"access_token", "refresh_token", "id_token", "token_type", "scope", "expires_in", "expires_at"}
)
SECRET_WORDS = ("token", "secret", "password", "code", "assertion")


class ProviderError(Exception):
    """A provider call failed. `message` is a sentence for a person and never contains a secret."""

    def __init__(self, message: str, *, error: str, permanent: bool, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.error = error
        self.permanent = permanent
        self.status = status


@dataclass(frozen=True)
class ClientConfig:
    client_id: str
    client_secret: str
    authorization_url: str
    token_url: str
    revocation_url: str = ""
    scopes: tuple[str, ...] = ()
    scope_separator: str = " "
    extra_authorization_params: dict[str, str] = field(default_factory=dict)
    client_auth_method: str = "basic"
    redirect_uri: str = ""


@dataclass(frozen=True)
class TokenResponse:
    access_token: str
    refresh_token: str
    id_token: str
    token_type: str
    scope: str
    expires_in: int | None
    extra: dict[str, Any]


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


def _proxy_auth_error() -> ProviderError:
    return ProviderError(
        f"The outbound proxy {_proxy_label()} refused authentication (HTTP 407 Proxy Authentication Required): "
        "check the user and password in OUTBOUND_PROXY_URL.",
        error="proxy_authentication_failed",
        permanent=False,
        status=407,
    )


def _proxy_error(what: str, exc: requests.exceptions.ProxyError) -> ProviderError:
    # urllib3 reports a refused CONNECT as "Tunnel connection failed: 407 Proxy Authentication Required".
    if re.search(r"Tunnel connection failed: 407\b", str(exc)):
        return _proxy_auth_error()
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


class _PolicySession(OAuth2Session):
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
            raise _proxy_auth_error()
        return response

    def get_redirect_target(self, response: requests.Response) -> str | None:
        # Token and revocation endpoints answer directly (RFC 6749 3.2, RFC 7009 2); following a 307/308 would
        # send the code, the refresh token or the client secret on to wherever the redirect points.
        if response.request is not None and response.request.method == "POST":
            return None
        return super().get_redirect_target(response)


def _check_token_response(response: requests.Response) -> requests.Response:
    """Turn what oauthlib would misread (5xx pages, HTML, rate limits) into a ProviderError."""
    status = response.status_code
    if status == 429 or status >= 500:
        raise ProviderError(
            f"The provider's token URL answered HTTP {status}; it will be retried.",
            error="temporarily_unavailable",
            permanent=False,
            status=status,
        )
    try:
        body = response.json()
    except ValueError:
        content_type = response.headers.get("Content-Type", "unknown").split(";")[0]
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
    return response


def _session(config: ClientConfig, client: WebApplicationClient | BackendApplicationClient) -> OAuth2Session:
    session = _PolicySession(
        client=client,
        redirect_uri=config.redirect_uri or None,
        scope=list(config.scopes) or None,
    )
    # The operator's proxy settings apply, not the process environment's.
    session.trust_env = False
    session.mount("http://", _GuardedAdapter())
    session.mount("https://", _GuardedAdapter())
    for hook in ("access_token_response", "refresh_token_response"):
        session.register_compliance_hook(hook, _check_token_response)
    return session


def _auth_kwargs(config: ClientConfig) -> dict[str, Any]:
    if config.client_auth_method == "body":
        return {"include_client_id": True, "client_secret": config.client_secret}
    return {"auth": requests.auth.HTTPBasicAuth(config.client_id, config.client_secret)}


def _call(what: str, func: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    try:
        return func(*args, **kwargs)
    except ProviderError:
        raise
    except OAuth2Error as exc:
        if exc.error == "missing_token" or type(exc).__name__ == "MissingTokenError":
            raise ProviderError(
                f"The provider's {what} response has no access_token.", error="invalid_response", permanent=False
            ) from None
        description = f" ({exc.description})" if exc.description else ""
        raise ProviderError(
            f"The provider refused the {what}: {exc.error}{description}.",
            error=exc.error,
            permanent=exc.error in PERMANENT_ERRORS,
            status=exc.status_code,
        ) from None
    except requests.exceptions.ProxyError as exc:
        raise _proxy_error(what, exc) from None
    except requests.Timeout:
        raise ProviderError(
            f"The provider did not answer the {what} within {settings.OUTBOUND_TIMEOUT:g} seconds.",
            error="timeout",
            permanent=False,
        ) from None
    except requests.ConnectionError:
        raise ProviderError(
            f"Could not reach the provider for the {what} (connection refused, closed or DNS failure).",
            error="connection_error",
            permanent=False,
        ) from None
    except requests.RequestException as exc:
        raise ProviderError(
            f"The {what} request failed: {type(exc).__name__}.", error="request_failed", permanent=False
        ) from None


def _token_response(token: dict[str, Any]) -> TokenResponse:
    access_token = token.get("access_token")
    if not access_token or not isinstance(access_token, str):
        raise ProviderError(
            "The provider's token response has no access_token.", error="invalid_response", permanent=False
        )
    scope = token.get("scope") or ""
    if isinstance(scope, list | tuple):
        scope = " ".join(scope)
    expires_in = token.get("expires_in")
    try:
        expires_in = int(expires_in) if expires_in not in (None, "") else None
    except (TypeError, ValueError):
        expires_in = None
    extra = {
        key: value
        for key, value in token.items()
        if key not in STANDARD_FIELDS and not any(word in key.lower() for word in SECRET_WORDS)
    }
    return TokenResponse(
        access_token=access_token,
        refresh_token=str(token.get("refresh_token") or ""),
        id_token=str(token.get("id_token") or ""),
        token_type=str(token.get("token_type") or "Bearer"),
        scope=str(scope),
        expires_in=expires_in,
        extra=extra,
    )


def new_code_verifier() -> str:
    return WebApplicationClient("").create_code_verifier(64)


def authorization_url(config: ClientConfig, *, state: str, code_verifier: str = "") -> str:
    check_url(config.authorization_url)
    client = WebApplicationClient(config.client_id)
    params: dict[str, str] = dict(config.extra_authorization_params)
    if code_verifier:
        params["code_challenge"] = client.create_code_challenge(code_verifier, "S256")
        params["code_challenge_method"] = "S256"
    # oauthlib joins scopes with spaces (RFC 6749 3.3); a provider that wants another separator gets one string.
    scope = config.scope_separator.join(config.scopes) if config.scope_separator != " " else list(config.scopes)
    return client.prepare_request_uri(
        config.authorization_url, redirect_uri=config.redirect_uri, scope=scope or None, state=state, **params
    )


def exchange_code(config: ClientConfig, *, code: str, code_verifier: str = "") -> TokenResponse:
    session = _session(config, WebApplicationClient(config.client_id))
    extra = {"code_verifier": code_verifier} if code_verifier else {}
    token = _call(
        "authorization code exchange",
        session.fetch_token,
        config.token_url,
        code=code,
        **_auth_kwargs(config),
        **extra,
    )
    return _token_response(token)


def refresh(config: ClientConfig, *, refresh_token: str) -> TokenResponse:
    session = _session(config, WebApplicationClient(config.client_id))
    # Scope is omitted on refresh: the grant keeps its scope (RFC 6749 6), and some providers reject a repeat.
    session.scope = None
    auth = _auth_kwargs(config)
    body_credentials = (
        {"client_id": config.client_id, "client_secret": config.client_secret} if "auth" not in auth else {}
    )
    token = _call(
        "token refresh",
        session.refresh_token,
        config.token_url,
        refresh_token=refresh_token,
        auth=auth.get("auth"),
        **body_credentials,
    )
    return _token_response(token)


def client_credentials(config: ClientConfig) -> TokenResponse:
    session = _session(config, BackendApplicationClient(config.client_id))
    # fetch_token does not send the session's scope for this grant; it must be passed along (RFC 6749 4.4.2).
    scope = {"scope": list(config.scopes)} if config.scopes else {}
    token = _call("client credentials request", session.fetch_token, config.token_url, **_auth_kwargs(config), **scope)
    return _token_response(token)


def revoke(config: ClientConfig, *, token: str, token_type_hint: str) -> None:
    """RFC 7009 revocation. The provider answers 200 even for unknown tokens; anything else is an error."""
    session = _session(config, WebApplicationClient(config.client_id))
    data = {"token": token, "token_type_hint": token_type_hint}
    auth = _auth_kwargs(config)
    if "auth" not in auth:
        data.update(client_id=config.client_id, client_secret=config.client_secret)
    try:
        response = session.post(config.revocation_url, data=data, auth=auth.get("auth"))
    except requests.exceptions.ProxyError as exc:
        raise _proxy_error("token revocation", exc) from None
    except requests.RequestException as exc:
        raise ProviderError(
            f"Could not reach the provider's revocation URL ({type(exc).__name__}).",
            error="connection_error",
            permanent=False,
        ) from None
    if not 200 <= response.status_code < 300:
        raise ProviderError(
            f"The provider's revocation URL answered HTTP {response.status_code}.",
            error="revocation_failed",
            permanent=False,
            status=response.status_code,
        )
