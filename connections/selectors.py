"""Reads: who may do what with which connection, and the status of connections and tokens in words."""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.contrib.auth.models import AnonymousUser, User
from django.db.models import Case, CharField, Count, Exists, Min, OuterRef, Q, QuerySet, Value, When
from django.utils import timezone

from connections.models import Connection, ConnectionStatus, OAuthToken, TokenState, TokenType
from providers.models import GrantType

AnyUser = User | AnonymousUser


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


def user_specific_connections_for(user: User) -> QuerySet[Connection]:
    """The user-specific connections the user may authorize a token for (My connections)."""
    connections = Connection.objects.filter(token_type=TokenType.USER_SPECIFIC).select_related("provider")
    if not user_can_manage_connections(user):
        # A semi-join on the user's roles' invitations, not a join made distinct again (which sorts every row).
        invited = Connection.roles.through.objects.filter(group__user=user).values("connection_id")
        connections = connections.filter(pk__in=invited)
    return connections.order_by("name")


def token_for(connection: Connection, user: AnyUser | None) -> OAuthToken | None:
    """The shared token, or the given user's own token of a user-specific connection."""
    tokens = OAuthToken.objects.filter(connection=connection)
    if connection.is_user_specific:
        if user is None or not user.is_authenticated:
            return None
        return tokens.filter(user=user).first()
    return tokens.filter(user__isnull=True).first()


def moment_text(moment: datetime | None) -> str:
    """A time as the admin shows it: local, to the second."""
    return timezone.localtime(moment).strftime("%Y-%m-%d %H:%M:%S") if moment else ""


@dataclass(frozen=True)
class Failure:
    """A failure in words, when it happened and how many came in a row: a token's own (refreshes), or the
    connection's last Save and test or Connect that stored no token (Connection.last_failure)."""

    message: str
    at: datetime | None
    in_a_row: int

    @property
    def text(self) -> str:
        return f"{self.message} ({self.when_text})"

    @property
    def when_text(self) -> str:
        """'2026-11-30 04:01:32; 2 failures in a row'."""
        return f"{moment_text(self.at)}; {self.in_a_row} failure{'s' if self.in_a_row != 1 else ''} in a row"


def attempt_failure(connection: Connection, tokens: list[OAuthToken]) -> Failure | None:
    """The connection's last failed test or connect, unless a grant was stored since (by Connect, a bot's first
    client-credentials request or a device approval): then it no longer says anything about the connection."""
    failed_at = connection.last_failure_at
    if not connection.last_failure or failed_at is None:
        return None
    if any(token.authorized_at >= failed_at for token in tokens):
        return None
    return Failure(connection.last_failure, failed_at, connection.failures_in_a_row)


@dataclass(frozen=True)
class TokenSummary:
    """What the connection list shows of a connection's tokens (all of them, for a user-specific one), and of its
    last failed test or connect."""

    last_refresh_at: datetime | None  # of the token written last
    next_refresh_at: datetime | None  # the earliest due
    consecutive_failures: int  # the most of any token, or of the connection's failed tests and connects
    last_failure: OAuthToken | None  # the token that failed last
    attempt_failure: Failure | None = None  # the connection's last failed test or connect (attempt_failure)

    @property
    def last_refresh_text(self) -> str:
        if not self.last_refresh_at:
            return "—"
        ago = format_duration((timezone.now() - self.last_refresh_at).total_seconds())
        return f"{moment_text(self.last_refresh_at)} ({ago} ago)"

    @property
    def next_refresh_text(self) -> str:
        if not self.next_refresh_at:
            return "—"
        remaining = (self.next_refresh_at - timezone.now()).total_seconds()
        return f"in {format_duration(remaining)}" if remaining > 0 else "due now"

    @property
    def last_error(self) -> Failure | None:
        """The newer of the failing token's last error and the connection's last failed test or connect."""
        token = self.last_failure
        candidates = [self.attempt_failure] if self.attempt_failure else []
        if token is not None:
            candidates.append(Failure(token.last_error, token.last_error_at, token.consecutive_failures))
        return max(candidates, key=lambda failure: failure.at or datetime.min.replace(tzinfo=UTC), default=None)

    @property
    def last_error_text(self) -> str:
        failure = self.last_error
        return failure.text if failure else "—"


