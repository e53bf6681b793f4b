"""The only module that talks to providers: the OAuth 2.0 calls, made with requests-oauthlib sessions under the
outbound policy (connections.outbound.policy: timeout, proxy, URL policy).

Services build a ClientConfig from a connection and call the functions below; they get back a TokenResponse or
a ProviderError that says, in words, what went wrong and whether retrying can help.
"""

import json
import os
import ssl
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import requests
from django.conf import settings
from oauthlib.oauth2 import BackendApplicationClient, DeviceClient, OAuth2Error, WebApplicationClient
from oauthlib.oauth2.rfc6749.parameters import prepare_token_request
from requests_oauthlib import OAuth2Session

from connections import errors
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
from connections.outbound.policy import check_url, policy_session, proxy_error

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
    refresh_url: str = ""  # where refresh requests go; blank: the token URL
    grant_type: str = "authorization_code"
    device_authorization_url: str = ""
    # Signed assertions (connections.oauth.assertions): the PEM key, its kid, their aud, and the JWT bearer grant's sub.
    private_key: str = ""
    private_key_id: str = ""
    assertion_audience: str = ""
    jwt_subject: str = ""
    token_request_format: str = "form"  # noqa: S105 - a format, not a secret; "json": requests send a JSON object
    # Provider quirks (providers.models.Provider): sent with every token request; where the answer's fields are.
    token_request_params: dict[str, str] = field(default_factory=dict)
    token_request_headers: dict[str, str] = field(default_factory=dict)
    token_response_fields: dict[str, str] = field(default_factory=dict)


def _session(config: ClientConfig, client: WebApplicationClient | BackendApplicationClient) -> OAuth2Session:
    session = policy_session(client=client, redirect_uri=config.redirect_uri or None, scope=list(config.scopes) or None)
    session.token_answers = TokenAnswers(config.token_response_fields)
    for hook in ("access_token_response", "refresh_token_response"):
        session.register_compliance_hook(hook, session.token_answers)
    return session


def _quirks(config: ClientConfig) -> dict[str, Any]:
    """A token request's headers (requests-oauthlib's defaults, and the provider's own) and extra parameters."""
    headers = {"Accept": "application/json", "Content-Type": "application/x-www-form-urlencoded"}
    return {"headers": {**headers, **config.token_request_headers}, **config.token_request_params}


class JsonBody(requests.auth.AuthBase):
    """Sends a token or revocation request's form parameters as one JSON object instead (for a provider whose
    token URL takes JSON, as Zendesk's does), then applies the client authentication it wraps, if any. An auth
    hook because requests-oauthlib builds those bodies as forms, and requests calls this on the prepared request."""

    def __init__(self, inner: requests.auth.AuthBase | None) -> None:
        self.inner = inner

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        body = request.body.decode() if isinstance(request.body, bytes) else request.body or ""
        request.body = json.dumps(dict(parse_qsl(body, keep_blank_values=True))).encode()
        request.headers["Content-Type"] = "application/json"
        return self.inner(request) if self.inner else request


class NoClientAuth(requests.auth.AuthBase):
    """No client authentication (the JWT bearer grant's assertion is the credential): given as the auth, it keeps
    OAuth2Session.fetch_token from adding HTTP Basic with the client ID and an empty secret."""

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        return request


def _client_auth(config: ClientConfig) -> tuple[requests.auth.AuthBase | None, dict[str, str]]:
    """A token or revocation request's client authentication: (the requests auth, the body's credentials). A
    private_key_jwt assertion is signed anew for each request: its jti is good for one use. A public client (no
    secret: PKCE, a device) names itself by its client_id in the body (RFC 6749 2.3.1, RFC 8628 3.1)."""
    if config.client_auth_method == "private_key_jwt":
        auth, credentials = None, {"client_id": config.client_id, **_client_assertion(config)}
    elif not config.client_secret:
        auth, credentials = None, {"client_id": config.client_id}
    elif config.client_auth_method == "body":
        auth, credentials = None, {"client_id": config.client_id, "client_secret": config.client_secret}
    else:
        auth, credentials = requests.auth.HTTPBasicAuth(config.client_id, config.client_secret), {}
    json_body = config.token_request_format == "json"  # noqa: S105 - a format, not a secret
    return (JsonBody(auth) if json_body else auth), credentials


