import re

from django.core.exceptions import ValidationError
from django.db import models

PLACEHOLDER_PATTERN = re.compile(r"<([a-z0-9][a-z0-9-]*)>")
# An API base URL may also name a field of the token answer, which has underscores (Salesforce's <instance_url>):
# filled from the token, never typed by an administrator, so PLACEHOLDER_PATTERN does not list it.
TOKEN_FIELD_PATTERN = re.compile(r"<([a-z0-9][a-z0-9_-]*)>")


class GrantType(models.TextChoices):
    AUTHORIZATION_CODE = "authorization_code", "Authorization Code"
    AUTHORIZATION_CODE_PKCE = "authorization_code_pkce", "Authorization Code with PKCE"
    CLIENT_CREDENTIALS = "client_credentials", "Client Credentials"
    JWT_BEARER = "jwt_bearer", "JWT Bearer (RFC 7523)"
    DEVICE_CODE = "device_code", "Device Code (RFC 8628)"


# Grants that act as the application (or whom its assertion names), with no person to authorize and no refresh
# token: the engine obtains a new token before the old one expires.
APP_GRANTS = frozenset({GrantType.CLIENT_CREDENTIALS, GrantType.JWT_BEARER})


def urls_required_by(grant_type: str) -> list[str]:
    """The URL fields a connection of this grant cannot work without."""
    if grant_type == GrantType.DEVICE_CODE:
        return ["token_url", "device_authorization_url"]
    if grant_type in APP_GRANTS:
        return ["token_url"]
    return ["authorization_url", "token_url"]


class ClientAuthMethod(models.TextChoices):
    BASIC = "basic", "HTTP Basic (client_secret_basic)"
    BODY = "body", "Form body (client_secret_post)"
    PRIVATE_KEY_JWT = "private_key_jwt", "Signed JWT (private_key_jwt)"


# The same methods by their registered names (RFC 8414 token_endpoint_auth_methods_supported; the YAML files').
CLIENT_AUTH_METHOD_NAMES: dict[str, str] = {
    ClientAuthMethod.BASIC: "client_secret_basic",
    ClientAuthMethod.BODY: "client_secret_post",
    ClientAuthMethod.PRIVATE_KEY_JWT: "private_key_jwt",
}


class TokenRequestFormat(models.TextChoices):
    FORM = "form", "Form (application/x-www-form-urlencoded, RFC 6749)"
    JSON = "json", "JSON object (application/json)"


class ProviderCategory(models.TextChoices):
    """Groups in the admin's provider type select, so 50+ types stay findable."""

    IDENTITY = "identity", "Identity and single sign-on"
    COLLABORATION = "collaboration", "Productivity and collaboration"
    DEVELOPER = "developer", "Developer tools"
    CUSTOMER = "customer", "CRM, sales and support"
    FINANCE = "finance", "Finance, ERP, HR and e-signature"
    COMMERCE = "commerce", "Commerce and payments"
    SOCIAL = "social", "Social networks"


def split_scopes(text: str) -> list[str]:
    """Scopes are typed comma-separated (as in the seed) or space-separated; both are accepted."""
    return [scope for scope in re.split(r"[,\s]+", text or "") if scope]


