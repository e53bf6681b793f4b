"""The token change log (models.TokenChange): how a web process learns which tokens changed, at a cost that
follows the changes, not the answers it holds.

Database triggers append a row for every token row whose answer may change (a new access token, generation or
state; a deletion) in the writer's own transaction: the engine's QuerySet.update() calls, a cascade and raw SQL
alike. Each process reads the rows past its position (LogPosition) at every report.

The classic gap: PostgreSQL hands out sequence numbers when a transaction writes, not when it commits, so a
reader may see 12 before 11 commits (SQLite writes one transaction at a time: its numbers are committed in
order). A number below the highest seen and not yet seen is a gap, read again at every report until it appears.
A gap is closed without its row once PostgreSQL says that every transaction that could hold it has ended: the
gap was noticed in a snapshot whose xmax (the next transaction id) bounds its writer's id (the writer had its id
from the UPDATE or DELETE that fired the trigger, before it took its number; numbers are taken in time order, the
identity column's sequence caching one at a time, PostgreSQL's default), and a later snapshot's xmin (the oldest
transaction still running) passing that bound means the writer rolled back. No time bound guesses how long a
writer may take. Where the database cannot say (SQLite, where no gap should
ever appear), a gap older than GAP_WAIT makes the process start afresh.

A process starting (or starting afresh) does not know which numbers below the highest were still being
written: until every transaction that was running then has ended (the same xmin test), it reads the versions of
every token it holds an answer of at each report, as before the log, and only then relies on the log alone.
Pruning deletes a prefix of the log and keeps its newest row, so a process whose position (or one of whose
gaps) falls below the oldest row left knows it may have missed a change: it starts afresh.
"""

from dataclasses import dataclass, field
from datetime import timedelta

from django.db import connection as default_connection
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Max
from django.utils import timezone

from connections.models import AnswerVersion, OAuthToken, TokenChange

KEEP_SECONDS = 60  # a row is kept this long at least: a process that has not read it by then starts afresh
GAP_WAIT = 10.0  # seconds (monotonic): where the database cannot say that a gap's writer ended
MAX_GAPS = 10_000  # more open gaps than this (a writer's transaction held open for long): start afresh
# Columns whose change may change an answer from memory (connections.endpoint.issuing.IssuedToken and the
# versions a cached answer is kept under).
WATCHED_COLUMNS = (
    "generation", "state", "access_token", "token_type", "scope", "extra", "expires_at", "connection_id", "user_id",
)  # fmt: skip
TRIGGERS = ("connections_token_changed", "connections_token_deleted")
_FUNCTION = "connections_token_change_log"


def _tables() -> tuple[str, str]:
    return OAuthToken._meta.db_table, TokenChange._meta.db_table


def _postgresql_triggers() -> list[str]:
    tokens, changes = _tables()
    old = ", ".join(f"OLD.{name}" for name in WATCHED_COLUMNS)
    new = ", ".join(f"NEW.{name}" for name in WATCHED_COLUMNS)
    # Only the models' own table and column names go into the text.
    return [
        f"CREATE OR REPLACE FUNCTION {_FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "  # noqa: S608
        f"INSERT INTO {changes} (token_id, changed_at) VALUES (OLD.id, clock_timestamp()); RETURN NULL; END $$",
        # A row-level WHEN is checked without calling the function: the engine's many updates of leases and due
        # times cost nothing more.
        f"CREATE OR REPLACE TRIGGER {TRIGGERS[0]} AFTER UPDATE ON {tokens} FOR EACH ROW "
        f"WHEN (({old}) IS DISTINCT FROM ({new})) EXECUTE FUNCTION {_FUNCTION}()",
        f"CREATE OR REPLACE TRIGGER {TRIGGERS[1]} AFTER DELETE ON {tokens} FOR EACH ROW EXECUTE FUNCTION {_FUNCTION}()",
    ]


def _sqlite_triggers() -> list[str]:
    tokens, changes = _tables()
    changed = " OR ".join(f"OLD.{name} IS NOT NEW.{name}" for name in WATCHED_COLUMNS)
    # Django's own text format for a datetime, in UTC.
    insert = f"INSERT INTO {changes} (token_id, changed_at) VALUES (OLD.id, strftime('%Y-%m-%d %H:%M:%f', 'now'));"  # noqa: S608
    return [
        f"CREATE TRIGGER IF NOT EXISTS {TRIGGERS[0]} AFTER UPDATE ON {tokens} FOR EACH ROW WHEN {changed} "
        f"BEGIN {insert} END",
        f"CREATE TRIGGER IF NOT EXISTS {TRIGGERS[1]} AFTER DELETE ON {tokens} FOR EACH ROW BEGIN {insert} END",
    ]


