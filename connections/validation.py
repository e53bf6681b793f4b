"""The rules a connection must meet, whoever sets it: the admin's connection form and configuration as code both
call them, so a file and a person in the admin are held to the same rules and told the same sentences.

Problems are reported by field: a model field's name, `client_secret`, `private_key`, `placeholders.<name>`, or
NON_FIELD for the connection as a whole. Nothing here changes a connection: connection_check() returns the values
the write-only fields and the placeholders resolve to (ConnectionChanges), which the caller applies once it has
decided to save.
"""

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from django.utils.text import slugify

from connections import errors
from connections.errors import OutboundError
from connections.models import Connection, TokenType
from connections.oauth import assertions
from connections.outbound import policy
from providers.models import (
    APP_GRANTS,
    PLACEHOLDER_PATTERN,
    TOKEN_FIELD_PATTERN,
    ClientAuthMethod,
    GrantType,
    Provider,
    split_scopes,
    urls_required_by,
)

NON_FIELD = "__all__"
PLACEHOLDERS = "placeholders."
URL_FIELDS = ("authorization_url", "token_url", "revocation_url", "device_authorization_url")
# A placeholder value becomes part of a host name or path: letters, digits, dots and dashes only, so that a
# value cannot redirect a URL elsewhere ("evil.example/" or "x@evil").
PLACEHOLDER_VALUE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252}[A-Za-z0-9])?$")

Problems = dict[str, list[str]]


@dataclass(frozen=True)
class Credentials:
    """The write-only fields as given: None keeps what is stored; a Remove box clears it unless a value is given."""

    client_secret: str | None = field(default=None, repr=False)
    clear_client_secret: bool = False
    private_key: str | None = field(default=None, repr=False)
    clear_private_key: bool = False
    private_key_id_given: bool = False  # a key ID typed with the key: a key file's own does not replace it


@dataclass(frozen=True)
class ConnectionChanges:
    """What the checked input resolves to, for the caller to apply on saving (apply_to)."""

    placeholders: dict[str, str]
    client_secret: str | None = field(default=None, repr=False)  # None: unchanged
    private_key: str | None = field(default=None, repr=False)
    private_key_id: str | None = None  # a key file's kid

    def apply_to(self, connection: Connection) -> None:
        connection.placeholders = self.placeholders
        for name in ("client_secret", "private_key", "private_key_id"):
            if (value := getattr(self, name)) is not None:
                setattr(connection, name, value)


def slug_for(slug: str, name: str, *, pk: int | None) -> tuple[str, str]:
    """(the slug, its problem or ""): the one given, or derived from the name; no other connection's."""
    slug = slug or slugify(name)
    if not slug:
        return slug, "Give the connection a name made of letters or digits, or a slug."
    others = Connection.objects.filter(slug=slug)
    if pk is not None:  # a connection being edited may keep its own slug
        others = others.exclude(pk=pk)
    if others.exists():
        return slug, f"Another connection already uses the slug {slug!r}."
    return slug, ""


def issuer_problem(issuer: str) -> str:
    """Why this issuer identifier cannot be one ("" when it can)."""
    if not issuer:
        return ""
    try:
        policy.check_url(issuer)
    except OutboundError as exc:
        return exc.message
    if urlsplit(issuer).query or urlsplit(issuer).fragment:
        return "An issuer identifier has no query or fragment (RFC 8414 2)."
    return ""


def scopes_normalized(scopes: str) -> str:
    """Scopes as stored: comma-separated, whatever separated them when typed."""
    return ",".join(split_scopes(scopes))


def authorization_params_checked(value: Any) -> tuple[dict[str, str], str]:
    """(the extra authorization parameters as text values, their problem or "")."""
    value = value or {}
    if not isinstance(value, dict) or not all(
        isinstance(key, str) and isinstance(item, str | int | bool) for key, item in value.items()
    ):
        problem = (
            'Enter a JSON object of names and text values, e.g. {"prompt": "consent"}, or name=value pairs joined by &.'
        )
        return {}, problem
    if "" in value:
        return {}, "Each parameter needs a name: one here has none."
    return {key: str(item) for key, item in value.items()}, ""


def connection_check(
    connection: Connection, *, credentials: Credentials, placeholders: dict[str, str], client_id: str = ""
) -> tuple[ConnectionChanges, Problems]:
    """The rules between fields, for `connection` as given (its model fields set, not yet saved): the grant its
    provider type supports, the token type the grant allows, the credentials it needs, the placeholders its URLs
    use and the URLs themselves. The provider type and grant must be valid choices already."""
    problems: Problems = {}
    provider, grant_type = connection.provider, connection.grant_type
    if grant_type not in provider.grant_types:
        labels = ", ".join(str(GrantType(grant).label) for grant in provider.grant_types) or "no grant type"
        _add(problems, "grant_type", f"{provider} supports: {labels} (not {GrantType(grant_type).label}).")
    if grant_type in APP_GRANTS and connection.token_type == TokenType.USER_SPECIFIC:
        label = GrantType(grant_type).label
        _add(problems, "token_type", f"{label} acts as the application, not each user: choose Shared.")
    secret, key, key_id = _credentials_check(connection, credentials, client_id or connection.client_id, problems)
    values = _placeholders_check(connection, placeholders, problems)
    if not problems:
        _urls_check(connection, values, problems)
        _api_base_check(connection, values, problems)
    return ConnectionChanges(values, secret, key, key_id), problems


def _add(problems: Problems, name: str, message: str) -> None:
    problems.setdefault(name, []).append(message)


