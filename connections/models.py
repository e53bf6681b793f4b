import hashlib
from datetime import datetime

from django.conf import settings
from django.contrib.auth.models import Group
from django.db import models
from django.db.models import Q
from django.utils import timezone
from django_cryptography.fields import encrypt

from providers.models import APP_GRANTS, PLACEHOLDER_PATTERN, ClientAuthMethod, GrantType, Provider, split_scopes

# The feature permissions a role carries (codename: label); Django permissions of the Connection model.
FEATURE_PERMISSIONS = {
    "manage_connections": "Manage connections (create, edit, connect, delete)",
    "view_connections": "View connections and their status",
}


def sha256_digest(value: str) -> str:
    """What is stored of a secret that is only ever compared, never given back: bot keys, OAuth state, sessions."""
    return hashlib.sha256(value.encode()).hexdigest()


class TokenType(models.TextChoices):
    # Short: they are a list column; Connection.token_type's help text explains them.
    SHARED = "shared", "Shared"
    USER_SPECIFIC = "user_specific", "User-specific"


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
        default_permissions = ()
        permissions = list(FEATURE_PERMISSIONS.items())

    def __str__(self) -> str:
        return self.name

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


class TokenState(models.TextChoices):
    ACTIVE = "active", "Connected"
    REFRESH_FAILING = "refresh_failing", "Refresh failing"
    REAUTHORIZATION_REQUIRED = "reauthorization_required", "Reauthorization required"


class OAuthToken(models.Model):
    """The tokens of one connection (shared: user is empty) or of one user of a user-specific connection."""

    # No index of its own: the (connection, user) unique constraint's index serves lookups by connection, and
    # every index is one more write per refresh.
    connection = models.ForeignKey(Connection, on_delete=models.CASCADE, related_name="tokens", db_index=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="oauth_tokens"
    )
    access_token = encrypt(models.TextField())
    refresh_token = encrypt(models.TextField(blank=True))
    id_token = encrypt(models.TextField(blank=True))
    token_type = models.CharField(max_length=40, default="Bearer")
    scope = models.TextField(blank=True, help_text="As the provider granted it, space-separated.")
    extra = models.JSONField(default=dict, blank=True, help_text="Non-secret fields of the token response.")
    expires_at = models.DateTimeField(null=True, blank=True)
    state = models.CharField(max_length=30, choices=TokenState.choices, default=TokenState.ACTIVE)
    consecutive_failures = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True, help_text="The last failure, in words.")
    last_error_at = models.DateTimeField(null=True, blank=True)
    authorized_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    authorized_at = models.DateTimeField(default=timezone.now)
    obtained_at = models.DateTimeField(default=timezone.now, help_text="When the current access token was issued.")
    refreshed_at = models.DateTimeField(null=True, blank=True)
    # When the refresh engine should next renew this token; indexed for the beat sweep, whose claim moves it on.
    next_refresh_at = models.DateTimeField(null=True, blank=True, db_index=True)
    # When the token was due for its refresh, as the engine set it (the claim does not move it): how far behind
    # the workers are (connections.ops.health). No index: it is read for alerting, and written by every refresh.
    refresh_due_at = models.DateTimeField(null=True, blank=True)
    # Single flight: whoever holds an unexpired lease is the only one allowed to call the provider.
    lease_owner = models.CharField(max_length=64, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    # Bumped on every new access token, so a waiting caller can tell that someone else refreshed.
    generation = models.PositiveIntegerField(default=1)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["connection"], condition=Q(user__isnull=True), name="one_shared_token_per_connection"
            ),
            models.UniqueConstraint(fields=["connection", "user"], name="one_token_per_connection_user"),
        ]

    def __str__(self) -> str:
        owner = self.user.get_username() if self.user_id and self.user else "shared"
        return f"Token of {self.connection} ({owner})"

    def expires_in(self, now: datetime | None = None) -> int | None:
        if self.expires_at is None:
            return None
        return int((self.expires_at - (now or timezone.now())).total_seconds())

    def is_valid(self, now: datetime | None = None, min_validity: int = 0) -> bool:
        return token_valid_for(self.expires_at, now or timezone.now(), min_validity)


def token_valid_for(expires_at: datetime | None, now: datetime, min_validity: int = 0) -> bool:
    """A token without an expiry counts as valid; others must outlive `min_validity` seconds from now."""
    return expires_at is None or int((expires_at - now).total_seconds()) > min_validity


class AuthorizationRequest(models.Model):
    """An authorization-code flow in progress: single-use state bound to the browser session that began it."""

    state_digest = models.CharField(max_length=64, unique=True)
    session_digest = models.CharField(max_length=64)
    connection = models.ForeignKey(Connection, on_delete=models.CASCADE, related_name="+")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    for_user = models.BooleanField(help_text="The user's own token of a user-specific connection.")
    code_verifier = encrypt(models.TextField(blank=True))
    return_url = models.CharField(max_length=500)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"Authorization of {self.connection} started {self.created_at:%Y-%m-%d %H:%M}"