class Provider(models.Model):
    """A provider type: the preset a connection starts from. Certified presets come from catalog.yaml."""

    slug = models.SlugField(unique=True, help_text="Used in files and URLs, e.g. salesforce.")
    name = models.CharField(max_length=120, unique=True)
    description = models.TextField(blank=True)
    category = models.CharField(
        max_length=20, choices=ProviderCategory.choices, blank=True, help_text="Its group in the provider select."
    )
    authorization_url = models.CharField(
        max_length=500, blank=True, help_text="May contain placeholders such as <yourinstance> or <tenant>."
    )
    token_url = models.CharField(max_length=500, blank=True)
    revocation_url = models.CharField(
        max_length=500, blank=True, help_text="RFC 7009 token revocation endpoint, if the provider offers one."
    )
    device_authorization_url = models.CharField(
        max_length=500, blank=True, help_text="RFC 8628 device authorization endpoint, for the Device Code grant."
    )
    refresh_url = models.CharField(
        max_length=500, blank=True, help_text="Where refresh requests go, if not to the token URL (Figma, Adobe Sign)."
    )
    default_scopes = models.CharField(max_length=1000, blank=True, help_text="Comma- or space-separated.")
    # None and "" differ here: None is "the default scopes", "" is "ask for none" (Xero's custom connections).
    client_credentials_scopes = models.CharField(  # noqa: DJ001
        max_length=1000,
        blank=True,
        null=True,
        help_text="Default scopes for the grants that act as the application (Client Credentials, JWT Bearer), where "
        "they differ (Microsoft accepts only <resource>/.default there). Blank: the default scopes.",
    )
    scope_separator = models.CharField(
        max_length=5, default=" ", help_text="How the provider wants scopes joined (RFC 6749: a space)."
    )
    extra_authorization_params = models.JSONField(
        default=dict, blank=True, help_text='Added to every authorization URL, e.g. {"prompt": "consent"}.'
    )
    client_auth_method = models.CharField(
        max_length=20, choices=ClientAuthMethod.choices, default=ClientAuthMethod.BASIC
    )
    assertion_audience = models.CharField(
        max_length=500,
        blank=True,
        help_text="The aud of the signed assertions of private_key_jwt and the JWT Bearer grant, where the provider "
        "wants other than the token URL (Salesforce: its login URL). Blank: the token URL.",
    )
    grant_types = models.JSONField(default=list, help_text="The grant types this provider supports.")
    default_token_lifetime = models.PositiveIntegerField(
        null=True, blank=True, help_text="Seconds to assume when a token response has no expires_in."
    )
    refresh_margin = models.PositiveIntegerField(
        null=True, blank=True, help_text="Refresh this many seconds before expiry (default: the global setting)."
    )
    token_request_params = models.JSONField(
        default=dict,
        blank=True,
        help_text='Added to every token request (code exchange, refresh, client credentials), e.g. {"audience": '
        '"api.example.com"}.',
    )
    token_request_format = models.CharField(
        max_length=4,
        choices=TokenRequestFormat.choices,
        default=TokenRequestFormat.FORM,
        help_text="How token and revocation requests carry their parameters (RFC 6749: a form).",
    )
    token_request_headers = models.JSONField(
        default=dict, blank=True, help_text='Added to every token request, e.g. {"Accept": "application/json"}.'
    )
    token_response_fields = models.JSONField(
        default=dict,
        blank=True,
        help_text="Where the token answer holds a standard field, when not where RFC 6749 puts it: a dotted path, "
        'e.g. {"access_token": "authed_user.access_token"}.',
    )
    tokens_never_expire = models.BooleanField(
        default=False,
        help_text="Its access tokens do not expire: a token answer without expires_in is kept with no expiry and "
        "no refresh is scheduled for it (instead of assuming the default lifetime).",
    )
    refresh_token_max_idle = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Seconds after which an unused refresh token dies: a token is refreshed at least this often "
        "(within the refresh margin), however long its access token lives.",
    )
    refresh_token_max_lifetime = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Seconds after the grant's first authorization at which its refresh token dies however often it "
        "is used (an absolute lifetime): the connection needs a person to authorize it again by then, and "
        "managers are warned 30, 7 and 1 day(s) ahead. Blank: no such limit is documented.",
    )
    api_base_url = models.CharField(
        "API base URL",
        max_length=500,
        blank=True,
        help_text="Where the API proxy calls, e.g. https://graph.microsoft.com. May contain placeholders; "
        "<instance_url> and other fields of the token answer (Salesforce) are filled from the token.",
    )
    api_token_header = models.CharField(
        "API token header",
        max_length=100,
        default="Authorization",
        help_text="The header in which the API proxy sends the access token: Authorization for most APIs.",
    )
    api_token_prefix = models.CharField(
        "API token prefix",
        max_length=50,
        blank=True,
        default="Bearer",
        help_text="Written before the token, with a space (Bearer, or Zoho's Zoho-oauthtoken); empty: the token "
        "alone, as in Shopify's X-Shopify-Access-Token.",
    )
    revoke_replaced_grant = models.BooleanField(
        default=False,
        help_text="Revoking a refresh token ends that grant alone here (RFC 7009, per token), so the refresh token a "
        "new authorization replaces is revoked at the provider. Off where revoking any token may end the person's "
        "whole authorization of the app, the new grant with it, or where that is not documented: the replaced token "
        "is then left to expire.",
    )
    docs_url = models.URLField(blank=True)
    is_certified = models.BooleanField(
        default=False, editable=False, help_text="Certified presets come from the catalog and are read-only."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-is_certified", "name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        if problems := token_quirk_problems(
            self.token_request_params, self.token_request_headers, self.token_response_fields
        ) + api_token_header_problems(self.api_token_header, self.api_token_prefix):
            raise ValidationError(" ".join(problems))

    @property
    def is_custom(self) -> bool:
        return self.slug == "custom" or not self.is_certified

    @property
    def placeholders(self) -> list[str]:
        """Placeholder names in the URL templates and default scopes, in order of first appearance."""
        found: list[str] = []
        for template in (*self.url_templates, self.default_scopes, self.client_credentials_scopes or ""):
            for name in PLACEHOLDER_PATTERN.findall(template):
                if name not in found:
                    found.append(name)
        return found

    @property
    def url_templates(self) -> tuple[str, ...]:
        return (
            self.authorization_url,
            self.token_url,
            self.revocation_url,
            self.device_authorization_url,
            self.refresh_url,
            self.assertion_audience,
            self.api_base_url,
        )

    def default_scopes_for(self, grant_type: str) -> str:
        """The scopes a connection with this grant asks for when it names none ("" for a grant set to ask for
        none: client_credentials_scopes is "" rather than None)."""
        if grant_type in APP_GRANTS and self.client_credentials_scopes is not None:
            return self.client_credentials_scopes
        return self.default_scopes

    @property
    def supports_pkce(self) -> bool:
        return GrantType.AUTHORIZATION_CODE_PKCE in self.grant_types


# What the engine sends itself in a token request (RFC 6749 4.1.3, 4.4.2, 6; RFC 7636): not for a quirk to change.
RESERVED_TOKEN_PARAMS = frozenset(
    {"grant_type", "code", "redirect_uri", "client_id", "client_secret", "refresh_token", "scope", "code_verifier"}
    | {"device_code", "assertion", "client_assertion", "client_assertion_type"}  # RFC 8628, RFC 7523
    # and the names requests-oauthlib's calls take besides the request's parameters
    | {"auth", "headers", "body", "method", "include_client_id", "timeout", "verify", "proxies", "cert", "token_url"}
)
STANDARD_TOKEN_FIELDS = ("access_token", "refresh_token", "id_token", "token_type", "scope", "expires_in")


HEADER_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 5.6.2: a header name, or an auth scheme
# Headers that the proxy's HTTP client or the connection itself owns (RFC 9110 7.6.1, 8.6, 10.1.1): a token sent in
# one would be dropped, duplicated or misread on the way.
NOT_FOR_A_TOKEN = frozenset(
    {"host", "content-length", "content-type", "content-encoding", "transfer-encoding", "connection", "keep-alive"}
    | {"te", "trailer", "upgrade", "expect", "cookie", "proxy-authorization", "proxy-connection"}
)


def api_token_header_problems(header: object, prefix: object) -> list[str]:
    """What is wrong with how a provider type's API takes its token, in words ([] when nothing)."""
    problems = []
    if not isinstance(header, str) or not HEADER_TOKEN.fullmatch(header) or header.lower() in NOT_FOR_A_TOKEN:
        problems.append("api_token_header must be a header name (letters, digits, dashes) other than one HTTP owns.")
    if not isinstance(prefix, str) or (prefix and not HEADER_TOKEN.fullmatch(prefix)):
        problems.append("api_token_prefix must be one word, such as Bearer, or empty for the token alone.")
    return problems


def token_quirk_problems(params: object, headers: object, fields: object) -> list[str]:
    """What is wrong with a provider type's token-request quirks, in words ([] when nothing)."""
    problems = []
    for name, value in (("token_request_params", params), ("token_request_headers", headers)):
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            problems.append(f"{name} must be an object of names and text values.")
    if isinstance(params, dict) and (reserved := sorted(set(params) & RESERVED_TOKEN_PARAMS)):
        problems.append(f"token_request_params cannot set {', '.join(reserved)}: the engine sends those itself.")
    if not isinstance(fields, dict) or set(fields) - set(STANDARD_TOKEN_FIELDS):
        problems.append(f"token_response_fields maps some of {', '.join(STANDARD_TOKEN_FIELDS)} to dotted paths.")
    elif not all(isinstance(path, str) and path and "" not in path.split(".") for path in fields.values()):
        problems.append("token_response_fields: each path is names joined by dots, e.g. authed_user.access_token.")
    return problems
