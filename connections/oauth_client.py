"""The only module that talks to providers: the OAuth 2.0 calls, made with requests-oauthlib sessions under the
outbound policy (connections.outbound: timeout, proxy, URL policy).

Services build a ClientConfig from a connection and call the functions below; they get back a TokenResponse or
a ProviderError that says, in words, what went wrong and whether retrying can help.
"""

import json
import math
import os
import ssl
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import requests
from django.conf import settings
from oauthlib.oauth2 import BackendApplicationClient, OAuth2Error, WebApplicationClient
from requests_oauthlib import OAuth2Session

from connections.outbound import ProviderError, check_url, policy_session, proxy_error

__all__ = ["ClientConfig", "ProviderError", "TokenResponse"]

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


RATE_LIMITED = "rate_limited"  # the error of a ProviderError for HTTP 429: the provider wants fewer calls
RETRY_AFTER_DEFAULT = 30  # seconds to wait after a 429 without a usable Retry-After
RETRY_AFTER_MAX = 3600  # a longer Retry-After is taken as this: a token must not wait past its expiry for it
MAX_LIFETIME = 10 * 365 * 24 * 3600  # an expires_in beyond this is taken as this (a datetime must hold it)
MAX_SCOPE_LENGTH = 10_000
MAX_EXTRA_BYTES = 10_000  # the non-secret fields kept besides the standard ones, as JSON
MAX_PROVIDER_TEXT = 200  # what is kept of text a provider wrote (error_description): it goes into logs and emails


def provider_text(text: object) -> str:
    """Text a provider (or a browser) sent, fit to quote: printable, and short."""
    cleaned = "".join(char if char.isprintable() else " " for char in str(text))
    return cleaned[:MAX_PROVIDER_TEXT] + ("…" if len(cleaned) > MAX_PROVIDER_TEXT else "")


def _lifetime(value: object) -> int | None:
    """expires_in as whole seconds: numbers as strings or with fractions are fine; anything else is no value."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    if not math.isfinite(seconds) or seconds < 1:
        return None
    return int(min(seconds, MAX_LIFETIME))


def _storable(value: object) -> bool:
    """JSON that PostgreSQL can keep: no NUL character and no lone surrogate anywhere."""
    text = json.dumps(value, ensure_ascii=False)
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return "\\u0000" not in text


def _usable_body(body: dict[str, Any]) -> dict[str, Any]:
    """The token answer as oauthlib and the database can take it: odd but usable values made plain, unusable
    ones dropped (a missing expires_in gets the default lifetime, a missing scope keeps the stored one)."""
    usable = {key: value for key, value in body.items() if isinstance(key, str) and _storable({key: value})}
    for name in ("access_token", "refresh_token", "id_token"):
        if name in usable and not isinstance(usable[name], str):
            usable.pop(name)
    lifetime = _lifetime(usable.pop("expires_in", None))
    usable.pop("expires_at", None)  # computed from expires_in; a provider's own may be anything
    if lifetime is not None:
        usable["expires_in"] = lifetime
    scope = usable.pop("scope", None)
    if isinstance(scope, list | tuple) and all(isinstance(item, str) for item in scope):
        scope = " ".join(scope)
    if isinstance(scope, str) and _storable(scope):
        usable["scope"] = scope[:MAX_SCOPE_LENGTH]
    token_type = usable.get("token_type")
    if not (isinstance(token_type, str) and 0 < len(token_type) <= 40 and token_type.isprintable()):
        usable["token_type"] = "Bearer"  # noqa: S105 - the usual type, not a secret
    return usable


class _TokenAnswers:
    """The compliance hook of one session: checks the token URL's answer before oauthlib reads it, makes it
    usable, and keeps the refresh token it carries so that a failure later in the call does not lose it."""

    def __init__(self) -> None:
        self.refresh_token = ""

    def __call__(self, response: requests.Response) -> requests.Response:
        body = _json_object(response)
        if isinstance(body.get("refresh_token"), str) and _storable(body["refresh_token"]):
            self.refresh_token = body["refresh_token"]
        response._content = json.dumps(_usable_body(body)).encode()  # what oauthlib reads next
        return response


def retry_after_seconds(value: str) -> float:
    """A Retry-After header (RFC 9110 10.2.3: seconds, or an HTTP date) as seconds to wait, within bounds; a
    missing or unreadable one means RETRY_AFTER_DEFAULT."""
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds()
        except (TypeError, ValueError):
            seconds = RETRY_AFTER_DEFAULT
    if not math.isfinite(seconds):
        seconds = RETRY_AFTER_DEFAULT
    return float(min(max(math.ceil(seconds), 1), RETRY_AFTER_MAX))


def _json_object(response: requests.Response) -> dict[str, Any]:
    """The answer's JSON object, or a ProviderError for what oauthlib would misread (5xx, HTML, rate limits)."""
    status = response.status_code
    if status == 429:
        wait = retry_after_seconds(response.headers.get("Retry-After", ""))
        raise ProviderError(
            f"The provider's token URL asked to slow down (HTTP 429); it will be asked again in {wait:g} s.",
            error=RATE_LIMITED,
            permanent=False,
            status=status,
            retry_after=wait,
        )
    if status >= 500:
        raise ProviderError(
            f"The provider's token URL answered HTTP {status}; it will be retried.",
            error="temporarily_unavailable",
            permanent=False,
            status=status,
        )
    try:
        body = response.json()
    except ValueError:
        content_type = provider_text(response.headers.get("Content-Type", "unknown").split(";")[0])
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
    return body


