"""The token change log (connections.cache.change_log) and the bounded store of answers
(connections.cache.answers): what the web processes learn changes from, instead of re-reading every token they
hold an answer of.

Most tests here commit for real (transaction=True): a process trusts the log only once every transaction running
when it started has ended, which the test's own open transaction never would; and the gap case needs a second
database connection holding a transaction open while others commit.
"""

import dataclasses
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import pytest
from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import F
from django.utils import timezone

from connections import tasks
from connections.cache import answers, change_log, token_cache
from connections.models import Connection, OAuthToken, TokenChange, TokenState
from tests.conftest import get_token, shared_token
from tests.connections.cache.test_token_cache import answered_by, warm


def logged() -> list[int]:
    """The token ids the log holds, in order."""
    return list(TokenChange.objects.order_by("seq").values_list("token_id", flat=True))


def key_of(bot, connection: Connection) -> tuple[str, str]:
    return (bot.key.key_id, connection.slug)


def held(bot, connection: Connection) -> bool:
    return key_of(bot, connection) in token_cache._process().answers


def bump(token: OAuthToken) -> None:
    """A new generation, as a refresh writes it: QuerySet.update, which sends no signal."""
    OAuthToken.objects.filter(pk=token.pk).update(generation=F("generation") + 1)


def reported_until_the_log_is_trusted(other: OAuthToken) -> None:
    """The process's first reports: the log holds a row (a test's flush empties it), and the process has found its
    position and seen every transaction of its start end."""
    bump(other)
    for _ in range(3):
        assert token_cache.report()
    process = token_cache._process()
    assert process.log_enabled and process.log.after is not None and process.log.settled


@contextmanager
def another_session() -> Iterator[BaseDatabaseWrapper]:
    """A second connection to the test database, its transaction left open until the test commits or rolls back."""
    session = connections.create_connection("default")
    session.set_autocommit(False)
    try:
        yield session
    finally:
        session.rollback()
        session.close()


def bump_in(session: BaseDatabaseWrapper, token: OAuthToken) -> None:
    with session.cursor() as cursor:
        cursor.execute("UPDATE connections_oauthtoken SET generation = generation + 1 WHERE id = %s", [token.pk])


# --- what the triggers write ----------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_every_write_that_may_change_an_answer_is_logged_and_no_other(bot_connection, authorized_connection):
    token, other = shared_token(bot_connection), shared_token(authorized_connection)
    start = logged()
    # a lease taken and moved on, as the engine's claims do: nothing an answer holds
    OAuthToken.objects.filter(pk=token.pk).update(lease_owner="worker-1", next_refresh_at=timezone.now())
    assert logged() == start
    # a new generation, a state, a new access token written by QuerySet.update (no signal), and a deleted row
    bump(token)
    OAuthToken.objects.filter(pk=other.pk).update(state=TokenState.REFRESH_FAILING)
    OAuthToken.objects.filter(pk=token.pk).update(access_token="a-new-one")
    authorized_connection.delete()  # the token goes with its connection, by cascade
    assert logged() == [*start, token.pk, other.pk, token.pk, other.pk]


