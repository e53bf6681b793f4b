"""People signed in by the company's identity provider, and the managers' requests that they authorize a
connection (connections.people)."""

from django.conf import settings
from django.contrib.auth.models import Group
from django.db import models

from connections.models.connection import Connection


class PersonIdentity(models.Model):
    """Who a user is at the identity provider: its issuer and the ID token's `sub`, the one stable claim (an e-mail
    address can be given to someone else; OpenID Connect Core 1.0 section 5.7)."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="identity")
    issuer = models.CharField(max_length=255)
    subject = models.CharField(max_length=255)
    created_at = models.DateTimeField(auto_now_add=True)
    last_signed_in_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "identity at the identity provider"
        verbose_name_plural = "identities at the identity provider"
        constraints = [models.UniqueConstraint(fields=["issuer", "subject"], name="person_identity_unique")]

    def __str__(self) -> str:
        return f"{self.subject} at {self.issuer}"


class AuthorizationAsk(models.Model):
    """A manager asked a member of a role to authorize their own token of a user-specific connection: when first,
    when last (a reminder goes at most once a day), and by whom."""

    connection = models.ForeignKey(Connection, on_delete=models.CASCADE, related_name="authorization_asks")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="authorization_asks")
    role = models.ForeignKey(Group, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    asked_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    first_asked_at = models.DateTimeField()
    last_asked_at = models.DateTimeField()
    times_asked = models.PositiveIntegerField(default=1)

    class Meta:
        verbose_name = "authorization request"
        constraints = [models.UniqueConstraint(fields=["connection", "user"], name="authorization_ask_unique")]

    def __str__(self) -> str:
        return f"{self.user_id} asked to authorize {self.connection_id}"


class IdentityProviderGroup(models.Model):
    """A group of the identity provider whose members get this role at sign-in: apply_config's
    identity_provider_groups (OIDC_ROLE_MAP is the other place such a mapping is written)."""

    role = models.ForeignKey(Group, on_delete=models.CASCADE, related_name="identity_provider_groups")
    group = models.CharField(max_length=255, help_text="The value of the groups claim, as the provider sends it.")

    class Meta:
        verbose_name = "identity provider group"
        constraints = [models.UniqueConstraint(fields=["role", "group"], name="identity_provider_group_unique")]

    def __str__(self) -> str:
        return f"{self.group} → {self.role_id}"
