"""Storing a token response: expiry and refresh margin, rotation-safe writes, and the client configuration a
connection hands to connections.oauth.client."""

import copy
import functools
import logging
import random
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import IntegrityError, connections, router, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import QuerySet
from django.utils import timezone

from connections.cache import invalidation
from connections.errors import ProviderError
from connections.models import Connection, OAuthToken, TokenState
from connections.models.columns import column_name, concrete_field
from connections.oauth import client as oauth_client
from connections.oauth.client import TokenResponse
from connections.oauth.client_auth import ClientConfig

logger = logging.getLogger(__name__)


def connection_client_config(connection: Connection) -> ClientConfig:
    return ClientConfig(
        client_id=connection.client_id,
        client_secret=connection.client_secret,
        authorization_url=connection.effective_authorization_url,
        token_url=connection.effective_token_url,
        revocation_url=connection.effective_revocation_url,
        scopes=tuple(connection.scope_list),
        scope_separator=connection.provider.scope_separator or " ",
        extra_authorization_params={
            **connection.provider.extra_authorization_params,
            **connection.extra_authorization_params,
        },
        client_auth_method=connection.effective_client_auth_method,
        redirect_uri=settings.OAUTH_REDIRECT_URI,
        token_request_params=connection.provider.token_request_params,
        token_request_headers=connection.provider.token_request_headers,
        token_request_format=connection.provider.token_request_format,
        refresh_url=connection.effective_refresh_url,
        grant_type=connection.grant_type,
        device_authorization_url=connection.effective_device_authorization_url,
        private_key=connection.private_key,
        private_key_id=connection.private_key_id,
        assertion_audience=connection.effective_assertion_audience,
        jwt_subject=connection.jwt_subject,
        token_response_fields=connection.provider.token_response_fields,
        next_client_secret=connection.next_client_secret,
        next_private_key=connection.next_private_key,
    )


