"""The only module that talks to providers: the OAuth 2.0 calls, made with requests-oauthlib sessions under the
outbound policy (connections.outbound.policy: timeout, proxy, URL policy).

Services build a ClientConfig from a connection and call the functions below; they get back a TokenResponse or
a ProviderError that says, in words, what went wrong and whether retrying can help.
"""

import os
import ssl
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar
from urllib.parse import urlsplit

import requests
from django.conf import settings
from oauthlib.oauth2 import BackendApplicationClient, DeviceClient, OAuth2Error, WebApplicationClient
from oauthlib.oauth2.rfc6749.parameters import prepare_token_request
from requests_oauthlib import OAuth2Session

from connections.errors import OutboundError, ProviderError
from connections.oauth import assertions
from connections.oauth.answers import (
    RATE_LIMITED,
    RETRY_AFTER_DEFAULT,
    RETRY_AFTER_MAX,
    TokenAnswers,
    TokenResponse,
    device_answer_fields,
    json_object,
    provider_text,
    retry_after_seconds,
    token_response_of,
)
from connections.oauth.client_auth import (
    ClientConfig,
    JsonBody,
    NoClientAuth,
    client_auth,
    fetch_kwargs,
    request_quirks,
    signed_assertion,
)
from connections.outbound.forward_proxy import proxy_error
from connections.outbound.policy import check_url, policy_session

# What callers use of connections.oauth.answers through this module.
__all__ = [
    "RATE_LIMITED",
    "RETRY_AFTER_DEFAULT",
    "RETRY_AFTER_MAX",
    "ClientConfig",
    "TokenResponse",
    "provider_text",
    "retry_after_seconds",
]

# oauthlib's own https check cannot allow the loopback hosts an operator lists; check_url() below replaces it
# and runs on every request, redirects included. Scope changes by the provider are normal (RFC 6749 5.1).
os.environ["OAUTHLIB_INSECURE_TRANSPORT"] = "1"
os.environ["OAUTHLIB_RELAX_TOKEN_SCOPE"] = "1"  # noqa: S105 - a flag, not a secret

# RFC 6749 5.2 errors that retrying cannot fix: a person must authorize again or fix the connection.
PERMANENT_ERRORS = frozenset(
    {"invalid_grant", "invalid_client", "unauthorized_client", "unsupported_grant_type", "invalid_scope"}
)


def _session(config: ClientConfig, client: WebApplicationClient | BackendApplicationClient) -> OAuth2Session:
    session = policy_session(client=client, redirect_uri=config.redirect_uri or None, scope=list(config.scopes) or None)
    session.token_answers = TokenAnswers(config.token_response_fields)
    for hook in ("access_token_response", "refresh_token_response"):
        session.register_compliance_hook(hook, session.token_answers)
    return session


def _token_call(what: str, session: OAuth2Session, func: Any, *args: Any, **kwargs: Any) -> TokenResponse:
    """Call the token URL through oauthlib; any failure is a ProviderError that carries the refresh token the
    answer brought, if it brought one (the provider has rotated to it: it must be kept)."""
    try:
        return token_response_of(_call(what, func, *args, **kwargs))
    except ProviderError as exc:
        exc.refresh_token = exc.refresh_token or session.token_answers.refresh_token
        raise


def _timeout_error(what: str) -> ProviderError:
    return ProviderError(
        f"The provider did not answer the {what} within {settings.OUTBOUND_TIMEOUT:g} seconds.",
        error="timeout",
        permanent=False,
    )


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _call(what: str, func: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs) -> _R:
    """func(*args, **kwargs) (an HTTP request, or oauthlib's token call): its answer, or a ProviderError saying what
    went wrong."""
    try:
        return func(*args, **kwargs)
    except OutboundError as exc:
        if exc.error == "timeout":  # the call's deadline (connections.outbound.policy), said of this call
            raise _timeout_error(what) from None
        raise ProviderError.of(exc) from None
    except OAuth2Error as exc:
        if exc.error == "missing_token" or type(exc).__name__ == "MissingTokenError":
            raise ProviderError(
                f"The provider's {what} response has no access_token.", error="invalid_response", permanent=False
            ) from None
        description = f" ({provider_text(exc.description)})" if exc.description else ""
        raise ProviderError(
            f"The provider refused the {what}: {provider_text(exc.error)[:50]}{description}.{_hint(exc.error)}",
            error=exc.error,
            permanent=exc.error in PERMANENT_ERRORS,
            status=exc.status_code,
        ) from None
    except requests.exceptions.ProxyError as exc:
        raise ProviderError.of(proxy_error(what, exc)) from None
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


# What to check when the provider names this error: the usual causes, in the words of the connection's page.
ERROR_HINTS = {
    "invalid_client": (
        "Check the client ID, the client secret, the client authentication method (HTTP Basic or form body), and "
        "that the token URL is of the environment (production or sandbox) the application is registered in."
    ),
}


def _hint(error: str) -> str:
    return f" {ERROR_HINTS[error]}" if error in ERROR_HINTS else ""


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


def new_code_verifier() -> str:
    return WebApplicationClient("").create_code_verifier(64)


def authorization_url(config: ClientConfig, *, state: str, code_verifier: str = "") -> str:
    try:
        check_url(config.authorization_url)
    except OutboundError as exc:
        raise ProviderError.of(exc) from None
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
        **fetch_kwargs(config),
        **extra,
        **request_quirks(config),
    )


