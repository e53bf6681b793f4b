"""Audit events written many at a time, with one statement: the token endpoint's answers from memory (each web
process writes them from its report thread, connections.token_cache) and a refresh worker's batch."""

import functools
from typing import Any

from django.contrib.auth import get_user_model
from django.db import connection as db_connection
from django.db import connections, transaction
from django.db.models import Model

from connections.models import AuditEvent, Connection

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
    with transaction.atomic(), db_connection.cursor() as cursor:
        cursor.executemany(_insert_sql(db_connection.alias), rows)


@functools.lru_cache(maxsize=1024)
def _address(alias: str, remote_addr: str | None) -> Any:
    """An address as the database takes it; parsed once, as the same few bots ask again and again."""
    return connections[alias].ops.adapt_ipaddressfield_value(remote_addr)


@functools.cache
def _insert_sql(alias: str) -> str:
    quote = connections[alias].ops.quote_name
    columns = ", ".join(quote(AuditEvent._meta.get_field(name).column) for name in ROW_FIELDS)

    def existing(model: type[Model]) -> str:
        # A user or connection deleted since its event was kept: the event stays, with its labels.
        pk, table = quote(model._meta.pk.column), quote(model._meta.db_table)
        return f"(SELECT {pk} FROM {table} WHERE {pk} = %s)"  # noqa: S608

    values = {"actor_id": existing(get_user_model()), "connection_id": existing(Connection)}
    placeholders = ", ".join(values.get(name, "%s") for name in ROW_FIELDS)
    # Only the models' own table and column names go into the text; every value is a parameter.
    return f"INSERT INTO {quote(AuditEvent._meta.db_table)} ({columns}) VALUES ({placeholders})"  # noqa: S608