def _credentials_check(
    connection: Connection, given: Credentials, client_id: str, problems: Problems
) -> tuple[str | None, str | None, str | None]:
    """The secret and the private key are write-only: none given keeps the stored one unless its Remove box is
    ticked. A signed assertion needs a private key; most else needs a secret. Returns the (secret, key, key ID)
    to store, each None when unchanged."""
    secret = given.client_secret or ("" if given.clear_client_secret else None)
    key = "" if given.clear_private_key and not given.private_key else None
    key_id = None
    if given.private_key:
        try:
            key, key_id = _key_from_key_file(given.private_key, client_id, given.private_key_id_given)
            assertions.signing_key_load(key)
        except errors.KeyProblem as exc:
            _add(problems, "private_key", str(exc))
            key = None
    stored_secret = connection.client_secret if secret is None else secret
    stored_key = connection.private_key if key is None else key
    method = connection.client_auth_method or connection.provider.client_auth_method
    signs = connection.grant_type == GrantType.JWT_BEARER or method == ClientAuthMethod.PRIVATE_KEY_JWT
    if signs and not stored_key and "private_key" not in problems:
        _add(problems, "private_key", "Enter the PEM private key the provider knows the public half of.")
    # Only a public client (PKCE: RFC 7636, RFC 8252 8.5; a device: RFC 8628 3.1) or one that signs may do
    # without a secret.
    public = connection.grant_type in (GrantType.AUTHORIZATION_CODE_PKCE, GrantType.DEVICE_CODE)
    if not stored_secret and not signs and not public:
        _add(problems, "client_secret", "Enter the client secret of the application registered at the provider.")
    return secret, key, key_id


def _key_from_key_file(text: str, client_id: str, key_id_given: bool) -> tuple[str, str | None]:
    """The PEM key of what was pasted, and the key ID it brings: a Google service account's JSON key file gives its
    key, must be the client ID's (its client_email), and gives the key ID unless one was typed with it."""
    key_file = assertions.key_file_read(text)
    if key_file is None:
        return text, None
    if key_file["client_email"] and client_id and key_file["client_email"] != client_id:
        raise errors.KeyProblem(
            f"The key file is {key_file['client_email']}'s: enter that as the client ID (it is {client_id})."
        )
    key_id = key_file["private_key_id"] if key_file["private_key_id"] and not key_id_given else None
    return key_file["private_key"].strip(), key_id  # a rotated key file brings its new kid


def _templates(connection: Connection) -> dict[str, str]:
    provider = connection.provider
    templates = {name: getattr(connection, name) or getattr(provider, name) for name in URL_FIELDS}
    templates["refresh_url"] = provider.refresh_url  # the provider type's only
    return templates


def _placeholders_check(connection: Connection, given: dict[str, str], problems: Problems) -> dict[str, str]:
    """The placeholder values the connection keeps: those its URLs and scopes need must be given; each is a host
    name's or a path's piece."""
    provider: Provider = connection.provider
    scopes = "" if connection.scopes else provider.default_scopes_for(connection.grant_type)
    templates = [*_templates(connection).values(), scopes]
    needed = {name for template in templates for name in PLACEHOLDER_PATTERN.findall(template)}
    known = placeholders_in_use()
    values: dict[str, str] = {}
    for name in sorted(needed | set(provider.placeholders)):
        value = (given.get(name) or "").strip()
        if name not in known:
            _add(problems, NON_FIELD, f"<{name}> is not a placeholder any provider type uses: write the value itself.")
        elif value and not PLACEHOLDER_VALUE.match(value):
            _add(problems, PLACEHOLDERS + name, "Use letters, digits, dots and dashes only.")
        elif name in needed and not value:
            _add(problems, PLACEHOLDERS + name, f"{provider} needs <{name}> to build its URLs and scopes.")
        elif value:
            values[name] = value
    return values


def placeholders_in_use(providers: list[Provider] | None = None) -> dict[str, list[str]]:
    """Each placeholder any provider type uses, with the names of those that do."""
    used: dict[str, list[str]] = {}
    for provider in Provider.objects.all() if providers is None else providers:
        for name in provider.placeholders:
            used.setdefault(name, []).append(provider.name)
    return used


def _urls_check(connection: Connection, values: dict[str, str], problems: Problems) -> None:
    """Each URL the connection will call, its placeholders filled, passes the outbound policy; the grant's own
    must be there."""
    required = urls_required_by(connection.grant_type)
    for name, template in _templates(connection).items():
        if not template:
            if name in required:
                _add(problems, name, f"{connection.provider} has no preset for this URL: enter it.")
            continue
        url = PLACEHOLDER_PATTERN.sub(lambda match: values[match.group(1)], template)
        try:
            policy.check_url(url)
        except OutboundError as exc:
            _add(problems, name if name in URL_FIELDS else NON_FIELD, exc.message)


def _api_base_check(connection: Connection, values: dict[str, str], problems: Problems) -> None:
    """The API base the proxy may call: a URL the outbound policy allows, with no query or fragment (a path is
    appended to it); one that starts with a token answer's field (<instance_url>) is checked when it is filled."""
    template = connection.api_base_url_template
    filled = PLACEHOLDER_PATTERN.sub(lambda match: values.get(match.group(1), match.group(0)), template)
    if not filled or TOKEN_FIELD_PATTERN.match(filled):
        return
    name = "api_base_url" if connection.api_base_url else NON_FIELD
    if missing := PLACEHOLDER_PATTERN.findall(filled):
        _add(problems, name, f"The API base URL needs <{missing[0]}>: fill it in above.")
        return
    try:
        policy.check_url(filled)
    except OutboundError as exc:
        _add(problems, name, exc.message)
        return
    if urlsplit(filled).query or urlsplit(filled).fragment or "@" in urlsplit(filled).netloc:
        _add(problems, name, "An API base URL has no query, fragment or user: the proxy appends a path to it.")