def refresh(config: ClientConfig, *, refresh_token: str) -> TokenResponse:
    session = _session(config, WebApplicationClient(config.client_id))
    # Scope is omitted on refresh: the grant keeps its scope (RFC 6749 6), and some providers reject a repeat.
    session.scope = None
    auth, body_credentials = client_auth(config)
    return _token_call(
        "token refresh",
        session,
        session.refresh_token,
        config.refresh_url or config.token_url,
        refresh_token=refresh_token,
        auth=auth,
        **body_credentials,
        **request_quirks(config),
    )


def client_credentials(config: ClientConfig) -> TokenResponse:
    session = _session(config, BackendApplicationClient(config.client_id))
    session.redirect_uri = None  # not a parameter of this grant (RFC 6749 4.4.2)
    # fetch_token does not send the session's scope for this grant; it must be passed along (RFC 6749 4.4.2).
    scope = {"scope": list(config.scopes)} if config.scopes else {}
    return _token_call(
        "client credentials request",
        session,
        session.fetch_token,
        config.token_url,
        **fetch_kwargs(config),
        **scope,
        **request_quirks(config),
    )


class JwtBearerClient(BackendApplicationClient):
    """oauthlib's client for RFC 7523 section 2.1: the token request is the grant type and a signed assertion."""

    grant_type = assertions.JWT_BEARER_GRANT

    def prepare_request_body(
        self, body: str = "", assertion: str = "", include_client_id: bool = False, **kwargs: Any
    ) -> str:
        kwargs.pop("code", None)
        kwargs.pop("redirect_uri", None)
        if include_client_id:  # client_secret_post: the body names the client with its secret
            kwargs["client_id"] = self.client_id
        return prepare_token_request(self.grant_type, body=body, assertion=assertion, **kwargs)


def jwt_bearer(config: ClientConfig) -> TokenResponse:
    """A token for the assertion's subject (RFC 7523 2.1): iss the client ID, sub the subject to act as (Google
    service accounts, Salesforce and DocuSign JWT flows), the scopes as its scope claim. Client authentication
    only where a client secret is stored: the assertion is the credential."""
    session = _session(config, JwtBearerClient(config.client_id))
    session.redirect_uri = None
    claims = {"scope": " ".join(config.scopes)} if config.scopes else {}
    assertion = signed_assertion(config, subject=config.jwt_subject or config.client_id, claims=claims)
    json_body = config.token_request_format == "json"  # noqa: S105 - a format, not a secret
    client_auth = (
        fetch_kwargs(config) if config.client_secret else {"auth": JsonBody(None) if json_body else NoClientAuth()}
    )
    return _token_call(
        "JWT bearer request", session, session.fetch_token, config.token_url, assertion=assertion, **client_auth,
        **request_quirks(config),
    )  # fmt: skip


def device_authorization(config: ClientConfig) -> dict[str, Any]:
    """RFC 8628 3.1-3.2: a device code for the worker to poll with, and the user code and verification link a
    person approves at; checked, with the interval defaulted to five seconds."""
    session = policy_session()
    auth, credentials = client_auth(config)
    data = {"client_id": config.client_id, **credentials}
    if config.scopes:
        data["scope"] = config.scope_separator.join(config.scopes)
    what = "device authorization request"
    response = _call(what, session.post, config.device_authorization_url, data=data, auth=auth)
    body = json_object(response)
    if response.status_code != 200 or "error" in body:
        error = str(body.get("error") or f"http_{response.status_code}")
        description = f" ({provider_text(body['error_description'])})" if body.get("error_description") else ""
        raise ProviderError(
            f"The provider refused the {what}: {provider_text(error)[:50]}{description}.{_hint(error)}",
            error=error,
            permanent=error in PERMANENT_ERRORS,
            status=response.status_code,
        )
    answer = device_answer_fields(body)
    for name in ("verification_uri", "verification_uri_complete"):
        if answer[name] and urlsplit(answer[name]).scheme not in ("https", "http"):
            raise ProviderError(
                f"The provider's {name} is not a web address.", error="invalid_response", permanent=True
            )
    return answer


def device_token(config: ClientConfig, *, device_code: str) -> TokenResponse:
    """RFC 8628 3.4: one poll of the token URL; authorization_pending, slow_down, access_denied and expired_token
    come back as ProviderErrors with those errors (connections.flows.device decides what each means)."""
    session = _session(config, DeviceClient(config.client_id))
    session.redirect_uri = None
    return _token_call(
        "device token request", session, session.fetch_token, config.token_url, device_code=device_code,
        **fetch_kwargs(config), **request_quirks(config),
    )  # fmt: skip


def app_token(config: ClientConfig) -> TokenResponse:
    """A new token for a grant with no person and no refresh token: client credentials, or a JWT bearer one."""
    return jwt_bearer(config) if config.grant_type == "jwt_bearer" else client_credentials(config)


def revoke(config: ClientConfig, *, token: str, token_type_hint: str) -> None:
    """RFC 7009 revocation. The provider answers 200 even for unknown tokens; anything else is an error."""
    session = _session(config, WebApplicationClient(config.client_id))
    auth, credentials = client_auth(config)
    data = {"token": token, "token_type_hint": token_type_hint, **credentials}
    try:
        response = session.post(config.revocation_url, data=data, auth=auth)
    except requests.exceptions.ProxyError as exc:
        raise ProviderError.of(proxy_error("token revocation", exc)) from None
    except OutboundError as exc:  # refused by the outbound policy, or its deadline
        raise ProviderError.of(exc) from None
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
    oauth-authorization-server, then the issuer's path). Not checked here: connections.oauth.discovery does that."""
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
