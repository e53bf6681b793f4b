"""A connection's tokens (shared, or one per user), encrypted at rest, with what the refresh engine needs."""

from datetime import datetime

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone
from django_cryptography.fields import encrypt

from connections.models.connection import Connection


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
    # Encrypted like the tokens: the fields a provider answers besides them are its to describe, not ours.
    extra = encrypt(models.JSONField(default=dict, blank=True, help_text="The other fields of the token response."))
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
        # For the admin at a million tokens: the tokens in trouble (a minority: the status filter, the
        # dashboard's attention list), and those about to expire or past their refresh time (the backlog).
        indexes = [
            models.Index(fields=["state", "connection"], name="token_trouble", condition=~Q(state="active")),
            models.Index(fields=["expires_at"], name="token_expiry"),
            models.Index(fields=["refresh_due_at"], name="token_refresh_due"),
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
