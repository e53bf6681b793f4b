"""Test-control state of the auth server, kept in its SQLite DB so every thread and process
of the server sees the same faults, options and counters."""

from django.db import models
from django.db.models import F

COUNTERS = (
    "token_authorization_code",
    "token_refresh_token",
    "token_client_credentials",
    "token_jwt_bearer",
    "token_device_code",
    "token_other",
    "revocations",
    "introspections",
    "refresh_token_reuses",
)


class ClientFlags(models.Model):
    """Per-client test flags that DOT's Application has no column for."""

    client_id = models.CharField(max_length=255, unique=True)
    pkce_required = models.BooleanField(default=False)
    # Signed assertions (tests.authserver.assertions): the client's public key (PEM) and the kid it must name, and
    # its secret, which is what DOT is shown once an assertion has authenticated the client.
    public_key = models.TextField(default="")
    key_id = models.CharField(max_length=200, default="")
    secret = models.CharField(max_length=255, default="")

    def __str__(self) -> str:
        return f"{self.client_id} (pkce_required={self.pkce_required})"


class UsedRefreshToken(models.Model):
    """A refresh token the server has accepted once (and rotated away from): a client must never show it again."""

    token = models.CharField(max_length=255, unique=True)

    def __str__(self) -> str:
        return "used refresh token"


class UsedAssertion(models.Model):
    """The jti of an assertion the server has accepted: an assertion is good for one use."""

    jti = models.CharField(max_length=255, unique=True)

    def __str__(self) -> str:
        return "used assertion"


class ServerState(models.Model):
    """Singleton row (pk=1, created by the migration): faults, token options, counters."""

    fault_mode = models.CharField(max_length=32, default="none")
    fault_remaining = models.IntegerField(null=True, default=None)  # None = until cleared
    fault_delay = models.FloatField(default=0)
    fault_grant_types = models.JSONField(null=True, default=None)  # None = every grant type
    token_extra = models.JSONField(default=dict)
    omit_expires_in = models.BooleanField(default=False)
    omit_refresh_token_on_refresh = models.BooleanField(default=False)
    latency = models.FloatField(default=0)  # seconds before the request is processed
    response_delay = models.FloatField(default=0)  # seconds after it is processed, before the answer goes out
    fault_description = models.TextField(default="")  # the error_description of an invalid_grant fault
    # What /o/.well-known/openid-configuration answers differently: {"missing": true} (404), {"document": {...}}
    # (fields replacing the real ones).
    discovery = models.JSONField(default=dict)
    # Provider quirks: the token answer nested under this key (Slack v2's authed_user), and request parameters
    # and headers a token request must carry, else 400 invalid_request.
    nest_under = models.CharField(max_length=40, default="")
    require_params = models.JSONField(default=dict)
    require_headers = models.JSONField(default=dict)
    # Client authentication accepted at the token URL: "basic" or "post" only (else 401 invalid_client), or both.
    client_auth = models.CharField(max_length=10, default="")
    json_body = models.BooleanField(default=False)  # token requests are a JSON object, not a form (Zendesk's)
    refresh_elsewhere = models.BooleanField(default=False)  # refreshes only at /o/refresh/, not /o/token/ (Figma's)
    # Revoking any token of a person's grant to a client ends every token of that person for that client, all their
    # refresh and access tokens (as reported of Google): not only that token and those issued from it (RFC 7009 2.1).
    revoke_whole_grant = models.BooleanField(default=False)

    token_authorization_code = models.IntegerField(default=0)
    token_refresh_token = models.IntegerField(default=0)
    token_client_credentials = models.IntegerField(default=0)
    token_jwt_bearer = models.IntegerField(default=0)
    token_device_code = models.IntegerField(default=0)
    token_other = models.IntegerField(default=0)
    revocations = models.IntegerField(default=0)
    introspections = models.IntegerField(default=0)
    refresh_token_reuses = models.IntegerField(default=0)  # a refresh token presented again after it was used

    def __str__(self) -> str:
        return f"ServerState(fault={self.fault_mode}, remaining={self.fault_remaining})"

    @classmethod
    def get(cls) -> "ServerState":
        return cls.objects.get(pk=1)

    @classmethod
    def bump(cls, counter: str) -> None:
        # A single UPDATE ... SET n = n + 1: atomic across threads and processes.
        cls.objects.filter(pk=1).update(**{counter: F(counter) + 1})

    @classmethod
    def reset(cls) -> None:
        fields = {f.name: f.get_default() for f in cls._meta.concrete_fields if not f.primary_key}
        cls.objects.filter(pk=1).update(**fields)


# --- OpenID Provider (tests.authserver.openid) ---------------------------------------------------------------


class OpenIdFault(models.Model):
    """An ID token fault for the next token answer that carries an ID token (used up by it): the claim or the
    signature a relying party must refuse."""

    mode = models.CharField(max_length=20)

    def __str__(self) -> str:
        return f"ID token fault {self.mode}"
