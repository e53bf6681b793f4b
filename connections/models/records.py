"""What is recorded: the audit log and its failed-authentication windows, beat's heartbeat, the token endpoint's answer
version, the webhook endpoints."""

from datetime import datetime, tzinfo
from typing import Any, Literal

from django.conf import settings
from django.db import models
from django.db.models import Max, Min
from django.utils import timezone
from django_cryptography.fields import encrypt

from connections.models.connection import Connection

DatetimeKind = Literal["year", "month", "week", "day", "hour", "minute", "second"]


class AuditEventQuerySet(models.QuerySet):
    def datetimes(
        self, field_name: str, kind: DatetimeKind, order: Literal["ASC", "DESC"] = "ASC", tzinfo: tzinfo | None = None
    ) -> Any:
        """The admin's date drill-down asks for the distinct years (months, days) that have events: Django's own
        query truncates every row's time (a scan of the whole log). Here: the first and last time (two reads of
        the index on created_at), then one EXISTS probe of the index per year, month or day between them."""
        if field_name != "created_at" or kind not in ("year", "month", "day") or order != "ASC" or tzinfo:
            return super().datetimes(field_name, kind, order, tzinfo)
        bounds = self.aggregate(first=Min("created_at"), last=Max("created_at"))
        if bounds["first"] is None:
            return []
        first, last = timezone.localtime(bounds["first"]), timezone.localtime(bounds["last"])
        found, start = [], _period_start(first, kind)
        while start <= last:
            end = _period_next(start, kind)
            if self.filter(created_at__gte=start, created_at__lt=end).exists():
                found.append(start)
            start = end
        return found


def _period_start(moment: datetime, kind: str) -> datetime:
    moment = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    moment = moment.replace(day=1) if kind in ("year", "month") else moment
    return moment.replace(month=1) if kind == "year" else moment