def triggers_install(connection: BaseDatabaseWrapper) -> None:
    """Create (or replace) the triggers: by migration 0022, and by any later migration that makes SQLite rebuild
    the token table (which drops its triggers)."""
    statements = {"postgresql": _postgresql_triggers, "sqlite": _sqlite_triggers}[connection.vendor]()
    with connection.cursor() as cursor:
        for statement in statements:
            cursor.execute(statement)


def triggers_remove(connection: BaseDatabaseWrapper) -> None:
    tokens, _ = _tables()
    with connection.cursor() as cursor:
        for trigger in TRIGGERS:
            cursor.execute(
                f"DROP TRIGGER IF EXISTS {trigger}" + (f" ON {tokens}" if connection.vendor != "sqlite" else "")
            )
        if connection.vendor == "postgresql":
            cursor.execute(f"DROP FUNCTION IF EXISTS {_FUNCTION}()")


def triggers_present(connection: BaseDatabaseWrapper = default_connection) -> bool:
    """Both triggers exist on the token table. A process that finds them missing (a SQLite table rebuilt by a
    later migration) reads every version at each report, as before the log: slower, never wrong."""
    tokens, _ = _tables()
    if connection.vendor == "postgresql":
        sql = "SELECT count(*) FROM pg_trigger WHERE tgrelid = %s::regclass AND tgname IN (%s, %s)"
    else:
        sql = "SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND tbl_name = %s AND name IN (%s, %s)"
    with connection.cursor() as cursor:
        cursor.execute(sql, [tokens, *TRIGGERS])
        return cursor.fetchone()[0] == len(TRIGGERS)


def snapshot_sql(connection: BaseDatabaseWrapper) -> str | None:
    """(xmin, xmax) of the statement's own snapshot, as a SELECT list; None where the database has no such thing."""
    if connection.vendor != "postgresql":
        return None
    return (
        "pg_snapshot_xmin(pg_current_snapshot())::text::bigint, pg_snapshot_xmax(pg_current_snapshot())::text::bigint"
    )


TokenVersion = tuple[int, str]  # a token row's (generation, state)


@dataclass
class ReportRead:
    identity: int
    tokens: dict[int, TokenVersion]  # of the tokens asked for; a token deleted is left out
    log: "LogRead | None"  # None: the log was not read


def report_read(token_ids: set[int], wanted: tuple[int | None, list[int]] | None) -> ReportRead:
    """With one SELECT (one snapshot): the identity version, these tokens' versions and, unless wanted is None,
    the log's rows past wanted's position and in its gaps, its bounds, and (PostgreSQL) the snapshot's xmin/xmax."""
    quote, ids = default_connection.ops.quote_name, sorted(token_ids)
    versions, changes = quote(AnswerVersion._meta.db_table), quote(TokenChange._meta.db_table)
    # Only the models' own table and column names go into the text; every value is a parameter.
    parts = [f"SELECT 0, {quote('value')}, NULL, NULL FROM {versions} WHERE {quote('name')} = %s"]  # noqa: S608
    params: list[int | str] = [AnswerVersion.IDENTITY]
    if ids:
        columns = ", ".join(quote(name) for name in ("id", "generation", "state"))
        placeholders = ", ".join(["%s"] * len(ids))
        parts.append(f"SELECT 1, {columns} FROM {quote(OAuthToken._meta.db_table)} WHERE id IN ({placeholders})")  # noqa: S608
        params += ids
    if wanted is not None:
        after, gaps = wanted
        parts.append(f"SELECT 2, MIN(seq), MAX(seq), NULL FROM {changes}")  # noqa: S608
        if after is not None:
            in_gaps = f" OR seq IN ({', '.join(['%s'] * len(gaps))})" if gaps else ""
            parts.append(f"SELECT 3, seq, token_id, NULL FROM {changes} WHERE seq > %s{in_gaps}")  # noqa: S608
            params += [after, *gaps]
        if (snapshot := snapshot_sql(default_connection)) is not None:
            parts.append(f"SELECT 4, {snapshot}, NULL")
    with default_connection.cursor() as cursor:
        cursor.execute(" UNION ALL ".join(parts), params)
        rows = cursor.fetchall()
    read = ReportRead(identity=0, tokens={}, log=None if wanted is None else LogRead())
    for kind, first, second, third in rows:
        if kind == 0:
            read.identity = first
        elif kind == 1:
            read.tokens[first] = (second, third)
        elif read.log is not None and kind == 2:
            read.log.lowest, read.log.highest = first, second
        elif read.log is not None and kind == 3:
            read.log.rows.append((first, second))
        elif read.log is not None:
            read.log.xmin, read.log.xmax = first, second
    return read


