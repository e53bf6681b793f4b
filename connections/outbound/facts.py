"""The outbound policy in effect, in words for the admin's Outbound page, and what it would do with a URL: judged
by connections.outbound.policy's own checks (no second copy of its rules), without calling the URL."""

from dataclasses import dataclass
from urllib.parse import urlsplit

from django.conf import settings

from connections import errors
from connections.outbound import forward_proxy, policy


@dataclass(frozen=True)
class PolicySetting:
    label: str
    value: str
    variable: str  # the environment variable that sets it ("" for a constant of the code)
    explanation: str


@dataclass(frozen=True)
class Verdict:
    outcome: str  # not_a_url, refused_https, refused_private, unresolved, proxy, direct
    summary: str
    detail: str

    @property
    def refused(self) -> bool:
        return self.outcome not in ("proxy", "direct")


def masked_proxy_url(url: str) -> str:
    """The proxy's scheme, host and port; a user and password in it are never shown."""
    if not url:
        return ""
    parts = urlsplit(url)
    host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname
    credentials = "***:***@" if parts.username or parts.password else ""
    return f"{parts.scheme}://{credentials}{host}:{parts.port}"


def policy_in_effect() -> list[PolicySetting]:
    allowed = settings.OUTBOUND_HTTP_ALLOWED_HOSTS
    bypass = [entry for entry in settings.OUTBOUND_PROXY_BYPASS if entry.strip()]
    guard = settings.OUTBOUND_BLOCK_PRIVATE_ADDRESSES
    return [
        PolicySetting(
            "Forward proxy",
            masked_proxy_url(settings.OUTBOUND_PROXY_URL) or "None: every call goes directly",
            "OUTBOUND_PROXY_URL",
            "Every call to a provider, discovery document or webhook goes through it (scheme://[user:password@]"
            "host:port; the user and password are not shown here).",
        ),
        PolicySetting(
            "Bypass the proxy for",
            ", ".join(bypass) or "Nothing",
            "OUTBOUND_PROXY_BYPASS",
            "Host names (their subdomains too) and IP addresses or networks (CIDR) called directly, not through "
            "the proxy. Comma-separated.",
        ),
        PolicySetting(
            "Plain http allowed to",
            ", ".join(allowed) or "No host: https only",
            "OUTBOUND_HTTP_ALLOWED_HOSTS",
            "Every other URL must be https. Default: loopback (127.0.0.1, localhost, ::1) with DEBUG on, no host "
            "otherwise. These hosts are also exempt from the private-address guard.",
        ),
        PolicySetting(
            "Private-address guard",
            "On" if guard else "Off",
            "OUTBOUND_BLOCK_PRIVATE_ADDRESSES",
            "On, it refuses a host that resolves to any address that is not public: loopback, private (10/8, "
            "172.16/12, 192.168/16, fc00::/7), link-local (169.254/16 and cloud metadata services, fe80::/10), "
            "carrier-grade NAT (100.64/10), multicast, reserved or unspecified, including IPv4 addresses carried "
            "in IPv6 ones; checked again on the address each direct connection reaches. On unless DEBUG is.",
        ),
        PolicySetting(
            "Private hosts allowed",
            ", ".join(settings.OUTBOUND_ALLOWED_PRIVATE) or "None",
            "OUTBOUND_ALLOWED_PRIVATE",
            "Host names and networks (CIDR) on a private network that may be called all the same: an on-premises "
            "identity provider, an internal webhook receiver. Comma-separated.",
        ),
        PolicySetting(
            "Timeout",
            f"{settings.OUTBOUND_TIMEOUT:g} s",
            "OUTBOUND_TIMEOUT",
            "A hard deadline on each whole call (connecting, TLS, redirects and reading the answer), not only on "
            "each socket read. Name resolution is the system resolver's own.",
        ),
        PolicySetting(
            "Largest answer read",
            f"{policy.MAX_RESPONSE_BYTES // 1024} KiB",
            "",
            "A larger answer is not a token response: the call fails rather than read on.",
        ),
    ]


def url_verdict(url: str) -> Verdict:
    """What a call to the URL would meet, by the same checks every call passes (connections.outbound.policy), in their
    order. Nothing is sent to it; with the private-address guard on, its host name is looked up, as a call would."""
    try:
        policy.check_url(url)
        urlsplit(url).port  # noqa: B018 - raises ValueError for a port that is not a number, as a call would fail
    except errors.OutboundError as exc:
        if exc.error == "invalid_url":
            return Verdict("not_a_url", "Not a URL", exc.message)
        return Verdict("refused_https", "Refused by the https policy", exc.message)
    except ValueError:
        return Verdict("not_a_url", "Not a URL", "Its port is not a number from 0 to 65535.")
    try:
        policy.check_destination(url)
    except errors.OutboundError as exc:
        if exc.error == "blocked_address":
            return Verdict("refused_private", "Refused by the private-address guard", exc.message)
        return Verdict("unresolved", "Would fail now", exc.message)
    host = urlsplit(url).hostname or ""
    if forward_proxy.proxies_for(url):
        proxy = masked_proxy_url(settings.OUTBOUND_PROXY_URL)
        return Verdict("proxy", "Allowed: through the forward proxy", f"{host} would be called through {proxy}.")
    if settings.OUTBOUND_PROXY_URL:
        reason = f"{host} is in OUTBOUND_PROXY_BYPASS"
    else:
        reason = "no forward proxy is set"
    return Verdict("direct", "Allowed: directly", f"{host} would be called directly: {reason}.")