def _period_next(start: datetime, kind: str) -> datetime:
    """The start of the next year, month or day, in the same time zone (a day across a DST change included)."""
    if kind == "year":
        naive = start.replace(tzinfo=None, year=start.year + 1)
    elif kind == "month":
        naive = start.replace(tzinfo=None, year=start.year + start.month // 12, month=start.month % 12 + 1)
    else:
        naive = datetime.combine(start.date().fromordinal(start.toordinal() + 1), start.time())
    return timezone.make_aware(naive, timezone.get_current_timezone())


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
        BOT_KEY_DELETE = "bot_key_delete", "Bot key deleted"
        BOT_ACCOUNT_CREATE = "bot_account_create", "Bot account created"
        WEBHOOK_DELETE = "webhook_delete", "Webhook endpoint deleted"
        CONFIG_CREATE = "config_create", "Created by apply_config"
        CONFIG_UPDATE = "config_update", "Changed by apply_config"
        AUTHENTICATION_FAILURES = "authentication_failures", "Failed authentications (counted)"
        PROXY_REQUEST = "proxy_request", "API called through the proxy by a bot"
        SIGN_IN = "sign_in", "Signed in with the identity provider"
        AUTHORIZATION_ASK = "authorization_ask", "Members asked to authorize"
        # Credentials that expire, and their rollover (connections.engine.rollover, connections.notify.expiry).
        CREDENTIAL_PROMOTE = "credential_promote", "Next client credential promoted"
        CREDENTIAL_PREVIOUS_DROP = "credential_previous_drop", "Previous client credential dropped"
        CREDENTIAL_EXPIRING = "credential_expiring", "Credential expiry warned"
        AUDIT_PRUNE = "audit_prune", "Audit events pruned (retention)"

    class Kind(models.TextChoices):
        """How the answers a rolled-up row accounts for were given (connections.audit.rows); blank: one event."""

        ONE = "", "One event"
        MEMORY = "memory", "Token answers from memory"
        FULL = "full", "Token answers through the database"
        PROXY = "proxy", "Calls through the API proxy"

    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor_label = models.CharField(max_length=150, help_text="Who, kept even if the user is deleted.")
    connection = models.ForeignKey(
        Connection, null=True, blank=True, on_delete=models.SET_NULL, related_name="audit_events"
    )
    connection_label = models.CharField(max_length=120, blank=True)
    action = models.CharField(max_length=40, choices=Action.choices)
    outcome = models.CharField(max_length=10, choices=Outcome.choices)
    detail = models.TextField(blank=True)
    remote_addr = models.GenericIPAddressField(null=True, blank=True)
    # A token answer or proxied call is rolled up with those of the same key, connection, kind, outcome, address and
    # minute into one row (per web process): created_at is the first, last_at the last, count how many.
    # Defaults of the database's own, for the inserts written by hand (connections.audit.rows); no CHECK on the count
    # (a positive integer field's), which adding to a big table would validate row by row under its lock.
    kind = models.CharField(max_length=10, choices=Kind.choices, blank=True, db_default=Kind.ONE)
    count = models.IntegerField(db_default=1, help_text="How many answers or calls this row accounts for.")
    last_at = models.DateTimeField(null=True, blank=True, help_text="The last of them (the first: created_at).")

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        # For the admin's list at tens of millions of rows: each filter with the list's order (newest first) is
        # one index, read from its end; the labels' indexes also serve the list's search by prefix (their pattern
        # operator class, on PostgreSQL); failures and rolled-up rows are a minority, indexed alone.
        indexes = [
            models.Index(fields=["action", "created_at"], name="audit_action_time"),
            models.Index(
                fields=["connection_label", "created_at"],
                name="audit_connection_time",
                opclasses=["varchar_pattern_ops", ""],
            ),
            models.Index(
                fields=["actor_label", "created_at"], name="audit_actor_time", opclasses=["varchar_pattern_ops", ""]
            ),
            models.Index(fields=["created_at"], name="audit_failure_time", condition=models.Q(outcome="failure")),
            models.Index(fields=["kind", "created_at"], name="audit_rollup_time", condition=~models.Q(kind="")),
        ]

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
    """What a beat-scheduled job did last, one row a job (beat's heartbeat, each worker that ran it, the refresh
    sweep, the refresh tasks): when it last succeeded and when and how it last failed. /healthz reads them."""

    name = models.CharField(max_length=40, unique=True)
    last_run_at = models.DateTimeField(null=True, blank=True, help_text="When it last succeeded.")
    last_error = models.TextField(blank=True, help_text="Its last failure, in words (never a secret).")
    last_error_at = models.DateTimeField(null=True, blank=True)
    failures_in_a_row = models.PositiveIntegerField(default=0)
    # Any number of beats may queue a job: whoever's copy claims a period first runs it (connections.ops.periods).
    period_start = models.DateTimeField(
        null=True, blank=True, help_text="The start of the last period this job was claimed for and run in."
    )

    def __str__(self) -> str:
        return f"{self.name} at {self.last_run_at:%Y-%m-%d %H:%M:%S}" if self.last_run_at else self.name


class AnswerVersion(models.Model):
    """What the token endpoint's answers from memory depend on besides their token's own row, as a number that
    only grows: every write to keys, users, roles, invitations or connection settings moves it in its own
    transaction. Each web process reads it with its tokens' generations (connections.cache.token_cache)."""

    IDENTITY = "identity"

    name = models.CharField(max_length=40, primary_key=True)
    value = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.name} {self.value}"


class TokenChange(models.Model):
    """One change to a token row that an answer from memory may depend on (a new access token, generation or
    state; a deleted row), appended by database triggers in the writer's own transaction (migration 0022; the SQL
    is in connections.cache.change_log), so no write path can forget it. Every web process reads the rows past
    its position at each report, instead of the versions of every token it holds an answer of; rows older than
    a minute are pruned (connections.tasks.token_changes_prune)."""

    seq = models.BigAutoField(primary_key=True)  # SQLite: AUTOINCREMENT, so a number is never given twice
    token_id = models.BigIntegerField()  # no foreign key: the row outlives a deleted token
    changed_at = models.DateTimeField()  # the database's clock when the trigger ran

    def __str__(self) -> str:
        return f"{self.seq}: token {self.token_id}"


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


class CredentialWarning(models.Model):
    """One warning sent (e-mail and webhook credential.expiring) that a connection's credential expires: a row per
    credential, expiry date and days-ahead mark (30, 7, 1), whose unique constraint makes each sent once however
    many workers look at once. A credential renewed has a new expiry date, and so its own warnings."""

    connection = models.ForeignKey(Connection, on_delete=models.CASCADE, related_name="credential_warnings")
    credential = models.CharField(max_length=40)  # client_secret, signing_certificate, refresh_token
    expires_at = models.DateTimeField()
    days_ahead = models.PositiveSmallIntegerField()
    sent_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["connection", "credential", "expires_at", "days_ahead"], name="one_warning_per_mark"
            )
        ]

    def __str__(self) -> str:
        return f"{self.credential} of {self.connection} expires {self.expires_at:%Y-%m-%d} ({self.days_ahead} d)"
