"""Audit events written many at a time: the token endpoint's answers and the API proxy's calls (each web process
writes them from its report thread, connections.cache.token_cache) and a refresh worker's batch.

Token answers and proxied calls are rolled up: those of the same bot key, connection, kind (memory, full, proxy),
outcome, address and minute become one row, its count how many, created_at the first and last_at the last. Each
process keeps the rows it wrote this minute and adds its next answers to them (one UPDATE for all, in the same
transaction as its other writes), so a key asking 2,000 times a second costs one row a minute per web process, not
120,000; and no two processes wait on each other's row. Every other event stays one row."""

import functools
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.db import connection as db_connection
from django.db import connections, transaction
from django.db.models import Model, Q

from connections.models import AuditEvent, Connection
from connections.models.columns import column_name

TOKEN_REQUEST, SUCCESS = AuditEvent.Action.TOKEN_REQUEST, AuditEvent.Outcome.SUCCESS

# What an answer from memory keeps of its audit event (AuditEvent's own field names); the time and the address
# are each request's own.
EVENT_FIELDS = ("actor_id", "actor_label", "connection_id", "connection_label", "action", "outcome", "detail")
ROW_FIELDS = ("created_at", *EVENT_FIELDS, "remote_addr")
ROLLUP_FIELDS = (*ROW_FIELDS, "kind", "count", "last_at")


def audit_rows_insert(events: list[dict[str, Any]]) -> None:
    """Write events (ROW_FIELDS, created_at an aware datetime; a "kind" for a token answer or proxied call, which
    is rolled up) in one transaction, with one statement sent for all single events (executemany: psycopg sends
    the rows in one round trip, and the text is parsed once). bulk_create would prepare every field of every row
    in Python, several times the cost of this (bench/token_endpoint.py counts it in each answer); these values
    are plain already, and only the two that need it are adapted to the database by its backend's own hooks."""
    if not events:
        return
    ops = db_connection.ops
    rows = [
        [
            ops.adapt_datetimefield_value(event["created_at"]),
            *(event[name] for name in EVENT_FIELDS),
            _address(db_connection.alias, event["remote_addr"]),
        ]
        for event in events
        if not event.get("kind")
    ]
    rollups = _rolled_up([event for event in events if event.get("kind")])
    with transaction.atomic():
        with db_connection.cursor() as cursor:
            if rows:
                cursor.executemany(_insert_sql(db_connection.alias), rows)
            if rollups:
                _rollups_write(cursor, rollups)
        _last_token_issued_move(events)


# --- rolled-up answers -------------------------------------------------------------------------------------------

# What makes answers one row: the minute, then the row's own columns (ROLLUP_KEY_FIELDS).
ROLLUP_KEY_FIELDS = ("kind", "actor_id", "actor_label", "connection_id", "connection_label", "action", "outcome")
RollupKey = tuple[Any, ...]  # (minute, *ROLLUP_KEY_FIELDS, remote_addr)
ROLLUP_MINUTES_KEPT = 5  # a row older than this many minutes is not added to again (a late report starts its own)


@dataclass
class _Rollup:
    event: dict[str, Any]  # the latest answer's EVENT_FIELDS (its detail is the row's)
    first: datetime
    last: datetime
    count: int = 0

    def add(self, event: dict[str, Any]) -> None:
        self.count += 1
        self.first = min(self.first, event["created_at"])
        if event["created_at"] >= self.last:
            self.last, self.event = event["created_at"], event


_rows_lock = threading.Lock()
_rows_written: dict[RollupKey, int] = {}  # by this process: the row each rollup went into


def rollups_forget() -> None:
    """Forget the rows this process added to (tests: a database flushed; the next answers start new rows)."""
    with _rows_lock:
        _rows_written.clear()