def _signed(config: ClientConfig, *, subject: str, claims: dict[str, Any] | None = None) -> str:
    """An assertion signed with the connection's key (iss the client ID, aud the token URL or the provider type's
    audience); a key that cannot sign is a permanent failure, said without the key."""
    try:
        return assertions.assertion_sign(
            key_pem=config.private_key,
            key_id=config.private_key_id,
            issuer=config.client_id,
            subject=subject,
            audience=config.assertion_audience or config.token_url,
            claims=claims,
        )
    except errors.KeyProblem as exc:
        message = f"The connection's private key cannot sign: {exc}"
        raise ProviderError(message, error="invalid_key", permanent=True) from None


def _client_assertion(config: ClientConfig) -> dict[str, str]:
    """RFC 7523 section 2.2: the client authenticates with an assertion about itself (sub the client ID)."""
    assertion = _signed(config, subject=config.client_id)
    return {"client_assertion_type": assertions.CLIENT_ASSERTION_TYPE, "client_assertion": assertion}


def _fetch_kwargs(config: ClientConfig) -> dict[str, Any]:
    """_client_auth in OAuth2Session.fetch_token's terms (it adds client_id to the body itself)."""
    auth, credentials = _client_auth(config)
    if not credentials:
        return {"auth": auth}
    return {"auth": auth, "include_client_id": True, **{k: v for k, v in credentials.items() if k != "client_id"}}


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


def _call(what: str, func: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
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
            f"The provider refused the {what}: {provider_text(exc.error)[:50]}{description}.",
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
        **_fetch_kwargs(config),
        **extra,
        **_quirks(config),
    )


def refresh(config: ClientConfig, *, refresh_token: str) -> TokenResponse:
    session = _session(config, WebApplicationClient(config.client_id))
    # Scope is omitted on refresh: the grant keeps its scope (RFC 6749 6), and some providers reject a repeat.
    session.scope = None
    auth, body_credentials = _client_auth(config)
    return _token_call(
        "token refresh",
        session,
        session.refresh_token,
        config.refresh_url or config.token_url,
        refresh_token=refresh_token,
        auth=auth,
        **body_credentials,
        **_quirks(config),
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
        **_fetch_kwargs(config),
        **scope,
        **_quirks(config),
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
    assertion = _signed(config, subject=config.jwt_subject or config.client_id, claims=claims)
    json_body = config.token_request_format == "json"  # noqa: S105 - a format, not a secret
    client_auth = (
        _fetch_kwargs(config) if config.client_secret else {"auth": JsonBody(None) if json_body else NoClientAuth()}
    )
    return _token_call(
        "JWT bearer request", session, session.fetch_token, config.token_url, assertion=assertion, **client_auth,
        **_quirks(config),
    )  # fmt: skip


def device_authorization(config: ClientConfig) -> dict[str, Any]:
    """RFC 8628 3.1-3.2: a device code for the worker to poll with, and the user code and verification link a
    person approves at; checked, with the interval defaulted to five seconds."""
    session = policy_session()
    auth, credentials = _client_auth(config)
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
            f"The provider refused the {what}: {provider_text(error)[:50]}{description}.",
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
        **_fetch_kwargs(config), **_quirks(config),
    )  # fmt: skip


def app_token(config: ClientConfig) -> TokenResponse:
    """A new token for a grant with no person and no refresh token: client credentials, or a JWT bearer one."""
    return jwt_bearer(config) if config.grant_type == "jwt_bearer" else client_credentials(config)


def revoke(config: ClientConfig, *, token: str, token_type_hint: str) -> None:
    """RFC 7009 revocation. The provider answers 200 even for unknown tokens; anything else is an error."""
    session = _session(config, WebApplicationClient(config.client_id))
    auth, credentials = _client_auth(config)
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
