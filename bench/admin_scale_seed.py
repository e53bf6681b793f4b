"""The volumes of bench/admin_scale.py, written by PostgreSQL itself: each table is filled by INSERT ... SELECT
over generate_series, one statement a chunk, so that no row passes through Python. Every column the statement
does not compute takes its model field's default, prepared once by the field itself (an encrypted secret is one
ciphertext shared by all rows: the admin never decrypts it)."""

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

AUDIT_DAYS = 400  # the audit rows are spread over the default retention
BOTS = 1_000  # bot users holding the keys
KEY_IDS = "scalekey"  # prefix of the seeded keys' ids (16 characters with their number)
NOW_AT = datetime.now().astimezone()  # what the audit rows' times are relative to


@dataclass(frozen=True)
class Volumes:
    audit_rows: int
    connections: int
    keys: int
    invited: int  # user-specific connections the invited person's role may use


class SeriesInsert:
    """INSERT INTO <model's table> SELECT <expressions of n> FROM generate_series(first, last) AS n: the given
    columns as SQL expressions, every other column (but the id and database defaults) its field's default."""

    def __init__(self, model: type, computed: dict[str, str], fixed: dict[str, object] | None = None) -> None:
        from django.db import connection

        fixed = fixed or {}
        quote = connection.ops.quote_name
        fields = [field for field in model._meta.concrete_fields if not field.primary_key or field.attname in computed]
        columns, expressions, self.parameters = [], [], []
        for field in fields:
            if field.attname in computed:
                columns.append(field.column)
                expressions.append(computed[field.attname].replace("%", "%%"))  # no parameter among them
            elif field.attname in fixed or not field.has_db_default():
                value = fixed[field.attname] if field.attname in fixed else field.get_default()
                columns.append(field.column)
                expressions.append("%s")
                self.parameters.append(field.get_db_prep_save(value, connection))
        # The moment the table is filled, written into the text (a value of ours, never a user's): the tokens'
        # times are relative to it, so that they are as fresh as a running installation's when the pages are timed.
        now = f"'{datetime.now().astimezone().isoformat()}'::timestamptz"
        expressions = [expression.replace("{NOW}", now) for expression in expressions]
        table = quote(model._meta.db_table)
        self.sql = (
            f"INSERT INTO {table} ({', '.join(map(quote, columns))}) "  # noqa: S608 - names and expressions of ours
            f"SELECT {', '.join(expressions)} FROM generate_series(%s::bigint, %s::bigint) AS n"
        )

    def run(self, first: int, last: int, chunk: int = 1_000_000, progress: Callable[[int], None] | None = None):
        from django.db import connection, transaction

        for start in range(first, last + 1, chunk):
            end = min(start + chunk - 1, last)
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(self.sql, [*self.parameters, start, end])
            if progress:
                progress(end)


def seed(volumes: Volumes) -> dict[str, float]:
    """Fill the tables; returns the seconds each took."""
    from django.contrib.auth.models import Group, User
    from django.db import connection

    from connections.models import AuditEvent, BotKey, Connection, OAuthToken
    from providers.models import Provider

    took: dict[str, float] = {}
    started = time.monotonic()
    _audit(volumes)  # first: the longest, and the tokens written after it are the fresher
    took["audit rows"] = time.monotonic() - started
    now = datetime.now().astimezone()
    provider = Provider.objects.get(slug="custom")
    started = time.monotonic()
    users_first = User.objects.order_by("-id").values_list("id", flat=True).first() or 0
    SeriesInsert(
        User,
        {"id": f"n + {users_first}", "username": "'scale-bot-' || n"},
        {"password": "!", "date_joined": now, "is_active": True},
    ).run(1, BOTS)
    bots_first = users_first + 1
    _sequence_after("auth_user", users_first + BOTS)
    person = User.objects.create_user("scale-person", password="scale-person-password")  # noqa: S106
    role = Group.objects.create(name="Scale people")
    person.groups.add(role)
    took["users"] = time.monotonic() - started

    started = time.monotonic()
    user_specific_from = volumes.connections - volumes.invited + 1
    connections = SeriesInsert(
        Connection,
        {
            "id": "n",
            "name": "'Scale ' || lpad(n::text, 7, '0')",
            "slug": "'scale-' || lpad(n::text, 7, '0')",
            "client_id": "'client-' || n",
            "token_type": f"CASE WHEN n >= {user_specific_from} THEN 'user_specific' ELSE 'shared' END",
            "is_enabled": "n % 500 <> 0",
            "last_token_issued_at": "{NOW} - (n % 3600) * interval '1 second'",
        },
        {"provider_id": provider.pk, "client_secret": "scale-secret", "created_at": now, "updated_at": now},
    )
    connections.run(1, volumes.connections, chunk=200_000)
    _sequence_after("connections_connection", volumes.connections)
    roles = Connection.roles.through
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {roles._meta.db_table} (connection_id, group_id) "  # noqa: S608
            "SELECT n, %s FROM generate_series(%s::bigint, %s::bigint) AS n",
            [role.pk, user_specific_from, volumes.connections],
        )
    took["connections"] = time.monotonic() - started

    started = time.monotonic()
    # A healthy installation: every token's refresh is due in the next hour, none is late.
    expires = "{NOW} + (1200 + n % 2400) * interval '1 second'"  # due 15 to 55 minutes from now
    token_columns = {
        "connection_id": "n",
        "expires_at": expires,
        "next_refresh_at": expires + " - interval '300 seconds'",
        "refresh_due_at": expires + " - interval '240 seconds'",
        "state": "CASE WHEN n % 250 = 0 THEN 'reauthorization_required' WHEN n % 100 = 0 THEN 'refresh_failing' "
        "ELSE 'active' END",
        "last_error": "CASE WHEN n % 100 = 0 THEN 'invalid_grant: the refresh token was revoked' ELSE '' END",
    }
    fixed = {"access_token": "scale-access-token", "scope": "api", "extra": {}, "generation": 1}
    tokens = SeriesInsert(OAuthToken, token_columns, {**fixed, "authorized_at": now, "updated_at": now})
    tokens.run(1, user_specific_from - 1, chunk=200_000)
    # The invited person has authorized every other one of their connections.
    mine = SeriesInsert(OAuthToken, {**token_columns, "user_id": str(person.pk)}, {**fixed, "updated_at": now})
    mine.sql = mine.sql.replace("AS n", "AS n WHERE n %% 2 = 0")
    mine.run(user_specific_from, volumes.connections)
    took["tokens"] = time.monotonic() - started

    started = time.monotonic()
    keys = SeriesInsert(
        BotKey,
        {
            "user_id": f"{bots_first} + n % {BOTS}",
            "name": "'runner ' || n",
            "key_id": f"'{KEY_IDS}' || lpad(n::text, 8, '0')",
            "created_at": "{NOW} - (n % 400) * interval '1 day'",
            "expires_at": "CASE WHEN n % 3 = 0 THEN NULL ELSE {NOW} + (n % 365) * interval '1 day' END",
            "revoked_at": "CASE WHEN n % 10 = 0 THEN {NOW} ELSE NULL END",
            "last_used_at": "{NOW} - (n % 86400) * interval '1 second'",
        },
        {"digest": "0" * 64},
    )
    keys.run(1, volumes.keys)
    took["bot keys"] = time.monotonic() - started

    with connection.cursor() as cursor:
        for model in (User, Connection, OAuthToken, BotKey, AuditEvent):
            cursor.execute(f"VACUUM ANALYZE {model._meta.db_table}")
    return took


