"""Authorizations in progress: an authorization-code flow's state, a device code waiting for approval."""

from django.conf import settings
from django.db import models
from django_cryptography.fields import encrypt

from connections.models.connection import Connection


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
