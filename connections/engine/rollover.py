"""Client secret (and signing key) rollover without an outage.

An administrator stores the next client secret (or the next signing key) ahead of the change at the provider. Every
token request goes out with the current one; when the provider refuses it as invalid_client (RFC 6749 5.2: the
client's authentication failed) and a next one is stored, the same request is sent once more with the next one, and
on its first success the next one becomes the current one (audited). The one it replaced is kept, encrypted, until
an administrator confirms the rollover (previous_credentials_drop), so a promotion made by mistake can be undone
by hand. Nothing here holds a transaction across a provider call.
"""

import logging
from collections.abc import Callable
from typing import TypeVar

from django.contrib.auth.models import User
from django.db import transaction

from connections.audit.events import Action, Outcome, audit_record
from connections.engine.store import connection_client_config
from connections.errors import ProviderError
from connections.models import Connection
from connections.oauth.client_auth import INVALID_CLIENT, ClientConfig, next_credentials_config

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Each credential's (current, next, previous) model fields, and its name in words.
_SECRET = ("client_secret", "next_client_secret", "previous_client_secret", "client secret")
_KEY = ("private_key", "next_private_key", "previous_private_key", "signing key")


def provider_call(connection: Connection, call: Callable[[ClientConfig], T]) -> T:
    """`call` (a token request of connections.oauth.client) with the connection's client credentials; once more
    with the next ones when the provider refuses the current ones as invalid_client and next ones are stored, and
    then those are promoted. Raises the provider's refusal when there is nothing else to try."""
    config = connection_client_config(connection)
    try:
        return call(config)
    except ProviderError as refused:
        following = next_credentials_config(config)
        if refused.error != INVALID_CLIENT or following is None:
            raise
    logger.warning("The provider refused the client credentials of %s: trying the next ones.", connection.slug)
    answer = call(following)
    next_credentials_promote(connection=connection, used=following)
    return answer


def next_credentials_promote(*, connection: Connection, used: ClientConfig) -> bool:
    """The next credentials `used` worked: they become the current ones, the current ones the previous ones, in one
    audited write, unless another process promoted them first. `connection` (this caller's copy) is updated too.
    Returns whether this call promoted them."""
    with transaction.atomic():
        row = Connection.objects.select_for_update().get(pk=connection.pk)
        promoted = []
        for current, following, previous, label in (_SECRET, _KEY):
            value = used.private_key if current == "private_key" else used.client_secret
            if value and getattr(row, following) == value:
                setattr(row, previous, getattr(row, current))
                setattr(row, current, value)
                setattr(row, following, "")
                promoted.append(label)
        if not promoted:
            return False
        if "client secret" in promoted:
            row.client_secret_expires_at, row.next_client_secret_expires_at = row.next_client_secret_expires_at, None
        row.save(update_fields=[*_fields(), "client_secret_expires_at", "next_client_secret_expires_at", "updated_at"])
        names = " and ".join(promoted)
        audit_record(
            action=Action.CREDENTIAL_PROMOTE,
            outcome=Outcome.SUCCESS,
            connection=row,
            actor_label="Control Room",
            detail=f"The provider refused the current {names} as invalid_client and took the next one, which is now "
            f"the current one. The one it replaced is kept until an administrator drops it.",
        )
    for name in (*_fields(), "client_secret_expires_at", "next_client_secret_expires_at"):
        setattr(connection, name, getattr(row, name))
    logger.warning("The next %s of %s was promoted to the current one.", names, connection.slug)
    return True


def _fields() -> list[str]:
    return [name for credential in (_SECRET, _KEY) for name in credential[:3]]


def previous_credentials_drop(*, connection: Connection, actor: User) -> bool:
    """An administrator confirms a rollover: the credentials the promoted ones replaced are dropped (audited).
    Returns whether there were any."""
    with transaction.atomic():
        row = Connection.objects.select_for_update().get(pk=connection.pk)
        dropped = [label for _, _, previous, label in (_SECRET, _KEY) if getattr(row, previous)]
        if not dropped:
            return False
        row.previous_client_secret = row.previous_private_key = ""
        row.save(update_fields=["previous_client_secret", "previous_private_key", "updated_at"])
        audit_record(
            action=Action.CREDENTIAL_PREVIOUS_DROP,
            outcome=Outcome.SUCCESS,
            connection=row,
            actor=actor,
            detail=f"The previous {' and '.join(dropped)} was dropped: the rollover is confirmed.",
        )
    connection.previous_client_secret = connection.previous_private_key = ""
    return True