def _rollup_key(event: dict[str, Any]) -> RollupKey:
    minute = int(event["created_at"].timestamp() // 60)
    return (minute, *(event[name] for name in ROLLUP_KEY_FIELDS), event["remote_addr"])


def _rolled_up(events: list[dict[str, Any]]) -> dict[RollupKey, _Rollup]:
    rollups: dict[RollupKey, _Rollup] = {}
    for event in events:
        key = _rollup_key(event)
        if key not in rollups:
            rollups[key] = _Rollup(event, event["created_at"], event["created_at"])
        rollups[key].add(event)
    return rollups


def _rollups_write(cursor: Any, rollups: dict[RollupKey, _Rollup]) -> None:
    """Add each rollup to the row this process wrote it to this minute (one UPDATE for all), or insert its row.
    A row is added to only once it is read back with the same key (a transaction rolled back, or a database
    flushed, leaves this process a row id that is no longer that row)."""
    with _rows_lock:
        oldest = max(minute for minute, *_ in rollups) - ROLLUP_MINUTES_KEPT
        for key in [key for key in _rows_written if key[0] < oldest]:
            del _rows_written[key]
        known = {key: _rows_written[key] for key in rollups if key in _rows_written}
    found = _rows_found(cursor, known)
    ops = db_connection.ops
    updates = [
        [rollup.count, *[ops.adapt_datetimefield_value(rollup.last)] * 3, rollup.event["detail"], found[key]]
        for key, rollup in rollups.items()
        if key in found
    ]
    if updates:
        cursor.executemany(_update_sql(db_connection.alias), updates)
    inserted = {key: _rollup_insert(cursor, rollup) for key, rollup in rollups.items() if key not in found}
    with _rows_lock:
        _rows_written.update({key: row_id for key, row_id in inserted.items() if row_id is not None})


def _rows_found(cursor: Any, known: dict[RollupKey, int]) -> dict[RollupKey, int]:
    if not known:
        return {}
    quote = db_connection.ops.quote_name
    columns = ", ".join(quote(column_name(AuditEvent, name)) for name in ("id", *ROLLUP_KEY_FIELDS, "remote_addr"))
    placeholders = ", ".join(["%s"] * len(known))
    # Only the model's own table and column names go into the text; every value is a parameter.
    sql = f"SELECT {columns} FROM {quote(AuditEvent._meta.db_table)} WHERE id IN ({placeholders})"  # noqa: S608
    cursor.execute(sql, list(known.values()))
    rows = {row[0]: tuple(row[1:]) for row in cursor.fetchall()}
    return {key: row_id for key, row_id in known.items() if _same(rows.get(row_id), key[1:])}


def _same(row: tuple | None, key: tuple) -> bool:
    # A deleted user or connection leaves its rows' ids NULL: the labels still tell the row.
    return row is not None and all(a == b or b is None or a is None for a, b in zip(row, key, strict=True))


def _rollup_insert(cursor: Any, rollup: _Rollup) -> int | None:
    """Insert a rollup's row; its id, where the database returns it (else its next answers start another row)."""
    event, ops = rollup.event, db_connection.ops
    values = [
        ops.adapt_datetimefield_value(rollup.first),
        *(event[name] for name in EVENT_FIELDS),
        _address(db_connection.alias, event["remote_addr"]),
        event["kind"],
        rollup.count,
        ops.adapt_datetimefield_value(rollup.last),
    ]
    returning = db_connection.features.can_return_columns_from_insert
    cursor.execute(_insert_sql(db_connection.alias, ROLLUP_FIELDS) + (" RETURNING id" if returning else ""), values)
    return cursor.fetchone()[0] if returning else None


# How stale Connection.last_token_issued_at may be: each process moves a connection's at most this often, so that
# a busy connection costs each web process one UPDATE of its row every ten seconds, not one every batch (and the
# processes' batches do not queue on that row's lock).
LAST_ISSUED_RESOLUTION = timedelta(seconds=10)
_last_issued_written: dict[int, datetime] = {}  # by this process, per connection


def _last_token_issued_move(events: list[dict[str, Any]]) -> None:
    """Connection.last_token_issued_at: moved to the newest successful token request of the batch, one statement
    per connection, forward only (another process's batch may have written a newer one), in the order of the
    connections' keys (two batches lock the same rows in the same order, so they cannot deadlock). Here rather
    than in the token endpoint's request: its answers are audited in these batches, off the request's path."""
    newest: dict[int, datetime] = {}
    for event in events:
        if event["action"] == TOKEN_REQUEST and event["outcome"] == SUCCESS and event["connection_id"] is not None:
            connection_id = event["connection_id"]
            newest[connection_id] = max(event["created_at"], newest.get(connection_id, event["created_at"]))
    for connection_id, issued_at in sorted(newest.items()):
        written = _last_issued_written.get(connection_id)
        if written is not None and timedelta(0) <= issued_at - written < LAST_ISSUED_RESOLUTION:
            continue
        behind = Q(last_token_issued_at__isnull=True) | Q(last_token_issued_at__lt=issued_at)
        Connection.objects.filter(behind, pk=connection_id).update(last_token_issued_at=issued_at)
        _last_issued_written[connection_id] = max(issued_at, written or issued_at)


@functools.lru_cache(maxsize=1024)
def _address(alias: str, remote_addr: str | None) -> Any:
    """An address as the database takes it; parsed once, as the same few bots ask again and again."""
    return connections[alias].ops.adapt_ipaddressfield_value(remote_addr)


@functools.cache
def _update_sql(alias: str) -> str:
    quote = connections[alias].ops.quote_name
    count, last_at, detail = (quote(column_name(AuditEvent, name)) for name in ("count", "last_at", "detail"))
    # Every SET reads the row as it was: the detail is the latest answer's, whichever report came last.
    return (
        f"UPDATE {quote(AuditEvent._meta.db_table)} SET {count} = {count} + %s, "  # noqa: S608
        f"{last_at} = CASE WHEN {last_at} < %s THEN %s ELSE {last_at} END, "
        f"{detail} = CASE WHEN {last_at} < %s THEN %s ELSE {detail} END WHERE id = %s"
    )


@functools.cache
def _insert_sql(alias: str, fields: tuple[str, ...] = ROW_FIELDS) -> str:
    quote = connections[alias].ops.quote_name
    columns = ", ".join(quote(column_name(AuditEvent, name)) for name in fields)

    def existing(model: type[Model]) -> str:
        # A user or connection deleted since its event was kept: the event stays, with its labels.
        pk, table = quote(column_name(model, model._meta.pk.attname)), quote(model._meta.db_table)
        return f"(SELECT {pk} FROM {table} WHERE {pk} = %s)"  # noqa: S608

    values = {"actor_id": existing(get_user_model()), "connection_id": existing(Connection)}
    placeholders = ", ".join(values.get(name, "%s") for name in fields)
    # Only the models' own table and column names go into the text; every value is a parameter.
    return f"INSERT INTO {quote(AuditEvent._meta.db_table)} ({columns}) VALUES ({placeholders})"  # noqa: S608
