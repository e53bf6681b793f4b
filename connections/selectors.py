"""Reads: who may do what with which connection, and the status of connections and tokens in words."""

from dataclasses import dataclass
from datetime import datetime

from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import AnonymousUser
from django.db.models import Case, CharField, Count, Exists, OuterRef, QuerySet, Value, When
from django.utils import timezone

from connections.models import Connection, OAuthToken, TokenState, TokenType

AnyUser = AbstractBaseUser | AnonymousUser


def user_can_manage_connections(user: AnyUser) -> bool:
    return user.is_active and user.has_perm("connections.manage_connections")


def user_can_view_connections(user: AnyUser) -> bool:
    return user_can_manage_connections(user) or (user.is_active and user.has_perm("connections.view_connections"))


def user_is_invited(user: AnyUser, connection: Connection) -> bool:
    """True when one of the user's roles is invited to use the connection."""
    if not user.is_authenticated or not user.is_active:
        return False
    return connection.roles.filter(user=user).exists()


def user_may_authorize(user: AnyUser, connection: Connection) -> bool:
    """Shared tokens are authorized by administrators; user-specific ones by each invited user for themselves."""
    if connection.is_user_specific:
        return user_is_invited(user, connection) or user_can_manage_connections(user)
    return user_can_manage_connections(user)


def user_specific_connections_for(user: AnyUser) -> QuerySet[Connection]:
    """The user-specific connections the user may authorize a token for (My connections)."""
    connections = Connection.objects.filter(token_type=TokenType.USER_SPECIFIC).select_related("provider")
    if not user_can_manage_connections(user):
        connections = connections.filter(roles__user=user)
    return connections.distinct().order_by("name")


def token_for(connection: Connection, user: AnyUser | None) -> OAuthToken | None:
    """The shared token, or the given user's own token of a user-specific connection."""
    tokens = OAuthToken.objects.filter(connection=connection)
    if connection.is_user_specific:
        if user is None or not user.is_authenticated:
            return None
        return tokens.filter(user=user).first()
    return tokens.filter(user__isnull=True).first()


@dataclass(frozen=True)
class TokenSummary:
    """What the connection list shows of a connection's tokens (all of them, for a user-specific one)."""

    last_refresh_at: datetime | None  # of the token written last
    next_refresh_at: datetime | None  # the earliest due
    consecutive_failures: int  # the most of any token
    last_failure: OAuthToken | None  # the token that failed last

    @property
    def last_refresh_text(self) -> str:
        if not self.last_refresh_at:
            return "—"
        ago = format_duration((timezone.now() - self.last_refresh_at).total_seconds())
        return f"{timezone.localtime(self.last_refresh_at):%Y-%m-%d %H:%M:%S %Z} ({ago} ago)"

    @property
    def next_refresh_text(self) -> str:
        if not self.next_refresh_at:
            return "—"
        remaining = (self.next_refresh_at - timezone.now()).total_seconds()
        return f"in {format_duration(remaining)}" if remaining > 0 else "due now"

    @property
    def last_error_text(self) -> str:
        token = self.last_failure
        if token is None:
            return "—"
        when = timezone.localtime(token.last_error_at).strftime("%Y-%m-%d %H:%M:%S") if token.last_error_at else ""
        return f"{token.last_error} ({when}; {token.consecutive_failures} consecutive failure(s))"


def token_summary(connection: Connection) -> TokenSummary:
    """Works on prefetched tokens (the admin list prefetches them), so a list page costs no query per row."""
    tokens = list(connection.tokens.all())
    latest = max(tokens, key=lambda token: token.updated_at, default=None)
    failing = [token for token in tokens if token.last_error]
    return TokenSummary(
        last_refresh_at=latest and (latest.refreshed_at or latest.authorized_at),
        next_refresh_at=min((token.next_refresh_at for token in tokens if token.next_refresh_at), default=None),
        consecutive_failures=max((token.consecutive_failures for token in tokens), default=0),
        last_failure=max(failing, key=lambda token: token.last_error_at or token.updated_at, default=None),
    )


def format_duration(seconds: float) -> str:
    seconds = int(abs(seconds))
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    if seconds < 48 * 3600:
        return f"{round(seconds / 3600)} h"
    return f"{round(seconds / 86400)} days"


@dataclass(frozen=True)
class Status:
    code: str  # not_connected, connected, refresh_failing, reauthorization_required, disabled
    label: str
    expires_at: datetime | None = None

    @property
    def expiry_text(self) -> str:
        if self.expires_at is None:
            return ""
        remaining = (self.expires_at - timezone.now()).total_seconds()
        if remaining <= 0:
            return f"expired {format_duration(remaining)} ago"
        return f"expires in {format_duration(remaining)}"

    def __str__(self) -> str:
        return f"{self.label}, {self.expiry_text}" if self.expiry_text else self.label


def token_status(token: OAuthToken | None) -> Status:
    if token is None:
        return Status("not_connected", "Not connected")
    if token.state == TokenState.REAUTHORIZATION_REQUIRED:
        return Status("reauthorization_required", "Reauthorization required", token.expires_at)
    if token.state == TokenState.REFRESH_FAILING:
        return Status("refresh_failing", "Refresh failing", token.expires_at)
    if token.expires_at is None:  # the provider's tokens never expire (Provider.tokens_never_expire)
        return Status("connected", "Connected, no expiry")
    return Status("connected", "Connected", token.expires_at)


def connection_status(connection: Connection) -> Status:
    if not connection.is_enabled:
        return Status("disabled", "Disabled")
    if not connection.is_user_specific:
        return token_status(token_for(connection, None))
    count = connection.tokens.count()
    if not count:
        return Status("not_connected", "Not connected (no user has authorized yet)")
    return Status("connected", f"{count} user{'s' if count != 1 else ''} connected")


STATUSES = ("connected", "refresh_failing", "reauthorization_required", "not_connected", "disabled")


def connection_status_counts() -> dict[str, int]:
    """Connections by status, as their list shows it (connections.selectors.connection_status), in one query."""
    tokens = OAuthToken.objects.filter(connection=OuterRef("pk"))
    status = Case(
        When(is_enabled=False, then=Value("disabled")),
        When(~Exists(tokens), then=Value("not_connected")),
        When(token_type=TokenType.USER_SPECIFIC, then=Value("connected")),
        When(Exists(tokens.filter(state=TokenState.REAUTHORIZATION_REQUIRED)), then=Value("reauthorization_required")),
        When(Exists(tokens.filter(state=TokenState.REFRESH_FAILING)), then=Value("refresh_failing")),
        default=Value("connected"),
        output_field=CharField(),
    )
    counted = Connection.objects.annotate(status=status).order_by().values("status").annotate(count=Count("id"))
    return dict.fromkeys(STATUSES, 0) | {row["status"]: row["count"] for row in counted}