def refresh_margin(connection: Connection, lifetime: int) -> int:
    """Refresh this long before expiry: the setting or the provider's, but never more than half the lifetime."""
    margin = connection.provider.refresh_margin or settings.TOKEN_REFRESH_MARGIN
    return min(margin, lifetime // 2)


def _expiry(connection: Connection, response: TokenResponse) -> tuple[datetime | None, datetime | None]:
    """(expires at, next refresh at; None: never). The refresh comes inside the margin, at a random point of its
    first REFRESH_JITTER part: tokens issued together (a herd, e.g. after apply_config) are not all due at one
    moment, and none is refreshed later than (1 - REFRESH_JITTER) x the margin before it expires. A provider's
    refresh tokens that die when idle bring the refresh forward to before they would."""
    provider, now = connection.provider, timezone.now()
    lifetime = response.expires_in if response.expires_in and response.expires_in > 0 else None
    if lifetime is None and provider.tokens_never_expire:
        expires_at = next_refresh_at = None
    else:
        expires_at = now + timedelta(seconds=lifetime or connection.token_lifetime_default)
        next_refresh_at = _refresh_before(connection, expires_at, now)
    idle = provider.refresh_token_max_idle
    if idle and connection.uses_authorization_code:  # client credentials hold no refresh token
        before_idle = _refresh_before(connection, now + timedelta(seconds=idle), now)
        next_refresh_at = before_idle if next_refresh_at is None else min(next_refresh_at, before_idle)
    return expires_at, next_refresh_at


def _refresh_before(connection: Connection, deadline: datetime, now: datetime) -> datetime:
    """When to refresh, inside the margin before `deadline` (jittered, as _expiry says)."""
    margin = refresh_margin(connection, int((deadline - now).total_seconds()))
    jitter = random.uniform(0, settings.REFRESH_JITTER * margin)  # noqa: S311 - spreading load, not a secret
    return deadline - timedelta(seconds=margin - jitter)


@dataclass(frozen=True)
class Fence:
    """A token row as a refresher leased it. A refresh's outcome is written only while the row is still that:
    a disconnect, a re-authorization or a newer refresh since then wins, and the outcome is dropped."""

    token_id: int
    lease_owner: str
    generation: int

    def rows(self) -> QuerySet[OAuthToken]:
        return OAuthToken.objects.filter(pk=self.token_id, lease_owner=self.lease_owner, generation=self.generation)

    def update(self, using: str | None = None, **values: Any) -> bool:
        """Write `values` to the row if it is still as leased (its id, lease owner and generation); whether it was.
        Plain SQL rather than QuerySet.update(): a refresh's cost is mostly its HTTP call and this write, and
        update() spends more CPU building the statement than PostgreSQL spends running it
        (bench/profile_refresh.py). The values are converted as update() converts them: each field's
        get_db_prep_save, which encrypts the encrypted ones; values only, no expressions (rows() takes those)."""
        connection = connections[using or router.db_for_write(OAuthToken)]
        fields = [concrete_field(OAuthToken, name) for name in values]
        params = [field.get_db_prep_save(values[field.name], connection) for field in fields]
        with connection.cursor() as cursor:
            cursor.execute(
                _fenced_update_sql(connection.alias, tuple(values)),
                [*params, self.token_id, self.lease_owner, self.generation],
            )
            return cursor.rowcount > 0


@functools.cache
def _fenced_update_sql(alias: str, names: tuple[str, ...]) -> str:
    """The same text for the same fields, so PostgreSQL keeps it prepared (prepare_threshold)."""
    quote = connections[alias].ops.quote_name
    assignments = ", ".join(f"{quote(column_name(OAuthToken, name))} = %s" for name in names)
    fence = " AND ".join(f"{quote(column_name(OAuthToken, name))} = %s" for name in FENCE_COLUMNS)
    # Only the model's own table and column names go into the text; every value is a parameter.
    return f"UPDATE {quote(OAuthToken._meta.db_table)} SET {assignments} WHERE {fence}"  # noqa: S608


FENCE_COLUMNS = ("id", "lease_owner", "generation")  # in the order Fence.update passes them


def fenced_updates(rows: Sequence[tuple[Fence, dict[str, Any]]], using: str | None = None) -> set[int]:
    """Write each row's values where the row is still as its fence says (id, lease owner, generation), several
    rows a statement: the ids written; a row whose fence was lost is left as it is and absent from them. One
    UPDATE ... FROM (VALUES ...) RETURNING for each set of columns written (a batch's results mostly share one),
    so each row still gets exactly the columns Fence.update would write. Values are converted as Fence.update
    converts them (encrypted where the field is)."""
    connection = connections[using or router.db_for_write(OAuthToken)]
    if not many_rows_a_statement(connection):
        return {fence.token_id for fence, values in rows if fence.update(using=connection.alias, **values)}
    shapes: dict[tuple[str, ...], list[tuple[Fence, dict[str, Any]]]] = {}
    for fence, values in rows:
        shapes.setdefault(tuple(values), []).append((fence, values))
    written: set[int] = set()
    for names, group in shapes.items():
        fields = [concrete_field(OAuthToken, name) for name in names]
        params: list[Any] = []
        for fence, values in group:
            params += (fence.token_id, fence.lease_owner, fence.generation)
            params += (field.get_db_prep_save(values[field.name], connection) for field in fields)
        with connection.cursor() as cursor:
            cursor.execute(_fenced_updates_sql(connection.alias, names, len(group)), params)
            written.update(token_id for (token_id,) in cursor.fetchall())
    return written


def many_rows_a_statement(connection: BaseDatabaseWrapper) -> bool:
    """UPDATE ... FROM with RETURNING: PostgreSQL's, and SQLite's from 3.35 (Django supports 3.31 up; an older
    SQLite writes row by row)."""
    return connection.vendor != "sqlite" or sqlite3.sqlite_version_info >= (3, 35)  # the library Django's SQLite uses


@functools.cache
def _fenced_updates_sql(alias: str, names: tuple[str, ...], rows: int) -> str:
    """WITH v (the fence's columns, then the values') AS (VALUES ...) UPDATE the table FROM v WHERE it matches the
    fence RETURNING the ids written: PostgreSQL, and SQLite from 3.35 (UPDATE ... FROM and RETURNING). PostgreSQL
    reads a VALUES list's parameters as text unless told their types, so each is cast to its column's; SQLite
    needs no casts (and would give a date the wrong affinity with one)."""
    connection = connections[alias]
    quote, table = connection.ops.quote_name, connection.ops.quote_name(OAuthToken._meta.db_table)
    fenced, written = (
        [column_name(OAuthToken, name) for name in FENCE_COLUMNS],
        [column_name(OAuthToken, name) for name in names],
    )
    if connection.vendor == "postgresql":
        casts = [f"::{concrete_field(OAuthToken, name).cast_db_type(connection)}" for name in (*FENCE_COLUMNS, *names)]
    else:
        casts = [""] * (len(fenced) + len(written))
    row = "(" + ", ".join(f"%s{cast}" for cast in casts) + ")"
    # v's columns: the fence's as "fence_<column>" (a refresh writes lease_owner and generation too), then the values'.
    columns = [quote(f"fence_{column}") for column in fenced] + [quote(column) for column in written]
    assignments = ", ".join(f"{quote(column)} = v.{quote(column)}" for column in written)
    fence = " AND ".join(f"{table}.{quote(column)} = v.{quote(f'fence_{column}')}" for column in fenced)
    # Only the model's own table and column names go into the text; every value is a parameter.
    return (
        f"WITH v ({', '.join(columns)}) AS (VALUES {', '.join([row] * rows)}) "  # noqa: S608
        f"UPDATE {table} SET {assignments} FROM v WHERE {fence} RETURNING {table}.{quote('id')}"
    )


def token_store(
    *,
    connection: Connection,
    user: User | None,
    response: TokenResponse,
    authorized_by: User | None = None,
) -> OAuthToken:
    """Store the tokens of a new grant (an authorization, a client-credentials token) whatever the row held.
    An in-flight refresh of the old grant loses its lease, so its late result cannot undo this one."""
    return token_store_replacing(connection=connection, user=user, response=response, authorized_by=authorized_by)[0]


def token_store_replacing(
    *,
    connection: Connection,
    user: User | None,
    response: TokenResponse,
    authorized_by: User | None = None,
) -> tuple[OAuthToken, str]:
    """token_store, also returning the refresh token the new grant replaced ("" if none, or if it is kept)."""
    try:
        return _grant_write(connection, user, response, authorized_by)
    except IntegrityError:
        # Another process stored this connection's first token at the same moment; now there is a row to update.
        return _grant_write(connection, user, response, authorized_by)


def _grant_write(
    connection: Connection,
    user: User | None,
    response: TokenResponse,
    authorized_by: User | None,
) -> tuple[OAuthToken, str]:
    owner = user if connection.is_user_specific else None
    with transaction.atomic():
        token = OAuthToken.objects.select_for_update().filter(connection=connection, user=owner).first()
        if token is None:
            token = OAuthToken(connection=connection, user=owner, generation=0)
        replaced = token.refresh_token
        _response_apply(token, connection, response)
        if authorized_by is not None:
            token.authorized_by = authorized_by
            token.authorized_at = token.obtained_at
        else:
            token.refreshed_at = token.obtained_at
        token.save()
    return token, replaced if replaced != token.refresh_token else ""


def token_store_refreshed(*, fence: Fence, token: OAuthToken, response: TokenResponse) -> OAuthToken | None:
    """Store a refresh's result if the row is still what the refresher leased; None (nothing written) if not.
    `token` is the row as leased: nobody else writes it while the fence holds, so one conditional UPDATE does."""
    refreshed, changes = token_refreshed_row(token, response)
    if not fence.update(**changes):
        return None
    invalidation.token_rows_changed(token.connection.slug)  # an UPDATE sends no signal
    return refreshed


def token_refreshed_row(token: OAuthToken, response: TokenResponse) -> tuple[OAuthToken, dict[str, Any]]:
    """The row as a refresh's result makes it, from `token` as leased, and the values to write for that."""
    refreshed = copy.copy(token)
    _response_apply(refreshed, token.connection, response)
    refreshed.refreshed_at = refreshed.updated_at = refreshed.obtained_at
    # Only the columns the refresh changes are written (most keep their value: an id token, the scope, a
    # refresh token the provider does not rotate). Under the fence the others hold what was leased; key rotation
    # may have re-encrypted one meanwhile, but not changed its value.
    changes = {
        name: getattr(refreshed, name) for name in REFRESH_WRITES if getattr(refreshed, name) != getattr(token, name)
    }
    return refreshed, changes


# What a refresh's result changes in the row (_response_apply), and when.
REFRESH_WRITES = (
    "access_token",
    "refresh_token",
    "id_token",
    "token_type",
    "scope",
    "extra",
    "expires_at",
    "next_refresh_at",
    "refresh_due_at",
    "state",
    "consecutive_failures",
    "last_error",
    "last_error_at",
    "lease_owner",
    "lease_expires_at",
    "generation",
    "obtained_at",
    "refreshed_at",
    "updated_at",
)


def _response_apply(token: OAuthToken, connection: Connection, response: TokenResponse) -> None:
    """A new access token with its refresh token, in one write; what the response leaves out is kept."""
    token.access_token = response.access_token
    # A provider that does not rotate sends no refresh token: the one we hold stays valid (RFC 6749 6).
    token.refresh_token = response.refresh_token or token.refresh_token
    token.id_token = response.id_token or token.id_token
    token.token_type = response.token_type
    token.scope = response.scope or token.scope or " ".join(connection.scope_list)
    token.extra = {**token.extra, **response.extra}
    token.expires_at, token.next_refresh_at = _expiry(connection, response)
    token.refresh_due_at = token.next_refresh_at
    token.state = TokenState.ACTIVE
    token.consecutive_failures = 0
    token.last_error = ""
    token.last_error_at = None
    token.lease_owner = ""
    token.lease_expires_at = None
    token.generation += 1
    token.obtained_at = timezone.now()


def token_values_revoke(connection: Connection, values: list[tuple[str, str]]) -> list[str]:
    """Revoke (value, type hint) pairs at the provider (RFC 7009), outside any transaction; the refresh token
    first, which ends the whole grant at most providers (RFC 7009 2.1). Returns what went wrong, in words."""
    config = connection_client_config(connection)
    problems = []
    for value, hint in values:
        if value and config.revocation_url:
            try:
                oauth_client.revoke(config, token=value, token_type_hint=hint)
            except ProviderError as exc:
                problems.append(exc.message)
    return problems


def token_replaced_revoke(connection: Connection, replaced: str) -> None:
    """End at the provider the grant a new authorization replaced (by its refresh token; its access token is left
    to expire, as a bot may hold it for a moment yet), outside any transaction: a token nobody holds any more, so
    token_values_drop's rule applies (elsewhere than where revocation ends a token alone, revoking it could end the
    new grant too)."""
    if replaced:
        why = f"The grant {connection.slug}'s new authorization replaced"
        token_values_drop(connection, [(replaced, "refresh_token")], why)


def token_values_drop(connection: Connection, values: list[tuple[str, str]], why: str) -> None:
    """Tokens nobody will hold (a late refresh result, an authorization that may no longer complete): revoked at
    the provider where revoking a token ends that token alone (Provider.revoke_replaced_grant); elsewhere revoking
    one may end the person's whole authorization of the app, the stored grant with it, so they are left to
    expire. `why` (which names the connection) is said in the log."""
    if not connection.provider.revoke_replaced_grant:
        logger.info("%s: left to expire at the provider, as revoking it could end the grant in use too.", why)
        return
    for problem in token_values_revoke(connection, values):
        logger.warning("%s: could not revoke it at the provider: %s", why, problem)
