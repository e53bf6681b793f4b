"""Connections: what an administrator creates, its token type and its derived status."""

from typing import Any

from django.conf import settings
from django.contrib.auth.models import Group
from django.db import models
from django_cryptography.fields import encrypt

from connections.oauth import assertions
from providers.models import (
    APP_GRANTS,
    PLACEHOLDER_PATTERN,
    TOKEN_FIELD_PATTERN,
    ClientAuthMethod,
    GrantType,
    Provider,
    split_scopes,
)

# The feature permissions a role carries (codename: label); Django permissions of the Connection model.
FEATURE_PERMISSIONS = {
    "manage_connections": "Manage connections (create, edit, connect, delete)",
    "view_connections": "View connections and their status",
}


class TokenType(models.TextChoices):
    # Short: they are a list column; Connection.token_type's help text explains them.
    SHARED = "shared", "Shared"
    USER_SPECIFIC = "user_specific", "User-specific"


class TokenAccess(models.TextChoices):
    """How bots may use a connection's token: given to them, used for them by the API proxy, or both."""

    BOTH = "both", "Token endpoint and API proxy"
    TOKEN = "token", "Token endpoint only"
    PROXY = "proxy", "API proxy only (no bot ever holds the token)"


class ConnectionStatus(models.TextChoices):
    """A connection's status, derived from its tokens (connections.selectors judges it, in Python for a row and in
    SQL for a filter or a count): the one vocabulary of the list, its filter, the dashboard, My connections and
    /metrics."""

    CONNECTED = "connected", "Connected"
    REFRESH_FAILING = "refresh_failing", "Refresh failing"
    REAUTHORIZATION_REQUIRED = "reauthorization_required", "Reauthorization required"
    NOT_CONNECTED = "not_connected", "Not connected"
    DISABLED = "disabled", "Disabled"


