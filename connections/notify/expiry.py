"""Warnings that a credential expires: the managers get an e-mail and the webhooks the event credential.expiring at
30, 7 and 1 day(s) before a client secret, a signing certificate or a refresh token's absolute lifetime ends
(connections.selectors.credential_expiries), once each.

Once each: a warning is a CredentialWarning row (connection, credential, expiry date, mark) written before it is
sent, whose unique constraint lets one of any number of workers write it; the others find it and send nothing. A
check that first sees a credential 5 days ahead sends the 7-day warning (late, but once), never the 30-day one. A
credential renewed has a new expiry date, and so warnings of its own.
"""

import logging
from datetime import datetime, timedelta

from django.db import IntegrityError, transaction
from django.utils import timezone

from connections import selectors
from connections.audit.events import Action, Outcome, audit_record
from connections.models import CredentialWarning
from connections.notify.managers import notify_managers

logger = logging.getLogger(__name__)

WARNING_DAYS = (30, 7, 1)
EVENT = "credential.expiring"


def warning_mark(expires_at: datetime, now: datetime) -> int | None:
    """The warning due for a credential expiring at `expires_at`: the fewest days of WARNING_DAYS it is within, or
    None (further off, or expired already: its connection's status says that)."""
    left = expires_at - now
    if left <= timedelta(0):
        return None
    due = [days for days in WARNING_DAYS if left <= timedelta(days=days)]
    return min(due) if due else None


def credential_expiry_warnings_send(*, now: datetime | None = None) -> int:
    """Send every warning due now and not sent before; how many were sent."""
    now = now or timezone.now()
    sent = 0
    for expiry in selectors.credential_expiries(until=now + timedelta(days=max(WARNING_DAYS))):
        mark = warning_mark(expiry.expires_at, now)
        if mark is not None and _warning_claim(expiry, mark, now):
            sent += 1
    return sent


def _warning_claim(expiry: selectors.CredentialExpiry, mark: int, now: datetime) -> bool:
    """Write the warning's row and its audit event, then send it; False when it was sent before (by this worker or
    another). A worker that dies between the two leaves the warning unsent rather than sent twice."""
    connection, days = expiry.connection, (expiry.expires_at - now).days
    when = f"{expiry.expires_at:%Y-%m-%d %H:%M} UTC"
    subject = f"{expiry.label} of {connection} expires in {mark} day{'s' if mark > 1 else ''}"
    message = (
        f"The {expiry.label.lower()} of the connection {connection} expires on {when} ({days} full day(s) from now). "
        f"{_what_to_do(expiry.credential)}"
    )
    try:
        with transaction.atomic():
            CredentialWarning.objects.create(
                connection=connection, credential=expiry.credential, expires_at=expiry.expires_at, days_ahead=mark
            )
            audit_record(
                action=Action.CREDENTIAL_EXPIRING,
                outcome=Outcome.SUCCESS,
                connection=connection,
                actor_label="Control Room",
                detail=f"{subject} ({when}): the managers were told.",
            )
    except IntegrityError:
        return False
    notify_managers(event=EVENT, connection=connection, subject=subject, message=message)
    logger.info("Warned that the %s of %s expires on %s.", expiry.credential, connection.slug, when)
    return True


def _what_to_do(credential: str) -> str:
    if credential == "refresh_token":
        return "The provider ends the grant then however often it is used: authorize the connection again before."
    if credential == "signing_certificate":
        return "Register a new certificate at the provider and store its key as the next private key before."
    return (
        "Create a new client secret at the provider and store it as the next client secret before: Control Room "
        "changes over to it when the provider refuses the current one."
    )