class DeviceAuthorization(models.Model):
    """A Device Code grant in progress (RFC 8628): the user code a person enters at the provider's verification
    page, while a worker polls the token URL with the device code until they approve, deny, or it expires."""

    class Status(models.TextChoices):
        PENDING = "pending", "Waiting for approval"
        APPROVED = "approved", "Approved: connected"
        DENIED = "denied", "Denied at the provider"
        EXPIRED = "expired", "Expired before approval"
        FAILED = "failed", "Failed"

    connection = models.ForeignKey(Connection, on_delete=models.CASCADE, related_name="+")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )  # whose token: None for a shared connection
    started_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    device_code = encrypt(models.TextField())
    user_code = models.CharField(max_length=64)
    verification_uri = models.CharField(max_length=1000)
    verification_uri_complete = models.CharField(max_length=2000, blank=True)
    interval = models.PositiveIntegerField(help_text="Seconds between two polls; slow_down adds five.")
    expires_at = models.DateTimeField()
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    message = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"Device authorization of {self.connection} ({self.get_status_display()})"


class WebhookEndpoint(models.Model):
    """Where lifecycle events are posted (connections.notify.webhooks): each with the events it wants and its own
    secret."""

    name = models.CharField(max_length=120, unique=True)
    url = models.CharField("URL", max_length=500, help_text="Reached under the outbound policy: https, not private.")
    events = models.JSONField(default=list, blank=True, help_text="The events it gets; none ticked: all of them.")
    secret = encrypt(models.TextField(blank=True))  # signs each body; write-only in the admin
    is_enabled = models.BooleanField(default=True)
    last_delivery_at = models.DateTimeField(null=True, blank=True)
    last_status = models.CharField(max_length=200, blank=True, help_text="Of the last delivery attempt.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "webhook endpoint"

    def __str__(self) -> str:
        return self.name


class AuditEvent(models.Model):
    """Append-only record of what happened to connections and tokens. Never holds a secret."""

    class Outcome(models.TextChoices):
        SUCCESS = "success", "Success"
        FAILURE = "failure", "Failure"

    class Action(models.TextChoices):
        AUTHORIZE_START = "authorize_start", "Authorization started"
        AUTHORIZE_CALLBACK = "authorize_callback", "Authorization answered"
        TOKEN_REQUEST = "token_request", "Token requested by a bot"
        TOKEN_REFRESH = "token_refresh", "Token refreshed"
        TOKEN_OBTAIN = "token_obtain", "Token obtained (client credentials)"
        CONNECTION_CREATE = "connection_create", "Connection created"
        CONNECTION_UPDATE = "connection_update", "Connection changed"
        CONNECTION_TEST = "connection_test", "Connection tested"
        CONNECTION_DELETE = "connection_delete", "Connection deleted"
        DISCONNECT = "disconnect", "Disconnected"
        ROLE_UPDATE = "role_update", "Role changed"
        BOT_KEY_CREATE = "bot_key_create", "Bot key created"
        BOT_KEY_REVOKE = "bot_key_revoke", "Bot key revoked"
        CONFIG_CREATE = "config_create", "Created by apply_config"
        CONFIG_UPDATE = "config_update", "Changed by apply_config"
        AUTHENTICATION_FAILURES = "authentication_failures", "Failed authentications (counted)"

    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor_label = models.CharField(max_length=150, help_text="Who, kept even if the user is deleted.")
    connection = models.ForeignKey(
        Connection, null=True, blank=True, on_delete=models.SET_NULL, related_name="audit_events"
    )
    connection_label = models.CharField(max_length=120, blank=True)
    action = models.CharField(max_length=40, choices=Action.choices, db_index=True)
    outcome = models.CharField(max_length=10, choices=Outcome.choices)
    detail = models.TextField(blank=True)
    remote_addr = models.GenericIPAddressField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        # In words, as the admin's pages title it: "Token refreshed", not token_refresh.
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.get_action_display()} ({self.get_outcome_display()})"


class FailedAuthenticationWindow(models.Model):
    """A minute in which one address failed to authenticate more often than the audit log records one by one;
    a scheduled task writes one event with the count once the minute is over (connections.audit.events)."""

    where = models.CharField(max_length=40)
    remote_addr = models.GenericIPAddressField(null=True, blank=True)
    window_start = models.DateTimeField(db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["where", "remote_addr", "window_start"], name="one_window_per_address")
        ]

    def __str__(self) -> str:
        return f"{self.where} {self.remote_addr} {self.window_start:%Y-%m-%d %H:%M}"


class BeatHeartbeat(models.Model):
    """The last time a beat-scheduled task ran on a worker (one row); /healthz reads it."""

    name = models.CharField(max_length=40, unique=True)
    last_run_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.name} at {self.last_run_at:%Y-%m-%d %H:%M:%S}"


class AnswerVersion(models.Model):
    """What the token endpoint's answers from memory depend on besides their token's own row, as a number that
    only grows: every write to keys, users, roles, invitations or connection settings moves it in its own
    transaction. Each web process reads it with its tokens' generations (connections.cache.token_cache)."""

    IDENTITY = "identity"

    name = models.CharField(max_length=40, primary_key=True)
    value = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.name} {self.value}"


class Role(Group):
    """A role is a Django group: its members get its feature permissions and may use the connections it is
    invited to."""

    class Meta:
        proxy = True
        verbose_name = "role"


class BotKey(models.Model):
    """A bot runner's API key. Only a digest is stored; the raw key is shown once, when it is created."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="bot_keys")
    name = models.CharField(max_length=120, help_text="What the key is for, e.g. the bot or machine using it.")
    key_id = models.CharField(max_length=16, unique=True, editable=False, help_text="The key's public part.")
    digest = models.CharField(max_length=64, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    last_used_from = models.GenericIPAddressField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "bot key"

    def __str__(self) -> str:
        return f"{self.name} ({self.key_id}…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > timezone.now())
