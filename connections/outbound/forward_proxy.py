"""The forward proxy every call to a provider goes through, when the operator sets one (OUTBOUND_PROXY_URL), and the
errors it causes, in words that never show its credentials."""

import ipaddress
import re
from urllib.parse import urlsplit

import requests
from django.conf import settings

from connections.errors import OutboundError


def _proxy_label() -> str:
    """The proxy's host:port, never its credentials."""
    proxy = urlsplit(settings.OUTBOUND_PROXY_URL)
    return f"{proxy.hostname}:{proxy.port}"


def proxy_auth_error() -> OutboundError:
    return OutboundError(
        f"The outbound proxy {_proxy_label()} refused authentication (HTTP 407 Proxy Authentication Required): "
        "check the user and password in OUTBOUND_PROXY_URL.",
        error="proxy_authentication_failed",
        permanent=False,
        status=407,
    )


def proxy_error(what: str, exc: requests.exceptions.ProxyError) -> OutboundError:
    # urllib3 reports a refused CONNECT as "Tunnel connection failed: 407 Proxy Authentication Required".
    if re.search(r"Tunnel connection failed: 407\b", str(exc)):
        return proxy_auth_error()
    return OutboundError(
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