def test_the_sqlite_triggers_log_what_the_postgresql_ones_do():
    # The test run's database is PostgreSQL; the embedded default's triggers run here on a table of the same columns.
    database = sqlite3.connect(":memory:")
    columns = ", ".join(f"{name} TEXT" for name in change_log.WATCHED_COLUMNS if name != "generation")
    database.execute(
        f"CREATE TABLE connections_oauthtoken (id INTEGER PRIMARY KEY, generation INTEGER, lease_owner TEXT, {columns})"
    )
    log_columns = "seq INTEGER PRIMARY KEY AUTOINCREMENT, token_id INTEGER, changed_at TEXT"
    database.execute(f"CREATE TABLE connections_tokenchange ({log_columns})")
    for statement in change_log._sqlite_triggers():
        database.execute(statement)
    database.executemany(
        "INSERT INTO connections_oauthtoken (id, generation, state) VALUES (?, 1, 'active')", [(1,), (2,)]
    )
    database.execute("UPDATE connections_oauthtoken SET lease_owner = 'worker-1'")  # not logged
    database.execute("UPDATE connections_oauthtoken SET generation = 2 WHERE id = 2")
    database.execute("UPDATE connections_oauthtoken SET access_token = 'new' WHERE id = 1")
    database.execute("UPDATE connections_oauthtoken SET state = 'refresh_failing' WHERE id = 2")
    database.execute("DELETE FROM connections_oauthtoken WHERE id = 1")
    rows = database.execute("SELECT seq, token_id, changed_at FROM connections_tokenchange ORDER BY seq").fetchall()
    assert [(seq, token_id) for seq, token_id, _ in rows] == [(1, 2), (2, 1), (3, 2), (4, 1)]
    assert all(changed_at.startswith(timezone.now().strftime("%Y-%m-%d")) for _, _, changed_at in rows)


@pytest.mark.django_db
def test_beat_prunes_the_rows_past_a_minute_but_the_newest(bot_connection):
    # given three changes two minutes old, and one just now
    token = shared_token(bot_connection)
    for _ in range(3):
        bump(token)
    TokenChange.objects.update(changed_at=timezone.now() - timedelta(minutes=2))
    old = len(logged())
    bump(token)
    # when beat's job runs
    assert tasks.token_changes_prune() == old - 1
    # then the newest old row is left (a process finds its position by it), and the new one
    assert logged() == [token.pk, token.pk]


# --- a process reading the log --------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_change_committed_late_with_a_lower_number_is_still_seen(bot_connection, authorized_connection, bot):
    # given an answer held of the connection's token, and a process that trusts the log
    token, other = shared_token(bot_connection), shared_token(authorized_connection)
    warm(bot, bot_connection)
    reported_until_the_log_is_trusted(other)
    # when one session changes the token and keeps its transaction open (its log row has the lower number), while
    # another changes a second token and commits (the higher number), and the process reports
    with another_session() as slow:
        bump_in(slow, token)
        bump(other)
        assert token_cache.report()
        # then the change not committed yet is a gap, and the answer still good: the database still holds it
        assert len(token_cache._process().log.gaps) == 1
        assert held(bot, bot_connection)
        assert get_token(bot.raw_key, bot_connection.slug).status_code == 200 and answered_by()[-1] == "memory"
        # when the slow session commits, below the position the process has already reached
        slow.commit()
    assert token_cache.report()
    # then the next report read the gap: the answer is gone, and the full path answers from the new generation
    assert not held(bot, bot_connection)
    assert get_token(bot.raw_key, bot_connection.slug).status_code == 200 and answered_by()[-1] == "full path"
    assert token_cache._process().tokens[token.pk][0] == token.generation + 1


@pytest.mark.django_db(transaction=True)
def test_the_gap_of_a_change_rolled_back_is_closed_and_the_answer_kept(bot_connection, authorized_connection, bot):
    token, other = shared_token(bot_connection), shared_token(authorized_connection)
    warm(bot, bot_connection)
    reported_until_the_log_is_trusted(other)
    with another_session() as slow:
        bump_in(slow, token)
        bump(other)
        assert token_cache.report()
        assert len(token_cache._process().log.gaps) == 1
        slow.rollback()
    # once PostgreSQL says the transaction that held the number has ended, the gap is closed: not read forever
    assert token_cache.report()
    assert token_cache._process().log.gaps == {}
    assert held(bot, bot_connection)


