"""The only module that talks to providers: the OAuth 2.0 calls, made with requests-oauthlib sessions under the
outbound policy (connections.outbound: timeout, proxy, URL policy).

Services build a ClientConfig from a connection and call the functions below; they get back a TokenResponse or
a ProviderError that says, in words, what went wrong and whether retrying can help.
"""

import os
from dataclasses import dataclass, field
from typing import Any

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
    session = policy_session(client=client, redirect_uri=config.redirect_uri or None, scope=list(config.scopes) or None)
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
        raise proxy_error(what, exc) from None
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
