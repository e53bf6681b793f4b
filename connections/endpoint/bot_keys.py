"""Bot keys: created for a bot runner, shown once, stored as a SHA-256 digest, revocable, optionally expiring.

Format: `crk_<key id>_<secret>`. The prefix lets secret scanners spot a leaked key; the key id finds the row
without a scan; the secret has 256 bits of entropy, so a fast digest is enough (as GitHub and zulip do).
"""

import hmac
import re
import secrets
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, TypedDict

from django.contrib.auth.models import Group, User
from django.db import transaction
from django.db.models import Exists, OuterRef, Prefetch, Subquery
from django.utils import timezone

from connections.audit.events import Action, Outcome, audit_record
from connections.cache import invalidation
from connections.errors import BotKeyRejected, ConnectionActionError
from connections.models import BotAccount, BotKey, Connection, OAuthToken, TokenState, sha256_digest

if TYPE_CHECKING:  # django-stubs-ext, a development dependency: only the type checker reads it
    from django_stubs_ext import WithAnnotations

KEY_PREFIX = "crk_"
KEY_ID_PATTERN = re.compile(r"[0-9a-f]{12}")
# Writing last-used on every call would turn each token request into a write; once a minute is enough.
LAST_USED_RESOLUTION = timedelta(seconds=60)
NOT_VALID = "The bot key is not valid."


def bot_key_create(
    *,
    user: User,
    name: str,
    expires_days: int | None = None,
    created_by: User | None = None,
) -> tuple[BotKey, str]:
    """Returns the key row and the raw key, which is never stored and cannot be shown again. A key acts as its
    user: a person's is created by that person or a superuser (`created_by`; None: an operator's command line),
    a bot account's by anyone who manages keys (ConnectionActionError otherwise)."""
    if expires_days is not None and expires_days < 1:
        raise ValueError("expires_days must be 1 or more.")
    if problem := bot_key_refusal(user=user, created_by=created_by):
        raise ConnectionActionError(problem)
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    with transaction.atomic():
        key = BotKey.objects.create(
            user=user,
            name=name,
            key_id=key_id,
            digest=sha256_digest(secret),
            created_by=created_by,
            expires_at=timezone.now() + timedelta(days=expires_days) if expires_days else None,
        )
        audit_record(
            action=Action.BOT_KEY_CREATE,
            outcome=Outcome.SUCCESS,
            actor=created_by,
            actor_label="" if created_by else "command line",
            detail=f"Key {key_id} '{name}' for {user.get_username()}"
            + (f", expires in {expires_days} days." if expires_days else ", no expiry."),
        )
    return key, f"{KEY_PREFIX}{key_id}_{secret}"


def is_bot_account(user: User) -> bool:
    return BotAccount.objects.filter(user_id=user.pk).exists()


def bot_key_refusal(*, user: User, created_by: User | None) -> str:
    """Why `created_by` may not create a key for `user`, in words; "" when they may."""
    if created_by is None or created_by.pk == user.pk or created_by.is_superuser or is_bot_account(user):
        return ""
    return (
        f"A key acts as its user, and {user.get_username()} is a person, not a bot account: only they or a superuser "
        "may create their key. Create a bot account for the bot instead (Bot accounts)."
    )


def bot_account_create(*, username: str, email: str = "", created_by: User | None = None) -> User:
    """A user for a bot: no usable password (it cannot sign in; its keys are how it is known), marked as a bot
    account so that the managers may create its keys."""
    with transaction.atomic():
        user = User(username=username, email=email)
        user.set_unusable_password()
        user.save()
        BotAccount.objects.create(user=user, created_by=created_by)
        audit_record(
            action=Action.BOT_ACCOUNT_CREATE,
            outcome=Outcome.SUCCESS,
            actor=created_by,
            actor_label="" if created_by else "command line",
            detail=f"Bot account {username} created (it cannot sign in).",
        )
    return user


def bot_key_revoke(*, key: BotKey, actor: User | None = None) -> bool:
    """Revoke a key; returns False when it was already revoked."""
    with transaction.atomic():
        revoked = BotKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
        if revoked:
            invalidation.identity_rows_changed()  # an UPDATE sends no signal
            audit_record(
                action=Action.BOT_KEY_REVOKE,
                outcome=Outcome.SUCCESS,
                actor=actor,
                actor_label="" if actor else "command line",
                detail=f"Key {key.key_id} '{key.name}' of {key.user.get_username()}",
            )
    return bool(revoked)


def bot_key_delete(*, key: BotKey, actor: User | None = None) -> None:
    """Delete a key: revoked first (a request racing the deletion finds it revoked, and the revocation is audited as
    any other), then deleted, with an event that says what it was."""
    bot_key_revoke(key=key, actor=actor)
    with transaction.atomic():
        audit_record(
            action=Action.BOT_KEY_DELETE,
            outcome=Outcome.SUCCESS,
            actor=actor,
            actor_label="" if actor else "command line",
            detail=f"Key {key.key_id} '{key.name}' of {key.user.get_username()}",
        )
        key.delete()


@dataclass(frozen=True)
class PresentedKey:
    """A bot key as a caller presented it, in the shape of a key; whether it is a real one is not known yet."""

    key_id: str
    secret: str = field(repr=False)

    @property
    def digest(self) -> str:
        return sha256_digest(self.secret)

    def matches(self, digest: str) -> bool:
        return hmac.compare_digest(digest, self.digest)