def token_changes_prune(*, keep_seconds: float = KEEP_SECONDS) -> int:
    """Delete the rows older than keep_seconds, as a prefix of the log that stops below the newest of them (so the
    log is never emptied: a process finds its position by the rows left). How many were deleted."""
    cutoff = timezone.now() - timedelta(seconds=keep_seconds)
    newest_old = TokenChange.objects.filter(changed_at__lt=cutoff).aggregate(seq=Max("seq"))["seq"]
    if newest_old is None:
        return 0
    deleted, _ = TokenChange.objects.filter(seq__lt=newest_old).delete()
    return deleted


@dataclass
class LogRead:
    """What one report read of the log, in one snapshot."""

    rows: list[tuple[int, int]] = field(default_factory=list)  # (seq, token id) past the position, and gaps seen
    lowest: int | None = None  # the oldest row left after pruning
    highest: int | None = None
    xmin: int | None = None  # PostgreSQL: the oldest transaction still running
    xmax: int | None = None  # PostgreSQL: the next transaction id


@dataclass
class LogPosition:
    """Where one process is in the log: the highest number seen, the numbers below it not seen yet (gaps: with the
    xmax of the snapshot that found each missing, and clock() then), and whether the log alone can be trusted."""

    after: int | None = None  # None: not known yet (a start)
    gaps: dict[int, tuple[int | None, float]] = field(default_factory=dict)
    settle_at: int | None = None  # the transactions running at the start: those below this id
    settled: bool = False

    def wanted(self) -> tuple[int | None, list[int]]:
        """What the next report reads: the rows past `after` and the gaps (after None: only the log's bounds)."""
        return self.after, sorted(self.gaps)

    def advance(self, read: LogRead, now: float) -> tuple[set[int], bool]:
        """Take in one report's read: the ids of the tokens that changed, and whether to start afresh (a change may
        have been missed)."""
        if self.after is None:
            # An empty log was never written (pruning keeps its newest row): every row to come is past 0. (A test's
            # flush empties it without resetting the numbers: the first row then looks pruned, and the process
            # starts afresh once more.)
            self.after, self.settle_at = read.highest or 0, read.xmax
            self._settle(read)
            return set(), False
        if read.lowest is not None and read.lowest > self.after + 1:
            return set(), True  # rows past the position were pruned before this process read them
        seen = {seq for seq, _ in read.rows}
        for seq in seen:
            self.gaps.pop(seq, None)
        top = max(seen, default=self.after)
        if top - self.after - len(seen) > MAX_GAPS:
            return set(), True  # numbers skipped by the thousand (a sequence moved by hand): not worth a gap each
        for missing in range(self.after + 1, top + 1):
            if missing not in seen:
                self.gaps[missing] = (read.xmax, now)
        self.after = max(self.after, top)
        for gap, (horizon, noticed) in list(self.gaps.items()):
            if read.lowest is not None and gap < read.lowest:
                return set(), True  # pruned: it may have been written and never read
            if horizon is not None and read.xmin is not None:
                if read.xmin >= horizon:
                    del self.gaps[gap]  # every transaction that could hold it has ended: it rolled back
            elif now - noticed > GAP_WAIT:
                return set(), True
        if len(self.gaps) > MAX_GAPS:
            return set(), True
        self._settle(read)
        return {token_id for _, token_id in read.rows}, False

    def _settle(self, read: LogRead) -> None:
        # SQLite: no transaction can be writing a number below the highest committed one.
        if read.xmin is None or self.settle_at is None or read.xmin >= self.settle_at:
            self.settled = True