def token_summary(connection: Connection) -> TokenSummary:
    """Works on prefetched tokens (the admin list prefetches them), so a list page costs no query per row."""
    tokens = list(connection.tokens.all())
    latest = max(tokens, key=lambda token: token.updated_at, default=None)
    failing = [token for token in tokens if token.last_error]
    attempt = attempt_failure(connection, tokens)
    return TokenSummary(
        last_refresh_at=(latest.refreshed_at or latest.authorized_at) if latest else None,
        next_refresh_at=min((token.next_refresh_at for token in tokens if token.next_refresh_at), default=None),
        consecutive_failures=max(
            [token.consecutive_failures for token in tokens] + ([attempt.in_a_row] if attempt else []), default=0
        ),
        last_failure=max(failing, key=lambda token: token.last_error_at or token.updated_at, default=None),
        attempt_failure=attempt,
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
    code: ConnectionStatus
    label: str
    expires_at: datetime | None = None
    attempt_failed: bool = False  # not connected, and the last test or connect failed (attempt_failure)

    @property
    def is_failure(self) -> bool:
        """Someone must act: shown in the one colour for failures (the admin's connection-failed class)."""
        return self.attempt_failed or self.code == ConnectionStatus.REAUTHORIZATION_REQUIRED

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
        return Status(ConnectionStatus.NOT_CONNECTED, "Not connected")
    if token.state == TokenState.REAUTHORIZATION_REQUIRED:
        return Status(ConnectionStatus.REAUTHORIZATION_REQUIRED, "Reauthorization required", token.expires_at)
    if token.state == TokenState.REFRESH_FAILING:
        return Status(ConnectionStatus.REFRESH_FAILING, "Refresh failing", token.expires_at)
    if token.expires_at is None:  # the provider's tokens never expire (Provider.tokens_never_expire)
        return Status(ConnectionStatus.CONNECTED, "Connected, no expiry")
    return Status(ConnectionStatus.CONNECTED, "Connected", token.expires_at)


ATTEMPT_FAILED = " — last attempt failed"


def connection_status(connection: Connection) -> Status:
    """The status of the shared token, or how many users hold their own; from the prefetched tokens when the
    caller prefetched them (the admin list). connection_status_expression() is the same in SQL."""
    if not connection.is_enabled:
        return Status(ConnectionStatus.DISABLED, "Disabled")
    tokens = list(connection.tokens.all())
    if not connection.is_user_specific:
        status = token_status(next((token for token in tokens if token.user_id is None), None))
        label = "Not connected"
    else:
        count = sum(1 for token in tokens if token.user_id is not None)
        status = Status(ConnectionStatus.CONNECTED, f"{count} user{'s' if count != 1 else ''} connected")
        label = "Not connected (no user has authorized yet)"
        if not count:
            status = Status(ConnectionStatus.NOT_CONNECTED, label)
    if status.code == ConnectionStatus.NOT_CONNECTED and attempt_failure(connection, tokens):
        return Status(ConnectionStatus.NOT_CONNECTED, label + ATTEMPT_FAILED, attempt_failed=True)
    return status


def connection_status_expression() -> Case:
    """connection_status()'s code in SQL (an annotation): the status filter of the admin list and the counts of
    the dashboard and the metrics agree with the status column. A shared connection is judged by its shared
    token, a user-specific one by its users' tokens (a token of the other kind, left from before its token type
    was changed, counts for neither)."""
    shared = OAuthToken.objects.filter(connection=OuterRef("pk"), user__isnull=True)
    users = OAuthToken.objects.filter(connection=OuterRef("pk"), user__isnull=False)
    user_specific = Q(token_type=TokenType.USER_SPECIFIC)
    status = ConnectionStatus
    return Case(
        When(is_enabled=False, then=Value(status.DISABLED)),
        When(user_specific & Exists(users), then=Value(status.CONNECTED)),
        When(user_specific | ~Exists(shared), then=Value(status.NOT_CONNECTED)),
        When(
            Exists(shared.filter(state=TokenState.REAUTHORIZATION_REQUIRED)),
            then=Value(status.REAUTHORIZATION_REQUIRED),
        ),
        When(Exists(shared.filter(state=TokenState.REFRESH_FAILING)), then=Value(status.REFRESH_FAILING)),
        default=Value(status.CONNECTED),
        output_field=CharField(choices=status.choices),
    )


def connections_with_status(connections: QuerySet[Connection], code: ConnectionStatus) -> QuerySet[Connection]:
    """The connections whose status (connection_status().code) is `code`, filtered by the database. The statuses
    of a minority (disabled, a shared token needing reauthorization or failing) are found from their own indexes
    (a partial index each), so that counting them reads only them; the others through the status expression."""
    enabled_shared = Q(is_enabled=True) & ~Q(token_type=TokenType.USER_SPECIFIC)
    shared = OAuthToken.objects.filter(user__isnull=True)
    if code == ConnectionStatus.DISABLED:
        return connections.filter(is_enabled=False)
    if code == ConnectionStatus.REAUTHORIZATION_REQUIRED:
        reauthorize = shared.filter(state=TokenState.REAUTHORIZATION_REQUIRED)
        return connections.filter(enabled_shared, pk__in=reauthorize.values("connection_id"))
    if code == ConnectionStatus.REFRESH_FAILING:
        # One shared token a connection (a constraint): its state is the connection's.
        return connections.filter(
            enabled_shared, pk__in=shared.filter(state=TokenState.REFRESH_FAILING).values("connection_id")
        )
    return connections.alias(status_code=connection_status_expression()).filter(status_code=code)


def connection_status_counts() -> dict[ConnectionStatus, int]:
    """Connections by status, as their list shows it (connections.selectors.connection_status), in one query."""
    counted = (
        Connection.objects.annotate(status=connection_status_expression())
        .order_by()
        .values("status")
        .annotate(count=Count("id"))
    )
    return dict.fromkeys(ConnectionStatus, 0) | {ConnectionStatus(row["status"]): row["count"] for row in counted}


# --- Credentials that expire: client secrets, signing certificates, refresh tokens' absolute lifetimes ----------

CREDENTIAL_LABELS = {
    "client_secret": "Client secret",
    "signing_certificate": "Signing certificate",
    "refresh_token": "Refresh token",
}
# Only these grants hold refresh tokens (client credentials and JWT bearer obtain a new token instead).
REFRESH_TOKEN_GRANTS = (GrantType.AUTHORIZATION_CODE, GrantType.AUTHORIZATION_CODE_PKCE, GrantType.DEVICE_CODE)


@dataclass(frozen=True)
class CredentialExpiry:
    """One credential of a connection and when the provider stops taking it."""

    connection: Connection
    credential: str  # a key of CREDENTIAL_LABELS
    expires_at: datetime
    whose: str = ""  # a user-specific connection's refresh token: its user

    @property
    def label(self) -> str:
        return CREDENTIAL_LABELS[self.credential] + (f" ({self.whose})" if self.whose else "")


def _lifetimes(grants: QuerySet[OAuthToken]) -> set[int]:
    """The refresh token lifetimes of these grants' provider types (a few at most)."""
    found = grants.values_list("connection__provider__refresh_token_max_lifetime", flat=True).distinct()
    return {lifetime for lifetime in found.order_by() if lifetime}


def _grants_with_lifetime() -> QuerySet[OAuthToken]:
    """The tokens of enabled connections whose refresh tokens have an absolute lifetime (the provider type's
    refresh_token_max_lifetime), counted from their grant's authorization; not those already waiting for a person."""
    return OAuthToken.objects.filter(
        connection__is_enabled=True,
        connection__grant_type__in=REFRESH_TOKEN_GRANTS,
        connection__provider__refresh_token_max_lifetime__isnull=False,
    ).exclude(state=TokenState.REAUTHORIZATION_REQUIRED)


def credential_expiries(
    *, until: datetime | None = None, connection: Connection | None = None
) -> list[CredentialExpiry]:
    """Every credential of an enabled connection (or of `connection`) that expires, before `until` if given, soonest
    first: a query for the client secrets, one for the certificates, one per provider type with a refresh token
    lifetime."""
    found: list[CredentialExpiry] = []
    connections = Connection.objects.filter(is_enabled=True, **({"pk": connection.pk} if connection else {}))
    for credential in ("client_secret", "signing_certificate"):
        column = f"{credential}_expires_at"
        rows = connections.filter(**{f"{column}__isnull": False, **({f"{column}__lt": until} if until else {})})
        found += [CredentialExpiry(row, credential, getattr(row, column)) for row in rows]
    tokens = _grants_with_lifetime().select_related("connection__provider", "user")
    tokens = tokens.filter(connection=connection) if connection else tokens
    for lifetime in _lifetimes(tokens):
        window = timedelta(seconds=lifetime)
        chosen = tokens.filter(connection__provider__refresh_token_max_lifetime=lifetime)
        for token in chosen.filter(authorized_at__lt=until - window) if until else chosen:
            whose = token.user.get_username() if token.user else ""
            found.append(CredentialExpiry(token.connection, "refresh_token", token.authorized_at + window, whose))
    return sorted(found, key=lambda expiry: (expiry.expires_at, expiry.connection.name))


def connection_credential_expiries(connection: Connection) -> list[CredentialExpiry]:
    """The connection's own credentials that expire, soonest first (its page)."""
    return credential_expiries(connection=connection)


def earliest_credential_expiry_by_connection() -> dict[str, datetime]:
    """{slug: when its earliest credential expires} of the enabled connections with one (/metrics): aggregated in
    the database, a connection's many refresh tokens (user-specific) as one row."""
    earliest: dict[str, datetime] = {}

    def keep(slug: str, moment: datetime) -> None:
        earliest[slug] = min(moment, earliest.get(slug, moment))

    connections = Connection.objects.filter(is_enabled=True)
    for column in ("client_secret_expires_at", "signing_certificate_expires_at"):
        for slug, moment in connections.filter(**{f"{column}__isnull": False}).values_list("slug", column):
            keep(slug, moment)
    grants = _grants_with_lifetime()
    for lifetime in _lifetimes(grants):
        first = (
            grants.filter(connection__provider__refresh_token_max_lifetime=lifetime)
            .values("connection__slug")
            .annotate(first=Min("authorized_at"))
            .order_by()
        )
        for row in first:
            keep(row["connection__slug"], row["first"] + timedelta(seconds=lifetime))
    return earliest


def connections_with_credentials_expiring(connections: QuerySet[Connection], until: datetime) -> QuerySet[Connection]:
    """The list's filter: connections with a client secret, certificate or refresh token expiring before `until`."""
    expiring = Q(client_secret_expires_at__lt=until) | Q(signing_certificate_expires_at__lt=until)
    grants = _grants_with_lifetime()
    for lifetime in _lifetimes(grants):
        ending = grants.filter(
            connection=OuterRef("pk"),
            connection__provider__refresh_token_max_lifetime=lifetime,
            authorized_at__lt=until - timedelta(seconds=lifetime),
        )
        expiring |= Q(Exists(ending))
    return connections.filter(expiring, is_enabled=True)
