"""The calls to the company's identity provider (OIDC_ISSUER), all under the outbound policy like every provider
call: its discovery document (cached), the code exchange, its signing keys, userinfo; and the ID token's checks
(OpenID Connect Core 1.0 section 3.1.3.7: signature, issuer, audience, expiry, nonce). Each failure is a
SignInRefused that says in words why nobody was signed in."""

import hashlib
import hmac
import logging
from typing import Any

import jwt
import requests
from django.conf import settings
from django.core.cache import cache

from connections.errors import OutboundError, ProviderError
from connections.oauth import client as oauth_client
from connections.outbound.policy import policy_session

logger = logging.getLogger(__name__)

METADATA_SECONDS = 3600  # the discovery document is read again after an hour (or when a key is not found)
KEYS_SECONDS = 600
# Asymmetric algorithms only: an HS256 ID token would be signed with the client secret, "none" with nothing.
SIGNING_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512")
CLOCK_LEEWAY_SECONDS = 60


class SignInRefused(Exception):
    """Nobody is signed in: `reason` says why, for the person in front of the sign-in page and the audit log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def redirect_uri() -> str:
    """Where the identity provider sends people back: from PUBLIC_URL, not from the request's Host (which a proxy in
    front may change). The one to register at the provider."""
    return f"{settings.PUBLIC_URL}/oidc/callback/"


def _cache_key(what: str) -> str:
    return f"people:{what}:{hashlib.sha256(settings.OIDC_ISSUER.encode()).hexdigest()[:16]}"


def provider_metadata(*, fresh: bool = False) -> dict[str, Any]:
    """The issuer's discovery document (OpenID Connect Discovery 1.0), checked to name this issuer."""
    key = _cache_key("metadata")
    document = None if fresh else cache.get(key)
    if document is None:
        try:
            document = oauth_client.discovery_document(settings.OIDC_ISSUER)
        except ProviderError as exc:
            raise SignInRefused(
                f"The identity provider's discovery document could not be read: {exc.message}"
            ) from None
        if document.get("issuer") != settings.OIDC_ISSUER:  # Discovery 1.0 section 4.3
            raise SignInRefused(
                f"The identity provider's discovery document names the issuer {str(document.get('issuer'))[:200]!r}, "
                f"not OIDC_ISSUER ({settings.OIDC_ISSUER}): check OIDC_ISSUER."
            )
        missing = [name for name in ("authorization_endpoint", "token_endpoint", "jwks_uri") if not document.get(name)]
        if missing:
            raise SignInRefused(f"The identity provider's discovery document gives no {', '.join(missing)}.")
        cache.set(key, document, METADATA_SECONDS)
    return document


def endpoint(name: str) -> str:
    """authorization_endpoint, token_endpoint, ... of the identity provider; "" when it has none."""
    return str(provider_metadata().get(name) or "")


def _request(what: str, method: str, url: str, **kwargs: Any) -> requests.Response:
    try:
        return policy_session().request(method, url, **kwargs)
    except OutboundError as exc:
        raise SignInRefused(f"The identity provider's {what} could not be reached: {exc.message}") from None
    except requests.RequestException as exc:
        raise SignInRefused(f"The identity provider's {what} could not be reached ({type(exc).__name__}).") from None


def _json_object(what: str, response: requests.Response) -> dict[str, Any]:
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if response.status_code != 200 or not isinstance(answer, dict):
        error = answer.get("error") if isinstance(answer, dict) else None
        said = f" ({oauth_client.provider_text(str(error))[:80]})" if error else ""
        raise SignInRefused(f"The identity provider's {what} answered HTTP {response.status_code}{said}.")
    return answer


def code_exchange(fields: dict[str, str]) -> dict[str, Any]:
    """The token answer for an authorization code (fields: code, redirect_uri, code_verifier, ...), the client
    authenticated as OIDC_CLIENT_AUTH_METHOD says (RFC 6749 section 2.3.1)."""
    data = {key: value for key, value in fields.items() if key not in ("client_id", "client_secret")}
    auth = None
    if settings.OIDC_CLIENT_AUTH_METHOD == "client_secret_post":
        data |= {"client_id": settings.OIDC_CLIENT_ID, "client_secret": settings.OIDC_CLIENT_SECRET}
    else:
        auth = (settings.OIDC_CLIENT_ID, settings.OIDC_CLIENT_SECRET)
    response = _request("token endpoint", "POST", endpoint("token_endpoint"), data=data, auth=auth)
    answer = _json_object("token endpoint", response)
    if not answer.get("id_token"):
        raise SignInRefused("The identity provider's token answer has no ID token: is the openid scope asked for?")
    return answer