class Connection(models.Model):
    name = models.CharField(max_length=120, unique=True)
    slug = models.SlugField(max_length=120, unique=True, help_text="Bots ask for tokens by this name.")
    description = models.TextField(blank=True)
    provider = models.ForeignKey(Provider, on_delete=models.PROTECT, related_name="connections")
    placeholders = models.JSONField(
        default=dict, blank=True, help_text="Values for the provider's URL placeholders, e.g. yourinstance."
    )
    grant_type = models.CharField(max_length=30, choices=GrantType.choices, default=GrantType.AUTHORIZATION_CODE)
    token_type = models.CharField(
        max_length=20,
        choices=TokenType.choices,
        default=TokenType.SHARED,
        help_text="Shared: one token, authorized by an administrator, for unattended bots. User-specific: each "
        "invited user authorizes their own token, and a bot gets the token of its key's user.",
    )
    client_id = models.CharField(max_length=500)
    client_secret = encrypt(models.TextField(blank=True))
    client_auth_method = models.CharField(
        "client authentication",
        max_length=20,
        choices=ClientAuthMethod.choices,
        blank=True,
        help_text="How the client authenticates at the token URL. Blank: as the provider type does.",
    )
    private_key = encrypt(models.TextField(blank=True))  # PEM, for signed assertions; write-only like the secret
    # Rollover without an outage (connections.engine.rollover): entered ahead, used when the current one is refused
    # as invalid_client, promoted to current on its first success; the one it replaced is kept until an
    # administrator confirms the rollover. Write-only and encrypted, like the current ones.
    next_client_secret = encrypt(models.TextField(blank=True))
    previous_client_secret = encrypt(models.TextField(blank=True))
    next_private_key = encrypt(models.TextField(blank=True))
    previous_private_key = encrypt(models.TextField(blank=True))
    client_secret_expires_at = models.DateTimeField(
        "client secret expires",
        null=True,
        blank=True,
        help_text="When the provider stops taking the client secret (e.g. Microsoft Entra's, at most 24 months "
        "after it was made). Managers are warned 30, 7 and 1 day(s) ahead.",
    )
    next_client_secret_expires_at = models.DateTimeField(
        "next client secret expires",
        null=True,
        blank=True,
        help_text="When the next client secret expires: it becomes the client secret's expiry when promoted.",
    )
    signing_certificate_expires_at = models.DateTimeField(
        "signing certificate expires",
        null=True,
        blank=True,
        editable=False,
        help_text="Read from the certificate stored with the private key (its notAfter).",
    )
    private_key_id = models.CharField(
        "key ID",
        max_length=200,
        blank=True,
        help_text="Sent as the kid of the signed assertions, if the provider wants one.",
    )
    jwt_subject = models.CharField(
        "JWT subject",
        max_length=320,
        blank=True,
        help_text="JWT Bearer: whom the assertion acts as (its sub), e.g. a Google Workspace user to impersonate or a "
        "Salesforce username. Blank: the client ID.",
    )
    authorization_url = models.CharField(
        max_length=500, blank=True, help_text="Leave blank to use the provider type's URL."
    )
    token_url = models.CharField(max_length=500, blank=True, help_text="Leave blank to use the provider type's URL.")
    revocation_url = models.CharField(
        max_length=500, blank=True, help_text="Leave blank to use the provider type's URL, if it has one."
    )
    device_authorization_url = models.CharField(
        max_length=500, blank=True, help_text="Device Code grant: leave blank to use the provider type's URL."
    )
    issuer = models.CharField(
        max_length=500,
        blank=True,
        help_text="The authorization server's issuer identifier. When set, an authorization answer that names "
        "another issuer (RFC 9207 iss) is refused.",
    )
    scopes = models.CharField(
        max_length=2000, blank=True, help_text="Comma-separated, e.g. api,refresh_token,offline_access."
    )
    extra_authorization_params = models.JSONField(
        default=dict, blank=True, help_text='Added to the authorization URL, e.g. {"prompt": "consent"}.'
    )
    default_token_lifetime = models.PositiveIntegerField(
        null=True, blank=True, help_text="Seconds to assume when the provider sends no expires_in."
    )
    api_base_url = models.CharField(
        "API base URL",
        max_length=500,
        blank=True,
        help_text="Where the API proxy may call: a bot's path is appended to it. Leave blank to use the provider "
        "type's; set it to narrow it (e.g. https://graph.microsoft.com/v1.0) or for a Custom connection.",
    )
    token_access = models.CharField(
        max_length=10,
        choices=TokenAccess.choices,
        default=TokenAccess.BOTH,
        help_text="API proxy only: the token endpoint refuses this connection, so no bot ever holds its token.",
    )
    is_enabled = models.BooleanField(default=True, help_text="A disabled connection gives no tokens to anyone.")
    roles = models.ManyToManyField(
        Group, blank=True, related_name="connections", verbose_name="roles invited to use it"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    # A failed Save and test or Connect that stored no token: kept here, as no token row holds it (a token's own
    # failures are the token's). Written with update(), so the token endpoint's cached answers stay valid.
    last_failure = models.TextField(blank=True, help_text="The last failed test or connect, in words.")
    last_failure_at = models.DateTimeField(null=True, blank=True)
    failures_in_a_row = models.PositiveIntegerField(default=0)
    # Moved forward by the batched audit of successful token requests (connections.audit.rows), off the hot path.
    last_token_issued_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name"]
        # The admin list's filter of disabled connections (a minority). Its search by prefix of the name or the
        # slug uses their unique indexes (on PostgreSQL each has a twin of the pattern operator class, for LIKE).
        indexes = [models.Index(fields=["name"], name="connection_disabled", condition=models.Q(is_enabled=False))]
        default_permissions = ()
        permissions = list(FEATURE_PERMISSIONS.items())

    def __str__(self) -> str:
        return self.name

    def save(self, *args: Any, **kwargs: Any) -> None:
        # The signing certificate's expiry is read from the certificate stored with the key, whenever the key is.
        update_fields = kwargs.get("update_fields")
        if update_fields is None or "private_key" in update_fields:
            self.signing_certificate_expires_at = assertions.certificate_expiry(self.private_key)
            if update_fields is not None:
                kwargs["update_fields"] = {*update_fields, "signing_certificate_expires_at"}
        super().save(*args, **kwargs)

    def _fill(self, template: str) -> str:
        return PLACEHOLDER_PATTERN.sub(lambda match: self.placeholders.get(match.group(1), match.group(0)), template)

    # A typed URL may use placeholders too; either way what is called is exactly what the form checked.
    @property
    def effective_authorization_url(self) -> str:
        return self._fill(self.authorization_url or self.provider.authorization_url)

    @property
    def effective_token_url(self) -> str:
        return self._fill(self.token_url or self.provider.token_url)

    @property
    def effective_revocation_url(self) -> str:
        return self._fill(self.revocation_url or self.provider.revocation_url)

    @property
    def effective_device_authorization_url(self) -> str:
        return self._fill(self.device_authorization_url or self.provider.device_authorization_url)

    @property
    def effective_refresh_url(self) -> str:
        return self._fill(self.provider.refresh_url) or self.effective_token_url

    @property
    def effective_assertion_audience(self) -> str:
        return self._fill(self.provider.assertion_audience) or self.effective_token_url

    @property
    def api_base_url_template(self) -> str:
        return self.api_base_url or self.provider.api_base_url

    def effective_api_base_url(self, token_extra: dict) -> str:
        """The API base with the token answer's fields (<instance_url>) and the connection's placeholders filled
        in; "" when there is none or a placeholder is left unfilled."""
        template = self.api_base_url_template
        fields = {name: value for name, value in (token_extra or {}).items() if isinstance(value, str)}
        filled = TOKEN_FIELD_PATTERN.sub(lambda match: fields.get(match.group(1), match.group(0)), template)
        filled = self._fill(filled)
        return "" if TOKEN_FIELD_PATTERN.search(filled) else filled.rstrip("/")

    @property
    def rollover_to_confirm(self) -> bool:
        """A next credential was promoted, and the one it replaced is kept until an administrator drops it."""
        return bool(self.previous_client_secret or self.previous_private_key)

    @property
    def effective_client_auth_method(self) -> str:
        return self.client_auth_method or self.provider.client_auth_method

    @property
    def scope_list(self) -> list[str]:
        if self.scopes.strip():
            return split_scopes(self.scopes)
        return split_scopes(self._fill(self.provider.default_scopes_for(self.grant_type)))

    @property
    def uses_authorization_code(self) -> bool:
        return self.grant_type not in APP_GRANTS

    @property
    def uses_device_code(self) -> bool:
        return self.grant_type == GrantType.DEVICE_CODE

    @property
    def uses_pkce(self) -> bool:
        return self.grant_type == GrantType.AUTHORIZATION_CODE_PKCE

    @property
    def is_user_specific(self) -> bool:
        return self.token_type == TokenType.USER_SPECIFIC

    @property
    def token_lifetime_default(self) -> int:
        return self.default_token_lifetime or self.provider.default_token_lifetime or settings.DEFAULT_TOKEN_LIFETIME
