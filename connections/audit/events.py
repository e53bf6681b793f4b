"""The audit log: recording an event (in the caller's transaction), counting failed authentications rather
than recording each, and exporting events as CSV."""

import csv
import ipaddress
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.contrib.auth.models import User
from django.core.cache import cache
from django.db import transaction
from django.utils import timezone

from connections.audit.rows import audit_rows_insert
from connections.models import AuditEvent, Connection, FailedAuthenticationWindow

Action = AuditEvent.Action
Outcome = AuditEvent.Outcome


def user_label(user: User | None) -> str:
    return user.get_username() if user is not None else "system"


def audit_record(
    *,
    action: Action,
    outcome: Outcome,
    connection: Connection | None = None,
    actor: User | None = None,
    actor_label: str = "",
    detail: str = "",
    remote_addr: str | None = None,
    connection_label: str = "",
) -> AuditEvent:
    """connection_label: the connection an event names when none is linked (a refused request's slug); a linked
    connection's slug otherwise."""
    # Details quote what callers and providers sent; PostgreSQL text cannot hold NUL characters.
    return AuditEvent.objects.create(
        action=action,
        outcome=outcome,
        connection=connection,
        connection_label=connection.slug if connection else connection_label,
        actor=actor if actor is not None and actor.pk else None,
        actor_label=(actor_label or user_label(actor)).replace("\x00", "")[:150],
        detail=detail.replace("\x00", ""),
        remote_addr=remote_addr or None,
    )


def audit_event_row(
    *,
    action: Action,
    outcome: Outcome,
    connection: Connection | None = None,
    actor_label: str = "",
    detail: str = "",
) -> dict:
    """An event of the system's own (no actor, no address) as audit_events_write() takes it: many are written
    with one statement at the end of a batch of work (a worker's refresh task)."""
    return {
        "created_at": timezone.now(),
        "actor_id": None,
        "actor_label": (actor_label or user_label(None)).replace("\x00", "")[:150],
        "connection_id": connection.pk if connection else None,
        "connection_label": connection.slug if connection else "",
        "action": action,
        "outcome": outcome,
        "detail": detail.replace("\x00", ""),
        "remote_addr": None,
    }


def audit_events_write(rows: list[dict]) -> None:
    """Write audit_event_row()s with one statement (and move Connection.last_token_issued_at forward for the
    successful token requests among them: connections.audit.rows, which the token endpoint's batches use too)."""
    audit_rows_insert(rows)


# --- failed authentications: a few recorded one by one, then counted ---------------------------------------------
#
# Anyone can present a wrong key or a made-up OAuth state, as often as they like: recording each would let them
# grow the append-only audit log without bound. Per address and minute, the first AUTH_FAILURES_AUDITED_ONE_BY_ONE
# are recorded as they happen; the rest are counted (in the cache), and one event with the count is written when
# the minute is over (audit_failed_authentications_summarize, scheduled by beat).


# Where a failed authentication happened: its name in keys and rows, and in words.
FAILURE_PLACES = {"token-endpoint": "token endpoint", "oauth-callback": "OAuth callback"}


def _window(now: datetime) -> int:
    return int(now.timestamp() // 60)


def address_block(remote_addr: str | None) -> str | None:
    """Where failed authentications are counted from: an IPv4 address, or an IPv6 address's /64 (one host or
    network is handed a whole /64, so one address each would give it millions of fresh counters)."""
    try:
        ip = ipaddress.ip_address(remote_addr or "")
    except ValueError:
        return remote_addr
    return str(ipaddress.ip_network(f"{ip}/64", strict=False).network_address) if ip.version == 6 else str(ip)


def _failure_counter(where: str, block: str | None, window: int) -> str:
    return f"auth-failures:{where}:{block}:{window}"


@dataclass(frozen=True)
class FailureCount:
    count: int  # this address's (IPv6: its /64's) failed authentications this minute, this one included
    recorded_alone: bool  # audited one by one (else counted, and audited with the others when the minute is over)


def failed_authentication_count(*, where: str, remote_addr: str | None) -> FailureCount:
    """Count one failed authentication from this address (IPv6: its /64) in this minute. It is recorded one by one
    while both its address's count is within AUTH_FAILURES_AUDITED_ONE_BY_ONE and all addresses' within
    AUTH_FAILURES_AUDITED_PER_MINUTE; past either it is counted, and its address's minute is summarized once it
    is over (so a flood from many addresses cannot grow the log one row per request either)."""
    now = timezone.now()
    block, window = address_block(remote_addr), _window(now)
    count, everyone = _incremented(_failure_counter(where, block, window)), _incremented(f"auth-failures:all:{window}")
    alone = count <= settings.AUTH_FAILURES_AUDITED_ONE_BY_ONE and everyone <= settings.AUTH_FAILURES_AUDITED_PER_MINUTE
    if not alone:
        window_start = datetime.fromtimestamp(window * 60, tz=UTC)
        FailedAuthenticationWindow.objects.get_or_create(where=where, remote_addr=block, window_start=window_start)
    return FailureCount(count, alone)


def _incremented(counter: str) -> int:
    cache.add(counter, 0, timeout=3 * 60)  # outlives its minute until the summary has read it
    return cache.incr(counter)


def audit_failed_authentications_summarize(*, now: datetime | None = None) -> int:
    """One audit event per address and minute that had more failures than were recorded one by one, once the
    minute is over. Returns how many were written."""
    now = now or timezone.now()
    ended = FailedAuthenticationWindow.objects.filter(window_start__lte=now - timedelta(seconds=60))
    written = 0
    for window in ended:
        count = cache.get(_failure_counter(window.where, window.remote_addr, _window(window.window_start)))
        counted = f"{count}" if count else "Some"
        place = FAILURE_PLACES.get(window.where, window.where)
        source = f"{window.remote_addr}/64" if window.remote_addr and ":" in window.remote_addr else window.remote_addr
        with transaction.atomic():
            audit_record(
                action=Action.AUTHENTICATION_FAILURES,
                outcome=Outcome.FAILURE,
                actor_label="anonymous",
                detail=f"{counted} failed authentications at the {place} from {source} in the minute from "
                f"{window.window_start:%Y-%m-%d %H:%M} UTC; at most the first "
                f"{settings.AUTH_FAILURES_AUDITED_ONE_BY_ONE} are recorded one by one.",
                remote_addr=window.remote_addr,
            )
            deleted, _ = FailedAuthenticationWindow.objects.filter(pk=window.pk).delete()
            if not deleted:  # another summarizer took it first
                transaction.set_rollback(True)
                continue
        written += 1
    return written


def audit_csv_lines(events: Iterable[AuditEvent], fields: tuple[str, ...]) -> Iterator[str]:
    """The events as CSV lines, one at a time, for a streamed download."""
    buffer = _Echo()
    writer = csv.writer(buffer)
    yield writer.writerow(fields)
    for event in events:
        yield writer.writerow([_csv_safe(getattr(event, name)) for name in fields])


class _Echo:
    def write(self, value: str) -> str:
        return value


def _csv_safe(value: object) -> str:
    text = value.isoformat() if hasattr(value, "isoformat") else str(value if value is not None else "")
    # Spreadsheets run cells starting with these as formulas (CSV injection, OWASP).
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text