@pytest.mark.django_db(transaction=True)
def test_a_process_whose_position_was_pruned_starts_afresh(bot_connection, authorized_connection, bot, caplog):
    # given a process that trusts the log, holding an answer
    token, other = shared_token(bot_connection), shared_token(authorized_connection)
    warm(bot, bot_connection)
    reported_until_the_log_is_trusted(other)
    # when the token changes, then another, and the log is pruned past the process's position before it reports
    bump(token)
    bump(other)
    assert change_log.token_changes_prune(keep_seconds=0) == 2  # the newest row is kept
    assert logged() == [other.pk]
    assert token_cache.report()
    # then it starts afresh: no answer kept, its position found again from the log
    assert not held(bot, bot_connection)
    assert token_cache._process().log.after is None
    assert "starts afresh" in caplog.text
    assert get_token(bot.raw_key, bot_connection.slug).status_code == 200 and answered_by()[-1] == "full path"
    for _ in range(2):
        assert token_cache.report()
    assert token_cache._process().log.settled
    assert get_token(bot.raw_key, bot_connection.slug).status_code == 200 and answered_by()[-1] == "memory"


@pytest.mark.django_db(transaction=True)
def test_an_answer_read_before_a_change_the_log_has_delivered_is_not_kept(bot_connection, authorized_connection, bot):
    # given a process that trusts the log, and a slow request that has read the token and not kept its answer yet
    token, other = shared_token(bot_connection), shared_token(authorized_connection)
    warm(bot, bot_connection)
    reported_until_the_log_is_trusted(other)
    process = token_cache._process()
    slow = dataclasses.replace(process.answers[key_of(bot, bot_connection)], read_at=token_cache.clock())
    process.drop(key_of(bot, bot_connection))
    # when another process writes a new access token alone (the generation as it was), and a report reads it
    OAuthToken.objects.filter(pk=token.pk).update(access_token="rotated-meanwhile")
    assert token_cache.report()
    # and only then the slow request keeps its answer
    token_cache.remember(slow)
    # then it is not kept (its token's versions would not tell), and the next request has the new token
    assert not held(bot, bot_connection)
    assert get_token(bot.raw_key, bot_connection.slug).json()["access_token"] == "rotated-meanwhile"


# --- the bounded store ----------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_past_its_bound_the_store_drops_the_answer_used_longest_ago(bot_connection, bot, monkeypatch):
    # given a store of three answers, A, B and C kept in that order, and A used since
    monkeypatch.setattr(token_cache, "MAX_ANSWERS", 3)
    warm(bot, bot_connection)
    template = token_cache._process().answers[key_of(bot, bot_connection)]
    token_cache.reset()
    kept = [dataclasses.replace(template, key_id=name) for name in ("A", "B", "C", "D")]
    for cached in kept[:3]:
        token_cache.remember(cached)
    assert token_cache.find("A", bot_connection.slug) is not None
    # when a fourth is kept
    token_cache.remember(kept[3])
    # then B goes, the least recently used; the others stay, each still indexed under its token
    process = token_cache._process()
    assert list(process.answers) == [(name, bot_connection.slug) for name in ("C", "A", "D")]
    assert process.by_token == {template.token_id: set(process.answers)}


def test_a_tokens_versions_are_kept_only_while_an_answer_of_it_is():
    store = answers.AnswerStore()

    @dataclasses.dataclass(frozen=True)
    class Answer:
        connection: str

    @dataclasses.dataclass(frozen=True)
    class Held:
        key_id: str
        answer: Answer
        token_id: int
        token_version: tuple[int, str]
        read_at: float = 0.0

        @property
        def answer_key(self) -> tuple[str, ...]:
            return (self.key_id, self.answer.connection)

    for number in range(5):
        assert store.keep(Held(f"key-{number}", Answer(f"connection-{number}"), number, (1, "active")), limit=2, now=1)
    assert list(store.answers) == [("key-3", "connection-3"), ("key-4", "connection-4")]
    assert set(store.tokens) == {3, 4} and set(store.by_token) == {3, 4}
    store.token_forget(3)
    assert list(store.answers) == [("key-4", "connection-4")] and set(store.tokens) == {4}
