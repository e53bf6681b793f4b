"""Audit events written many at a time, with one statement: the token endpoint's answers from memory (each web
process writes them from its report thread, connections.cache.token_cache) and a refresh worker's batch."""

import functools
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


def audit_rows_insert(events: list[dict[str, Any]]) -> None:
    """Write events (ROW_FIELDS, created_at an aware datetime) in one transaction, with one statement sent for all
    (executemany: psycopg sends the rows in one round trip, and the text is parsed once). bulk_create would
    prepare every field of every row in Python, several times the cost of this (bench/token_endpoint.py counts
    it in each answer); these values are plain already, and only the two that need it are adapted to the
    database by its backend's own hooks."""
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
    ]
    with transaction.atomic():
        with db_connection.cursor() as cursor:
            cursor.executemany(_insert_sql(db_connection.alias), rows)
        _last_token_issued_move(events)


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
def _insert_sql(alias: str) -> str:
    quote = connections[alias].ops.quote_name
    columns = ", ".join(quote(column_name(AuditEvent, name)) for name in ROW_FIELDS)

    def existing(model: type[Model]) -> str:
        # A user or connection deleted since its event was kept: the event stays, with its labels.
        pk, table = quote(column_name(model, model._meta.pk.attname)), quote(model._meta.db_table)
        return f"(SELECT {pk} FROM {table} WHERE {pk} = %s)"  # noqa: S608

    values = {"actor_id": existing(get_user_model()), "connection_id": existing(Connection)}
    placeholders = ", ".join(values.get(name, "%s") for name in ROW_FIELDS)
    # Only the models' own table and column names go into the text; every value is a parameter.
    return f"INSERT INTO {quote(AuditEvent._meta.db_table)} ({columns}) VALUES ({placeholders})"  # noqa: S608