def _audit(volumes: Volumes) -> None:
    """Rows spread evenly over AUDIT_DAYS, newest first by id: mostly rolled-up token answers (their counts vary),
    proxied calls, refreshes and their failures, and a few of every other kind of event."""
    from django.db import connection

    from connections.models import AuditEvent

    step = timedelta(days=AUDIT_DAYS) / volumes.audit_rows
    action = (
        "CASE WHEN n % 20 < 14 THEN 'token_request' WHEN n % 20 < 16 THEN 'proxy_request' "
        "WHEN n % 20 < 19 THEN 'token_refresh' WHEN n % 40 = 19 THEN 'connection_update' ELSE 'bot_key_create' END"
    )
    rolled = "n % 20 < 16 AND n % 7 <> 0"
    insert = SeriesInsert(
        AuditEvent,
        {
            "created_at": f"{{NOW}} - n * interval '{step.total_seconds():.6f} seconds'",
            "actor_label": f"CASE WHEN n % 20 < 16 THEN 'scale-bot-' || (n % {BOTS}) || ' (key {KEY_IDS}' || "
            f"lpad((n % {volumes.keys})::text, 8, '0') || ')' ELSE 'system' END",
            "connection_label": f"'scale-' || lpad((1 + n % {volumes.connections})::text, 7, '0')",
            "action": action,
            "outcome": "CASE WHEN n % 97 = 0 THEN 'failure' ELSE 'success' END",
            "detail": "CASE WHEN n % 20 < 14 THEN 'Token expiring 2026-12-01 10:00:00' WHEN n % 20 < 16 THEN "
            "'GET /services/data/v60.0/query?q=… → 200 in 84 ms, 0 bytes sent, 5120 bytes received' "
            "ELSE 'Refreshed; expires in 3600 s.' END",
            "remote_addr": "('10.0.' || (n % 200) || '.' || (n % 250))::inet",
            "kind": f"CASE WHEN {rolled} THEN (CASE WHEN n % 20 >= 14 THEN 'proxy' WHEN n % 3 = 0 THEN 'full' "
            "ELSE 'memory' END) ELSE '' END",
            "count": f"CASE WHEN {rolled} THEN 1 + (n * 7919) % 2000 ELSE 1 END",
            "last_at": f"CASE WHEN {rolled} THEN {{NOW}} - n * interval '{step.total_seconds():.6f} seconds' "
            "+ interval '59 seconds' ELSE NULL END",
        },
    )
    started = time.monotonic()

    def progress(done: int) -> None:
        rate = done / (time.monotonic() - started)
        print(f"  audit rows: {done:,} / {volumes.audit_rows:,} ({rate:,.0f} a second)", flush=True)

    # Faster without the indexes, which are built again afterwards (sorting once, as a restore does).
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s AND indexname NOT LIKE %s",
            [AuditEvent._meta.db_table, "%pkey"],
        )
        indexes = cursor.fetchall()
        for name, _ in indexes:
            cursor.execute(f'DROP INDEX "{name}"')
    insert.run(1, volumes.audit_rows, chunk=2_000_000, progress=progress)
    with connection.cursor() as cursor:
        cursor.execute("SET maintenance_work_mem = '1GB'")
        for name, definition in indexes:
            started = time.monotonic()
            cursor.execute(definition)
            print(f"  index {name}: {time.monotonic() - started:.0f} s", flush=True)


def _sequence_after(table: str, last: int) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT setval(pg_get_serial_sequence(%s, 'id'), %s)", [table, last])
