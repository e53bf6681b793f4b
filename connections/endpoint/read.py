"""What the token endpoint's full path needs, read with one statement: the presented key with its user, the
connection asked for (with what the API proxy needs of its provider type) and whether one of the user's roles is
invited to it, its stored token (the shared one or the user's own), and the identity version an answer is then
kept under (connections.cache.token_cache).

One statement rather than four: one round trip, one snapshot (the version is read with the rows it guards), and
no QuerySet to build on every request, which cost more CPU than the database spent running them
(bench/profile_token.py). The values pass through each field's own converters (decryption included), as a
QuerySet would pass them, and the instances hold only these fields, as with QuerySet.only().
"""

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.contrib.auth import get_user_model
from django.db import InterfaceError, OperationalError, connections, router
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Model
from django.utils import timezone

from connections.models import AnswerVersion, BotKey, Connection, OAuthToken, TokenType
from connections.models.columns import column_name, concrete_field
from providers.models import Provider

KEY_FIELDS = ("id", "key_id", "name", "digest", "revoked_at", "expires_at", "last_used_at", "user_id")
USER_FIELDS = ("id", "is_active")  # and the username field, whatever the user model calls it
CONNECTION_FIELDS = ("id", "slug", "is_enabled", "token_type", "grant_type", "token_access")
# What the API proxy needs besides (its API base, how the provider type's API takes the token): read with the rest
# for a proxied call (for_proxy) rather than by a second query, and not at all for a token request.
PROXY_CONNECTION_FIELDS = (*CONNECTION_FIELDS, "api_base_url", "placeholders", "provider_id")
PROVIDER_FIELDS = ("id", "slug", "api_base_url", "api_token_header", "api_token_prefix")
TOKEN_FIELDS = (
    "id", "connection_id", "user_id", "access_token", "token_type", "scope", "extra", "expires_at", "state",
    "generation", "next_refresh_at", "last_error",
)  # fmt: skip


@dataclass(frozen=True)
class TokenRequestRead:
    key: BotKey = field(repr=False)  # its .user holds USER_FIELDS; the row holds the key's digest
    connection: Connection | None  # None: no connection has that slug
    invited: bool  # one of the key's user's roles is invited to the connection
    token: OAuthToken | None  # None: not connected (for this user, if user-specific)
    identity: int
    # When the rows were read: a refresh that failed since then is this request's to share, not to repeat.
    read_at: datetime | None = None


def token_request_read(key_id: str, slug: str | None, *, for_proxy: bool = False) -> TokenRequestRead | None:
    """None when no key has this id. A slug of None (not a slug's shape) finds no connection. for_proxy: the
    connection's provider type comes with it, and what the API proxy needs of both."""
    db = connections[router.db_for_read(BotKey)]
    read_at = timezone.now()
    user_specific = TokenType.USER_SPECIFIC.value
    row = _row_read(
        db, _sql(db.alias, for_proxy), [AnswerVersion.IDENTITY, slug or "", user_specific, user_specific, key_id]
    )
    if row is None:
        return None
    values = iter(row)
    key = _instance(db, BotKey, KEY_FIELDS, values)
    key.user = _instance(db, get_user_model(), _user_fields(), values)
    connection = _instance(db, Connection, PROXY_CONNECTION_FIELDS if for_proxy else CONNECTION_FIELDS, values)
    if for_proxy:
        provider = _instance(db, Provider, PROVIDER_FIELDS, values)
        if connection is not None:
            connection.provider = provider
    invited = bool(next(values))
    token = _instance(db, OAuthToken, TOKEN_FIELDS, values)
    return TokenRequestRead(key, connection, invited, token, next(values) or 0, read_at)


def _row_read(db: BaseDatabaseWrapper, sql: str, params: list[Any]) -> tuple[Any, ...] | None:
    """The statement's one row. It is its own connection health check (CONN_HEALTH_CHECKS would add a SELECT 1 round
    trip to every request first): on a connection that broke since its last use (the database restarted), the
    SELECT, which changes nothing, is sent once more on a new connection."""
    # Django's own flags for that check (BaseDatabaseWrapper.close_if_health_check_failed; not in django-stubs).
    retry = db.health_check_enabled and not db.health_check_done and not db.in_atomic_block  # type: ignore[attr-defined]
    if retry:
        db.health_check_done = True  # type: ignore[attr-defined]
    try:
        with db.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchone()
    except (OperationalError, InterfaceError):
        if not retry:
            raise
        db.close()
    with db.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone()


