"""A provider call's configuration (ClientConfig, built from a connection by connections.engine.store) and how the
client authenticates at the token URL: HTTP Basic, the form body, a signed assertion (private_key_jwt), or as a public
client; with the provider's own headers, parameters and body format."""

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import requests

from connections import errors
from connections.errors import ProviderError
from connections.oauth import assertions


@dataclass(frozen=True)
class ClientConfig:
    client_id: str
    client_secret: str = field(repr=False)
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
    private_key: str = field(default="", repr=False)
    private_key_id: str = ""
    assertion_audience: str = ""
    jwt_subject: str = ""
    token_request_format: str = "form"  # noqa: S105 - a format, not a secret; "json": requests send a JSON object
    # Provider quirks (providers.models.Provider): sent with every token request; where the answer's fields are.
    token_request_params: dict[str, str] = field(default_factory=dict)
    token_request_headers: dict[str, str] = field(default_factory=dict)
    token_response_fields: dict[str, str] = field(default_factory=dict)
    # Rollover without an outage: what to authenticate with once the provider refuses the current ones as
    # invalid_client (next_credentials_config).
    next_client_secret: str = field(default="", repr=False)
    next_private_key: str = field(default="", repr=False)


INVALID_CLIENT = "invalid_client"  # RFC 6749 5.2: the client's authentication failed


def next_credentials_config(config: ClientConfig) -> ClientConfig | None:
    """The same call authenticated with the next client credential of the method in use (the next signing key for
    private_key_jwt, else the next secret), or None when none is stored: what to try once the provider refused the
    current one as invalid_client (the secret was changed at the provider, or the key's certificate replaced)."""
    if config.client_auth_method == "private_key_jwt":
        if not config.next_private_key:
            return None
        return dataclasses.replace(
            config, private_key=config.next_private_key, next_private_key="", next_client_secret=""
        )
    if not config.next_client_secret:
        return None
    return dataclasses.replace(
        config, client_secret=config.next_client_secret, next_private_key="", next_client_secret=""
    )


def request_quirks(config: ClientConfig) -> dict[str, Any]:
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


def client_auth(config: ClientConfig) -> tuple[requests.auth.AuthBase | None, dict[str, str]]:
    """A token or revocation request's client authentication: (the requests auth, the body's credentials). A
    private_key_jwt assertion is signed anew for each request: its jti is good for one use. A public client (no
    secret: PKCE, a device) names itself by its client_id in the body (RFC 6749 2.3.1, RFC 8628 3.1)."""
    if config.client_auth_method == "private_key_jwt":
        auth, credentials = None, {"client_id": config.client_id, **client_assertion(config)}
    elif not config.client_secret:
        auth, credentials = None, {"client_id": config.client_id}
    elif config.client_auth_method == "body":
        auth, credentials = None, {"client_id": config.client_id, "client_secret": config.client_secret}
    else:
        auth, credentials = requests.auth.HTTPBasicAuth(config.client_id, config.client_secret), {}
    json_body = config.token_request_format == "json"  # noqa: S105 - a format, not a secret
    return (JsonBody(auth) if json_body else auth), credentials


def signed_assertion(config: ClientConfig, *, subject: str, claims: dict[str, Any] | None = None) -> str:
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


def client_assertion(config: ClientConfig) -> dict[str, str]:
    """RFC 7523 section 2.2: the client authenticates with an assertion about itself (sub the client ID)."""
    assertion = signed_assertion(config, subject=config.client_id)
    return {"client_assertion_type": assertions.CLIENT_ASSERTION_TYPE, "client_assertion": assertion}


def fetch_kwargs(config: ClientConfig) -> dict[str, Any]:
    """client_auth in OAuth2Session.fetch_token's terms (it adds client_id to the body itself)."""
    auth, credentials = client_auth(config)
    if not credentials:
        return {"auth": auth}
    return {"auth": auth, "include_client_id": True, **{k: v for k, v in credentials.items() if k != "client_id"}}