def _session(config: ClientConfig, client: WebApplicationClient | BackendApplicationClient) -> OAuth2Session:
    session = policy_session(client=client, redirect_uri=config.redirect_uri or None, scope=list(config.scopes) or None)
    session.token_answers = _TokenAnswers()
    for hook in ("access_token_response", "refresh_token_response"):
        session.register_compliance_hook(hook, session.token_answers)
    return session


def _auth_kwargs(config: ClientConfig) -> dict[str, Any]:
    if config.client_auth_method == "body":
        return {"include_client_id": True, "client_secret": config.client_secret}
    return {"auth": requests.auth.HTTPBasicAuth(config.client_id, config.client_secret)}


def _token_call(what: str, session: OAuth2Session, func: Any, *args: Any, **kwargs: Any) -> TokenResponse:
    """Call the token URL through oauthlib; any failure is a ProviderError that carries the refresh token the
    answer brought, if it brought one (the provider has rotated to it: it must be kept)."""
    try:
        return _token_response(_call(what, func, *args, **kwargs))
    except ProviderError as exc:
        exc.refresh_token = exc.refresh_token or session.token_answers.refresh_token
        raise


def _timeout_error(what: str) -> ProviderError:
    return ProviderError(
        f"The provider did not answer the {what} within {settings.OUTBOUND_TIMEOUT:g} seconds.",
        error="timeout",
        permanent=False,
    )


def _call(what: str, func: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    try:
        return func(*args, **kwargs)
    except ProviderError as exc:
        if exc.error == "timeout":  # the call's deadline (connections.outbound), said of this call
            raise _timeout_error(what) from None
        raise
    except OAuth2Error as exc:
        if exc.error == "missing_token" or type(exc).__name__ == "MissingTokenError":
            raise ProviderError(
                f"The provider's {what} response has no access_token.", error="invalid_response", permanent=False
            ) from None
        description = f" ({provider_text(exc.description)})" if exc.description else ""
        raise ProviderError(
            f"The provider refused the {what}: {provider_text(exc.error)[:50]}{description}.",
            error=exc.error,
            permanent=exc.error in PERMANENT_ERRORS,
            status=exc.status_code,
        ) from None
    except requests.exceptions.ProxyError as exc:
        raise proxy_error(what, exc) from None
    except requests.Timeout:
        raise _timeout_error(what) from None
    except requests.exceptions.SSLError as exc:
        raise _tls_error(what, exc) from None
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
    except (ValueError, TypeError, AttributeError, KeyError) as exc:  # oauthlib reading an answer it cannot use
        raise ProviderError(
            f"The provider's {what} response could not be read ({type(exc).__name__}).",
            error="invalid_response",
            permanent=False,
        ) from None


def _tls_error(what: str, exc: requests.exceptions.SSLError) -> ProviderError:
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, ssl.SSLCertVerificationError):
        cause = cause.__cause__ or cause.__context__ or (cause.args[0] if cause.args else None)
        cause = cause if isinstance(cause, BaseException) else None
    if cause is not None:
        message = (
            f"The provider's TLS certificate for the {what} was not accepted: it is not one this server trusts "
            f"(self-signed, expired, or made for another name: {provider_text(cause.verify_message)}). Check the "
            "URL; nothing was sent."
        )
    else:
        message = f"The TLS connection to the provider for the {what} failed ({type(exc).__name__})."
    return ProviderError(message, error="tls_error", permanent=False)


