"""The lease that makes one process the only one to call the provider for a token (single flight): taken for one
token or a worker's batch, kept through a slow call, given back."""

import time
from collections.abc import Sequence
from datetime import timedelta

from django.conf import settings
from django.db.models import Q, QuerySet
from django.utils import timezone

from connections.engine.store import (
    Fence,
)
from connections.models import OAuthToken


def lease_seconds() -> float:
    # A provider call ends by its deadline (OUTBOUND_TIMEOUT, connections.outbound.policy): the lease outlives it, and
    # the database work around it, so a live holder never loses it.
    return 2 * settings.OUTBOUND_TIMEOUT + 5


def token_lease_take(token: OAuthToken, owner: str) -> tuple[Fence, OAuthToken] | None:
    """Take the token's lease if nobody holds it: the Fence its outcome will be written under, and the row as
    leased (nobody else writes it while the fence holds)."""
    now = timezone.now()
    free = Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now)
    taken = OAuthToken.objects.filter(free, pk=token.pk).update(
        lease_owner=owner, lease_expires_at=now + timedelta(seconds=lease_seconds())
    )
    leased = taken and OAuthToken.objects.filter(pk=token.pk, lease_owner=owner).first()
    if not leased:
        return None
    # Only the token's own row is read again (it is what the fence is about); its connection, provider type and
    # owner are the ones the caller read, which spares a refresh a join and a decryption of the client secret.
    leased.connection, leased.user = token.connection, token.user if token.user_id else None
    return Fence(token.pk, owner, leased.generation), leased


def tokens_lease_take(token_ids: Sequence[int], owner: str) -> list[tuple[Fence, OAuthToken]]:
    """Take the lease of each of these tokens that nobody holds, in two statements whatever their number: the
    Fence each outcome will be written under, and the rows as leased, with what a refresh reads of them."""
    now = timezone.now()
    free = Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now)
    lease_until = now + timedelta(seconds=lease_seconds())
    OAuthToken.objects.filter(free, pk__in=token_ids).update(lease_owner=owner, lease_expires_at=lease_until)
    leased = token_rows().filter(pk__in=token_ids, lease_owner=owner)
    return [(Fence(token.pk, owner, token.generation), token) for token in leased]


def tokens_lease_give_back(owner: str, token_ids: Sequence[int]) -> None:
    if token_ids:
        OAuthToken.objects.filter(pk__in=token_ids, lease_owner=owner).update(lease_owner="", lease_expires_at=None)


def token_lease_keep(fence: Fence, taken_at: float) -> bool:
    """Before a provider call under a lease taken at `taken_at` (time.monotonic()): the lease must outlast the
    call (OUTBOUND_TIMEOUT) and the write after it, or a slow call could end after someone else took the lease
    and presented the same refresh token. A lease held that long already (a batch queued behind a slow
    provider) is renewed; False if it was lost meanwhile."""
    if time.monotonic() - taken_at < lease_seconds() - settings.OUTBOUND_TIMEOUT - 5:
        return True
    return bool(fence.update(lease_expires_at=timezone.now() + timedelta(seconds=lease_seconds())))


def token_rows() -> QuerySet[OAuthToken]:
    """Tokens with what a refresh reads of them: the connection, its provider type and the owner. The credentials
    a rollover replaced are left unread (each encrypted value read is a decryption; no refresh uses those)."""
    previous = ("connection__previous_client_secret", "connection__previous_private_key")
    return OAuthToken.objects.select_related("connection__provider", "user").defer(*previous)


def lease_give_back(fence: Fence) -> None:
    fence.update(lease_owner="", lease_expires_at=None)