def _signing_keys(*, fresh: bool = False) -> list[dict[str, Any]]:
    key = _cache_key("keys")
    keys = None if fresh else cache.get(key)
    if keys is None:
        answer = _json_object("key set", _request("key set", "GET", endpoint("jwks_uri")))
        keys = [jwk for jwk in answer.get("keys") or [] if isinstance(jwk, dict)]
        cache.set(key, keys, KEYS_SECONDS)
    return keys


def _signing_key(header: dict[str, Any]) -> jwt.PyJWK:
    """The published key the ID token names (its kid and alg); the key set is read again once when none matches
    (the provider may have rolled its keys over)."""
    for fresh in (False, True):
        for jwk in _signing_keys(fresh=fresh):
            if header.get("kid") not in (None, jwk.get("kid")) or jwk.get("alg") not in (None, header["alg"]):
                continue
            if jwk.get("use") not in (None, "sig"):
                continue
            try:
                return jwt.PyJWK(jwk, algorithm=header["alg"])
            except jwt.PyJWTError:
                continue
    raise SignInRefused("The ID token is signed with a key the identity provider does not publish: refused.")


def id_token_verify(id_token: str, *, nonce: str | None) -> dict[str, Any]:
    """The ID token's claims once its signature, issuer, audience, expiry and nonce are what they must be."""
    try:
        header = jwt.get_unverified_header(id_token)
    except jwt.PyJWTError:
        raise SignInRefused("The identity provider's ID token is not a signed JWT.") from None
    allowed = provider_metadata().get("id_token_signing_alg_values_supported") or ["RS256"]
    if header.get("alg") not in SIGNING_ALGORITHMS or header.get("alg") not in allowed:
        raise SignInRefused(f"The ID token is signed with {str(header.get('alg'))[:20]!r}, an algorithm not accepted.")
    try:
        claims = jwt.decode(
            id_token,
            _signing_key(header),
            algorithms=[header["alg"]],
            audience=settings.OIDC_CLIENT_ID,
            issuer=settings.OIDC_ISSUER,
            leeway=CLOCK_LEEWAY_SECONDS,
            options={"require": ["iss", "sub", "aud", "exp", "iat"]},
        )
    except jwt.InvalidSignatureError:
        raise SignInRefused("The ID token's signature does not verify with the identity provider's keys.") from None
    except jwt.ExpiredSignatureError:
        raise SignInRefused(
            "The ID token has expired: sign in again (check this server's clock if it persists)."
        ) from None
    except jwt.InvalidAudienceError:
        raise SignInRefused(
            "The ID token was issued to another application (its audience is not OIDC_CLIENT_ID)."
        ) from None
    except jwt.InvalidIssuerError:
        raise SignInRefused("The ID token was issued by another issuer than OIDC_ISSUER.") from None
    except jwt.PyJWTError as exc:
        raise SignInRefused(f"The ID token was refused ({exc}).") from None
    audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
    # Core 1.0 section 3.1.3.7, 4-5: an azp must name this application, and one is needed for several audiences.
    if ("azp" in claims or len(audiences) > 1) and claims.get("azp") != settings.OIDC_CLIENT_ID:
        raise SignInRefused("The ID token was issued for another application (its azp is not OIDC_CLIENT_ID).")
    if nonce is None or not hmac.compare_digest(str(claims.get("nonce", "")), nonce):
        raise SignInRefused("The ID token does not answer this sign-in (another nonce): it may be a replay.")
    return claims


def userinfo(access_token: str, *, subject: str) -> dict[str, Any]:
    """The userinfo endpoint's claims (groups may be only there), or {} where the provider has none. They must be
    about the ID token's person (Core 1.0 section 5.3.2)."""
    url = endpoint("userinfo_endpoint")
    if not url:
        return {}
    response = _request("userinfo endpoint", "GET", url, headers={"Authorization": f"Bearer {access_token}"})
    if response.headers.get("Content-Type", "").startswith("application/jwt"):
        return {}  # signed userinfo: the ID token's claims are used alone
    claims = _json_object("userinfo endpoint", response)
    if claims.get("sub") != subject:
        raise SignInRefused("The identity provider's userinfo is about another person than its ID token.")
    return claims
