"""A Connect or Save and test that stored no token: kept on the connection (Connection.last_failure), as no token
row holds it, for its admin page and list (selectors.attempt_failure). Written with update(), so the token
endpoint's cached answers stay valid (connections.cache.invalidation); never a provider's body or a secret, only the
sentence the person was shown."""

from datetime import datetime

from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Case, Exists, F, OuterRef, Q, Value, When
from django.utils import timezone

from connections.audit.events import Action, Outcome, audit_record
from connections.models import Connection, OAuthToken


def connection_attempt_failed(*, connection: Connection, message: str) -> None:
    """Keep the failure on the connection, counted in a row unless a grant was stored since the previous one."""
    granted_since = OAuthToken.objects.filter(connection=OuterRef("pk"), authorized_at__gte=OuterRef("last_failure_at"))
    Connection.objects.filter(pk=connection.pk).update(
        last_failure=message[:2000],
        last_failure_at=timezone.now(),
        failures_in_a_row=Case(
            When(Q(last_failure_at__isnull=True) | Exists(granted_since), then=Value(1)),
            default=F("failures_in_a_row") + 1,
        ),
    )


def connection_attempt_failure_record(
    *,
    action: Action,
    connection: Connection,
    actor: User | None,
    detail: str,
    failure: str,
    remote_addr: str | None = None,
) -> None:
    """The failed attempt's audit event (detail) and the connection's record of it (failure), in one transaction."""
    with transaction.atomic():
        audit_record(
            action=action,
            outcome=Outcome.FAILURE,
            connection=connection,
            actor=actor,
            detail=detail,
            remote_addr=remote_addr,
        )
        connection_attempt_failed(connection=connection, message=failure)


def connection_attempt_succeeded(*, connection: Connection, started_at: datetime) -> None:
    """A Connect or Save and test stored a token: the failures before it are over; not one recorded after
    started_at, by an attempt that ended while this one ran."""
    Connection.objects.filter(pk=connection.pk, last_failure_at__lte=started_at).update(
        last_failure="", last_failure_at=None, failures_in_a_row=0
    )