def _user_fields() -> tuple[str, ...]:
    return (*USER_FIELDS, get_user_model().USERNAME_FIELD)


def _instance(db: BaseDatabaseWrapper, model: type[Model], names: tuple[str, ...], values: Iterator[Any]) -> Any:
    """The next len(names) values as an instance of model (None if its primary key is NULL: no such row)."""
    raw = [next(values) for _ in names]
    if raw[0] is None:
        return None
    converted = {
        name: convert(value)
        for name, convert, value in zip(names, _converters(db.alias, model, names), raw, strict=True)
    }
    # from_db takes the values in the model's field order.
    loaded = [field.attname for field in model._meta.concrete_fields if field.attname in converted]
    return model.from_db(db.alias, loaded, [converted[name] for name in loaded])


@functools.cache
def _converters(alias: str, model: type[Model], names: tuple[str, ...]) -> list[Callable[[Any], Any]]:
    """For each column, what a QuerySet applies to its value: the backend's converters, then the field's."""
    db = connections[alias]

    def converter_of(name: str) -> Callable[[Any], Any]:
        field = concrete_field(model, name)
        column = field.get_col(model._meta.db_table)
        steps = [*db.ops.get_db_converters(column), *field.get_db_converters(db)]

        def convert(value: Any) -> Any:
            for step in steps:
                value = step(value, column, db)
            return value

        return convert

    return [converter_of(name) for name in names]


@functools.cache
def _sql(alias: str, for_proxy: bool) -> str:
    quote = connections[alias].ops.quote_name

    def columns(model: type[Model], table: str, names: tuple[str, ...]) -> str:
        return ", ".join(f"{table}.{quote(column_name(model, name))}" for name in names)

    def table(model: type[Model]) -> str:
        return quote(model._meta.db_table)

    def pk(model: type[Model], table: str) -> str:
        return f"{table}.{quote(column_name(model, model._meta.pk.attname))}"

    user_model = get_user_model()
    invitations, memberships = Connection.roles.through, user_model.groups.through
    connection_columns, provider_join = columns(Connection, "c", CONNECTION_FIELDS), ""
    if for_proxy:
        connection_columns = (
            f"{columns(Connection, 'c', PROXY_CONNECTION_FIELDS)}, {columns(Provider, 'p', PROVIDER_FIELDS)}"
        )
        provider_column = quote(column_name(Connection, "provider_id"))
        provider_join = f"LEFT JOIN {table(Provider)} p ON {pk(Provider, 'p')} = c.{provider_column} "
    # Only the models' own table and column names go into the text; every value is a parameter.
    return (
        f"SELECT {columns(BotKey, 'k', KEY_FIELDS)}, {columns(user_model, 'u', _user_fields())}, "  # noqa: S608
        f"{connection_columns}, "
        f"EXISTS (SELECT 1 FROM {table(invitations)} i JOIN {table(memberships)} m ON m.{quote('group_id')} = "
        f"i.{quote('group_id')} WHERE i.{quote('connection_id')} = {pk(Connection, 'c')} "
        f"AND m.{quote('user_id')} = {pk(user_model, 'u')}), "
        f"{columns(OAuthToken, 't', TOKEN_FIELDS)}, "
        f"(SELECT v.{quote('value')} FROM {table(AnswerVersion)} v WHERE v.{quote('name')} = %s) "
        f"FROM {table(BotKey)} k JOIN {table(user_model)} u ON {pk(user_model, 'u')} = k.{quote('user_id')} "
        f"LEFT JOIN {table(Connection)} c ON c.{quote('slug')} = %s {provider_join}"
        f"LEFT JOIN {table(OAuthToken)} t ON t.{quote('connection_id')} = {pk(Connection, 'c')} AND ("
        f"(c.{quote('token_type')} = %s AND t.{quote('user_id')} = {pk(user_model, 'u')}) "
        f"OR (c.{quote('token_type')} <> %s AND t.{quote('user_id')} IS NULL)) "
        f"WHERE k.{quote('key_id')} = %s"
    )