def _token_response(token: dict[str, Any]) -> TokenResponse:
    access_token = token.get("access_token")
    if not access_token or not isinstance(access_token, str):
        raise ProviderError(
            "The provider's token response has no access_token.", error="invalid_response", permanent=False
        )
    extra = {
        key: value
        for key, value in token.items()
        if key not in STANDARD_FIELDS and not any(word in key.lower() for word in SECRET_WORDS)
    }
    if len(json.dumps(extra)) > MAX_EXTRA_BYTES:
        extra = {key: value for key, value in extra.items() if len(json.dumps(value)) <= 200}
    return TokenResponse(
        access_token=access_token,
        refresh_token=str(token.get("refresh_token") or ""),
        id_token=str(token.get("id_token") or ""),
        token_type=str(token.get("token_type") or "Bearer"),
        scope=" ".join(token["scope"]) if isinstance(token.get("scope"), list) else str(token.get("scope") or ""),
        expires_in=_lifetime(token.get("expires_in")),
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
    return _token_call(
        "authorization code exchange",
        session,
        session.fetch_token,
        config.token_url,
        code=code,
        **_auth_kwargs(config),
        **extra,
    )


def refresh(config: ClientConfig, *, refresh_token: str) -> TokenResponse:
    session = _session(config, WebApplicationClient(config.client_id))
    # Scope is omitted on refresh: the grant keeps its scope (RFC 6749 6), and some providers reject a repeat.
    session.scope = None
    auth = _auth_kwargs(config)
    body_credentials = (
        {"client_id": config.client_id, "client_secret": config.client_secret} if "auth" not in auth else {}
    )
    return _token_call(
        "token refresh",
        session,
        session.refresh_token,
        config.token_url,
        refresh_token=refresh_token,
        auth=auth.get("auth"),
        **body_credentials,
    )


def client_credentials(config: ClientConfig) -> TokenResponse:
    session = _session(config, BackendApplicationClient(config.client_id))
    # fetch_token does not send the session's scope for this grant; it must be passed along (RFC 6749 4.4.2).
    scope = {"scope": list(config.scopes)} if config.scopes else {}
    return _token_call(
        "client credentials request", session, session.fetch_token, config.token_url, **_auth_kwargs(config), **scope
    )


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
        raise proxy_error("token revocation", exc) from None
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


def discovery_document(issuer: str) -> dict[str, Any]:
    """The issuer's metadata: OpenID Connect Discovery 1.0 section 4 (the issuer, then
    /.well-known/openid-configuration), or where that is missing RFC 8414 section 3 (/.well-known/
    oauth-authorization-server, then the issuer's path). Not checked here: connections.discovery does that."""
    parts = urlsplit(issuer)
    oauth_path = "/.well-known/oauth-authorization-server" + parts.path.rstrip("/")
    candidates = [issuer.rstrip("/") + "/.well-known/openid-configuration", parts._replace(path=oauth_path).geturl()]
    session = policy_session()
    for url in candidates:
        response = _call("discovery request", session.get, url, headers={"Accept": "application/json"})
        if response.status_code == 404:
            continue
        try:
            document = response.json() if response.status_code == 200 else None
        except ValueError:
            document = None
        if not isinstance(document, dict):
            raise ProviderError(
                f"{provider_text(url)} answered HTTP {response.status_code} without a JSON object: it is not a "
                "discovery document.",
                error="invalid_response",
                permanent=False,
                status=response.status_code,
            )
        return document
    raise ProviderError(
        f"{provider_text(issuer)} publishes no discovery document (both {provider_text(candidates[0])} and "
        f"{provider_text(candidates[1])} answered 404): check the issuer identifier, or enter the URLs.",
        error="not_found",
        permanent=False,
        status=404,
    )
