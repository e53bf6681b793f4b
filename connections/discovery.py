"""A connection's URLs from its issuer's discovery document (OpenID Connect Discovery 1.0, RFC 8414), for a
connection whose provider type has no preset for them and whose administrator gave only the issuer.

Used before a connection is saved (the admin, apply_config) and outside any transaction, as every provider call
is; what it finds is stored in the connection's URL fields, so nothing depends on the document afterwards.
"""

from collections.abc import Mapping
from typing import Any

from connections import oauth_client
from connections.outbound import ProviderError, check_url
from providers.models import GrantType, Provider

# The connection's URL fields, and the metadata that gives each (RFC 8414 section 2; RFC 7009 for revocation).
URL_METADATA = {
    "authorization_url": "authorization_endpoint",
    "token_url": "token_endpoint",
    "revocation_url": "revocation_endpoint",
}
URL_LABELS = {"authorization_url": "Authorization URL", "token_url": "Token URL", "revocation_url": "Revocation URL"}


def urls_to_discover(data: Mapping[str, Any], provider: Provider | None) -> list[str]:
    """The URL fields of this form data that are blank with no preset of the provider type to fall back on, when
    the data names an issuer; [] when nothing is to be discovered."""
    if not (data.get("issuer") or "").strip() or provider is None:
        return []
    needed = ["token_url", "revocation_url"]
    if data.get("grant_type") != GrantType.CLIENT_CREDENTIALS:
        needed.insert(0, "authorization_url")
    return [name for name in needed if not (data.get(name) or "").strip() and not getattr(provider, name)]


def issuer_urls_discover(issuer: str, fields: list[str]) -> dict[str, str]:
    """These URL fields from the issuer's discovery document: those it gives (the token URL, and the
    authorization URL when asked for, must be there). ProviderError, in words for a person, when the document
    cannot be had or cannot be trusted."""
    issuer = issuer.strip()
    document = oauth_client.discovery_document(issuer)
    named = document.get("issuer")
    if named != issuer:  # RFC 8414 section 3.3, OpenID Connect Discovery 1.0 section 4.3
        raise ProviderError(
            f"The discovery document of {oauth_client.provider_text(issuer)} names the issuer "
            f"{oauth_client.provider_text(named)!r}: it must be the same identifier, so it is not used.",
            error="invalid_response",
            permanent=False,
        )
    found: dict[str, str] = {}
    for field in fields:
        name = URL_METADATA[field]
        url = document.get(name)
        if url is None and field == "revocation_url":
            continue  # optional: a provider without revocation
        if not isinstance(url, str) or not url:
            raise ProviderError(
                f"The discovery document of {oauth_client.provider_text(issuer)} gives no {name}.",
                error="invalid_response",
                permanent=False,
            )
        try:
            check_url(url)  # the outbound policy: https, or a host the operator allows
        except ProviderError as exc:
            raise ProviderError(
                f"The discovery document's {name} is refused: {exc.message}", error=exc.error, permanent=False
            ) from None
        found[field] = url
    return found
