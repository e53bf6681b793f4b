"""A connection's URLs, PKCE methods and client authentication from its issuer's discovery document (OpenID
Connect Discovery 1.0, RFC 8414): for a connection whose provider type has no preset for its URLs and whose
administrator gave only the issuer (on save), and for the admin's Discover button (on demand).

Used before a connection is saved (the admin, apply_config) and outside any transaction, as every provider call
is; what it finds is stored in the connection's URL fields, so nothing depends on the document afterwards.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from connections.errors import OutboundError, ProviderError
from connections.oauth import client as oauth_client
from connections.outbound.policy import check_url
from providers.models import CLIENT_AUTH_METHOD_NAMES, GrantType, Provider, urls_required_by

# The connection's URL fields, and the metadata that gives each (RFC 8414 section 2; RFC 7009 for revocation).
URL_METADATA = {
    "authorization_url": "authorization_endpoint",
    "token_url": "token_endpoint",
    "revocation_url": "revocation_endpoint",
    "device_authorization_url": "device_authorization_endpoint",  # RFC 8628 4
}
URL_LABELS = {
    "authorization_url": "Authorization URL",
    "token_url": "Token URL",
    "revocation_url": "Revocation URL",
    "device_authorization_url": "Device authorization URL",
}


def urls_to_discover(data: Mapping[str, Any], provider: Provider | None) -> list[str]:
    """The URL fields of this form data that are blank with no preset of the provider type to fall back on, when
    the data names an issuer; [] when nothing is to be discovered."""
    if not (data.get("issuer") or "").strip() or provider is None:
        return []
    needed = [*urls_required_by(str(data.get("grant_type") or "")), "revocation_url"]
    return [name for name in needed if not (data.get(name) or "").strip() and not getattr(provider, name)]


@dataclass(frozen=True)
class Discovered:
    """What an issuer's discovery document says that a connection can use, checked."""

    urls: dict[str, str]  # URL field -> URL, for those the document gives
    pkce_methods: list[str] | None  # code_challenge_methods_supported; None when the document does not say
    client_auth_methods: list[str]  # token_endpoint_auth_methods_supported (RFC 8414's default when absent)

    def client_auth_method_for(self, provider: Provider) -> str | None:
        """The connection's client authentication for this issuer: "" when the provider type's own method is
        accepted, else the first accepted method Control Room has, or None when it has none of them."""
        if CLIENT_AUTH_METHOD_NAMES[provider.client_auth_method] in self.client_auth_methods:
            return ""
        return next((m for m, name in CLIENT_AUTH_METHOD_NAMES.items() if name in self.client_auth_methods), None)

    def summary(self) -> str:
        """The findings in one sentence for a person."""
        urls = "; ".join(f"{URL_LABELS[name]}: {url}" for name, url in self.urls.items())
        pkce = "not said" if self.pkce_methods is None else (", ".join(self.pkce_methods) or "none")
        return f"{urls}. PKCE methods: {pkce}. Client authentication: {', '.join(self.client_auth_methods)}."


def issuer_discover(issuer: str) -> Discovered:
    """Read and check the issuer's discovery document: it must name this issuer and give a token URL, and every
    URL it gives must pass the outbound policy. ProviderError, in words for a person, when it cannot be had or
    cannot be trusted."""
    issuer = issuer.strip()
    document = oauth_client.discovery_document(issuer)
    named = document.get("issuer")
    if named != issuer:  # RFC 8414 section 3.3, OpenID Connect Discovery 1.0 section 4.3
        raise _untrusted(
            f"The discovery document of {oauth_client.provider_text(issuer)} names the issuer "
            f"{oauth_client.provider_text(named)!r}: it must be the same identifier, so it is not used."
        )
    urls: dict[str, str] = {}
    for field, name in URL_METADATA.items():
        url = document.get(name)
        if url is None:
            continue
        if not isinstance(url, str) or not url:
            raise _untrusted(f"The discovery document of {oauth_client.provider_text(issuer)} gives no {name}.")
        try:
            check_url(url)  # the outbound policy: https, or a host the operator allows
        except OutboundError as exc:
            raise _untrusted(f"The discovery document's {name} is refused: {exc.message}", error=exc.error) from None
        urls[field] = url
    if "token_url" not in urls:
        raise _untrusted(f"The discovery document of {oauth_client.provider_text(issuer)} gives no token_endpoint.")
    return Discovered(
        urls=urls,
        pkce_methods=_names(document.get("code_challenge_methods_supported")),
        client_auth_methods=_names(document.get("token_endpoint_auth_methods_supported")) or ["client_secret_basic"],
    )


def discovered_form_data(data: Mapping[str, Any], provider: Provider | None) -> dict[str, str]:
    """The connection form fields that discovery fills in this form data: the blank URLs (urls_to_discover), and
    the client authentication when the provider type's is not one the issuer accepts. {} when the data needs no
    discovery; ProviderError when the document cannot be used for this connection."""
    fields = urls_to_discover(data, provider)
    if not fields or provider is None:
        return {}
    issuer = str(data["issuer"]).strip()
    found = issuer_discover(issuer)
    for field in fields:
        if field not in found.urls and field != "revocation_url":  # revocation is optional
            raise _untrusted(
                f"The discovery document of {oauth_client.provider_text(issuer)} gives no {URL_METADATA[field]}."
            )
    if data.get("grant_type") == GrantType.AUTHORIZATION_CODE_PKCE and found.pkce_methods is not None:
        if "S256" not in found.pkce_methods:
            raise _untrusted(
                f"{oauth_client.provider_text(issuer)} does not offer PKCE with S256 (its "
                f"code_challenge_methods_supported: {', '.join(found.pkce_methods) or 'none'}): choose "
                "Authorization Code without PKCE."
            )
    filled = {field: found.urls[field] for field in fields if field in found.urls}
    if not data.get("client_auth_method") and not _public(data, found):
        method = found.client_auth_method_for(provider)
        if method is None:
            raise _untrusted(
                f"{oauth_client.provider_text(issuer)} accepts only {', '.join(found.client_auth_methods)} at its "
                f"token URL; Control Room authenticates with {' or '.join(CLIENT_AUTH_METHOD_NAMES.values())}."
            )
        if method:
            filled["client_auth_method"] = method
    return filled


def _public(data: Mapping[str, Any], found: Discovered) -> bool:
    """A connection that authenticates with no secret at the token URL, where the issuer lets it: a JWT bearer
    assertion is its own credential; a PKCE or device client may be public ("none")."""
    grant = data.get("grant_type")
    public_grants = (GrantType.AUTHORIZATION_CODE_PKCE, GrantType.DEVICE_CODE)
    return grant == GrantType.JWT_BEARER or (grant in public_grants and "none" in found.client_auth_methods)


def _names(value: Any) -> list[str] | None:
    if not isinstance(value, list):
        return None
    return [str(name) for name in value if isinstance(name, str)]


def _untrusted(message: str, error: str = "invalid_response") -> ProviderError:
    return ProviderError(message, error=error, permanent=False)
