"""Who may use connections: roles (Django groups) and bot keys (stored as digests)."""

import hashlib
from datetime import datetime

from django.conf import settings
from django.contrib.auth.models import Group
from django.db import models
from django.utils import timezone


def sha256_digest(value: str) -> str:
    """What is stored of a secret that is only ever compared, never given back: bot keys, OAuth state, sessions."""
    return hashlib.sha256(value.encode()).hexdigest()


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
        # The admin list at 100,000 keys: its order, its expiry filter, its search by a name's prefix.
        indexes = [
            models.Index(fields=["created_at"], name="bot_key_created"),
            models.Index(fields=["expires_at"], name="bot_key_expiry"),
            models.Index(fields=["name"], name="bot_key_name_prefix", opclasses=["varchar_pattern_ops"]),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.key_id}…)"

    class State(models.TextChoices):
        ACTIVE = "active", "Active"
        REVOKED = "revoked", "Revoked"
        EXPIRED = "expired", "Expired"

    def state(self, now: datetime | None = None) -> "BotKey.State":
        """Whether the key itself is usable: the one rule of it (its user's own state aside: unusable_because)."""
        if self.revoked_at is not None:
            return BotKey.State.REVOKED
        if self.expires_at is not None and self.expires_at <= (now or timezone.now()):
            return BotKey.State.EXPIRED
        return BotKey.State.ACTIVE

    @property
    def is_active(self) -> bool:
        return self.state() == BotKey.State.ACTIVE

    def unusable_because(self, now: datetime | None = None) -> str:
        """Why the token endpoint refuses this key whatever its user may reach, in words; "" when it does not.
        Reads the key's user."""
        state = self.state(now)
        if state == BotKey.State.REVOKED:
            return "This bot key was revoked."
        if state == BotKey.State.EXPIRED:
            return "This bot key has expired."
        if not self.user.is_active:
            return "The bot key's user is deactivated."
        return ""


class BotAccount(models.Model):
    """A user that is a bot, not a person: it has no usable password and cannot sign in, and the managers may
    create its bot keys (a person's key acts as that person: only they or a superuser create it)."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, primary_key=True, on_delete=models.CASCADE, related_name="bot_account"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        verbose_name = "bot account"
        ordering = ["user__username"]

    def __str__(self) -> str:
        return self.user.get_username()