def presented_key(authorization: str) -> PresentedKey:
    """The bot key of an `Authorization: Bearer crk_<key id>_<secret>` header; BotKeyRejected if there is none."""
    scheme, _, raw_key = authorization.partition(" ")
    raw_key = raw_key.strip()
    if scheme.lower() != "bearer" or not raw_key:
        raise BotKeyRejected("Send the bot key as 'Authorization: Bearer <key>'.")
    key_id, _, secret = raw_key.removeprefix(KEY_PREFIX).partition("_")
    if not raw_key.startswith(KEY_PREFIX) or not KEY_ID_PATTERN.fullmatch(key_id) or not secret:
        raise BotKeyRejected(NOT_VALID)
    return PresentedKey(key_id=key_id, secret=secret)


def bot_key_check(presented: PresentedKey, key: BotKey | None, *, remote_addr: str | None = None) -> BotKey:
    """`key` (the row with the presented key's id, its user loaded, as connections.endpoint.read reads it;
    None if none) if it is the presented key and active; notes that it was used (at most once per
    LAST_USED_RESOLUTION)."""
    if key is None or not presented.matches(key.digest):
        raise BotKeyRejected(NOT_VALID)
    now = timezone.now()
    if problem := key.unusable_because(now):
        raise BotKeyRejected(problem)
    if key.last_used_at is None or now - key.last_used_at > LAST_USED_RESOLUTION:
        BotKey.objects.filter(pk=key.pk).update(last_used_at=now, last_used_from=remote_addr)
        key.last_used_at = now
    return key


def bot_key_state(key: BotKey) -> str:
    return str(key.state().label)


@dataclass(frozen=True)
class ConnectionReach:
    """A connection that one of a user's roles is invited to: whether the user's bot key gets a token for it now,
    and why (or why not), in words."""

    connection: Connection
    roles: list[str]  # the user's roles invited to it
    gets_token: bool
    status: str


def connection_reach_for(user: User) -> list[ConnectionReach]:
    """The connections the user's bot keys may ask tokens for (through the user's roles), each with whether a token
    is there to give: for a user-specific one, whether this user has authorized it. Two queries, whatever the
    number of connections. Says nothing of a key's own state (revoked, expired): the caller adds that."""
    tokens = OAuthToken.objects.filter(connection=OuterRef("pk"))
    connections = (
        Connection.objects.filter(roles__user=user)
        .distinct()
        .order_by("name")
        .annotate(
            own_token_state=Subquery(tokens.filter(user=user).values("state")[:1]),
            shared_token_state=Subquery(tokens.filter(user__isnull=True).values("state")[:1]),
            owner_is_bot=Exists(BotAccount.objects.filter(user_id=user.pk)),  # in the same statement
        )
        .prefetch_related(Prefetch("roles", Group.objects.filter(user=user).order_by("name"), to_attr="user_roles"))
    )
    return [
        ConnectionReach(connection, [role.name for role in connection.user_roles], *_reach_status(connection, user))
        for connection in connections
    ]


class _TokenStates(TypedDict):
    """What connection_reach_for annotates each connection with: the state of the user's token and of the shared
    one, if there is one."""

    own_token_state: str | None
    shared_token_state: str | None
    owner_is_bot: bool


def _reach_status(connection: "WithAnnotations[Connection, _TokenStates]", user: User) -> tuple[bool, str]:
    if not connection.is_enabled:
        return False, "Disabled by an administrator: no token for anyone."
    username = user.get_username()
    if connection.is_user_specific and connection.owner_is_bot:
        # A bot account cannot sign in, so it can never authorize a token of its own.
        return False, (
            f"{username} is a bot account: it gets tokens of shared connections only. A user-specific connection "
            "gives each person's key that person's own token, once they have authorized it."
        )
    if connection.is_user_specific:
        state = connection.own_token_state
        missing = f"Not authorized by {username} yet: they authorize it on My OAuth connections."
        again = f"{username} must authorize it again (the provider refused the refresh)."
        working = f"Authorized by {username}."
    else:
        state = connection.shared_token_state
        if state is None and not connection.uses_authorization_code:
            return True, "Obtained from the provider at the first request (the application's own grant)."
        missing = "Not connected: an administrator must connect it."
        again = "An administrator must connect it again (the provider refused the refresh)."
        working = "Connected (shared token)."
    if state is None:
        return False, missing
    if state == TokenState.REAUTHORIZATION_REQUIRED:
        return False, again
    if state == TokenState.REFRESH_FAILING:
        return True, f"{working} Refreshes are failing: given while the token is valid."
    return True, working


def bot_key_unusable_because(key: BotKey) -> str:
    """Why the token endpoint refuses this key whatever its user may reach (BotKey.unusable_because), as the key's
    page says it; "" when it does not."""
    if not key.unusable_because():
        return ""
    state = key.state()
    if state == BotKey.State.REVOKED:
        return "This key is revoked: it gets no token."
    if state == BotKey.State.EXPIRED:
        return "This key has expired: it gets no token."
    return f"{key.user.get_username()} is deactivated: this key gets no token."
