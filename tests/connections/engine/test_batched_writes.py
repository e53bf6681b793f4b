"""A worker batch's refresh results written several to a statement (connections.engine.store.fenced_updates, through
outcomes.ResultBatch): each row is still fenced on its lease owner and generation, a row whose fence was lost is
reported as not written (RETURNING) and left as it was while the others of its statement are written, and the
statement is PostgreSQL's and SQLite's alike."""

from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.db import OperationalError, connections
from django.db.backends.sqlite3.base import DatabaseWrapper as SQLiteWrapper
from django.utils import timezone

from connections.engine import batch as refresh_batch
from connections.engine import lease, outcomes, refresh, store
from connections.models import AuditEvent, OAuthToken
from connections.oauth.client import TokenResponse
from tests.support.waiting import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

SQLITE = "batched_writes_sqlite"


@pytest.fixture(autouse=True)
def fresh_refresh_threads(monkeypatch) -> None:
    """A thread pool and provider slots made for this test's settings (a process makes each once)."""
    monkeypatch.setattr(refresh_batch, "_pool", None)
    monkeypatch.setattr(refresh_batch, "_provider_slots", {})


@pytest.fixture
def sqlite_database() -> Iterator[str]:
    """An in-memory SQLite database holding the token table alone (foreign keys off: no connection rows), under
    an alias of its own: the embedded default's dialect, next to the tests' PostgreSQL."""
    # A connection of its own, outside settings.DATABASES (which the test run would make a database of for every
    # test), known to this thread's connection handler for the ORM's using().
    defaults = {
        key: connections["default"].settings_dict[key] for key in ("ATOMIC_REQUESTS", "AUTOCOMMIT", "TIME_ZONE")
    }
    sqlite = SQLiteWrapper(
        {**defaults, "NAME": ":memory:", "OPTIONS": {}, "CONN_MAX_AGE": 0, "CONN_HEALTH_CHECKS": False, "TEST": {}},
        alias=SQLITE,
    )
    connections[SQLITE] = sqlite
    with sqlite.schema_editor() as editor:
        editor.create_model(OAuthToken)
    with sqlite.cursor() as cursor:
        cursor.execute("PRAGMA foreign_keys = OFF")  # after the schema editor, which turns them on as it leaves
    try:
        yield SQLITE
    finally:
        sqlite.close()
        del connections[SQLITE]


def leased_rows(using: str, connection_ids: list[int], owner: str) -> list[OAuthToken]:
    """Tokens whose lease `owner` holds, at generation 1."""
    lease_until = timezone.now() + timedelta(minutes=1)
    rows = [
        OAuthToken(
            connection_id=connection_id,
            access_token="old-access",
            refresh_token="old-refresh",
            expires_at=timezone.now() + timedelta(minutes=5),
            lease_owner=owner,
            lease_expires_at=lease_until,
            generation=1,
        )
        for connection_id in connection_ids
    ]
    return OAuthToken.objects.using(using).bulk_create(rows)  # no save signal: it would read the connection


def new_values(number: int) -> dict[str, object]:
    return {
        "access_token": f"new-access-{number}",
        "refresh_token": f"new-refresh-{number}",
        "expires_at": timezone.now() + timedelta(hours=1),
        "lease_owner": "",
        "lease_expires_at": None,
        "generation": 2,
    }


@pytest.fixture(params=["postgresql", "sqlite"])
def database(request, make_connection) -> str:
    """The alias to write to: the tests' PostgreSQL, or the SQLite one."""
    return request.getfixturevalue("sqlite_database") if request.param == "sqlite" else "default"


@pytest.mark.parametrize("many_a_statement", [True, False], ids=["many rows a statement", "an older SQLite's"])
def test_a_row_whose_fence_was_lost_is_reported_and_left_while_the_others_of_the_statement_are_written(
    database, make_connection, many_a_statement, monkeypatch
):
    # (an SQLite older than 3.35, which has no UPDATE ... RETURNING, writes row by row: the same promises hold)
    monkeypatch.setattr(store, "many_rows_a_statement", lambda connection: many_a_statement)
    # given four tokens leased by one batch
    ids = [make_connection(register=False).pk for _ in range(4)] if database == "default" else [1, 2, 3, 4]
    kept, taken_over, reauthorized, kept_too = leased_rows(database, ids, "batch")
    # and, meanwhile, one's lease was taken by someone else, and another got a new generation (the lease owner
    # left as it was: the generation alone must hold the fence)
    OAuthToken.objects.using(database).filter(pk=taken_over.pk).update(lease_owner="a-bot")
    OAuthToken.objects.using(database).filter(pk=reauthorized.pk).update(generation=2, access_token="reauthorized")
    # when the batch's four results are written, in one statement (they share their columns)
    rows = [
        (store.Fence(token.pk, "batch", 1), new_values(token.pk))
        for token in (kept, taken_over, reauthorized, kept_too)
    ]
    written = store.fenced_updates(rows, using=database)
    # then the two rows still as leased are written, and only they are reported
    assert written == {kept.pk, kept_too.pk}
    tokens = OAuthToken.objects.using(database).in_bulk()
    for token in (kept, kept_too):
        after = tokens[token.pk]
        assert (after.access_token, after.refresh_token) == (f"new-access-{token.pk}", f"new-refresh-{token.pk}")
        assert (after.generation, after.lease_owner, after.lease_expires_at) == (2, "", None)
    # and the two whose fence was lost hold what the others wrote, not this batch's result
    assert (tokens[taken_over.pk].access_token, tokens[taken_over.pk].lease_owner) == ("old-access", "a-bot")
    assert tokens[taken_over.pk].generation == 1
    assert (tokens[reauthorized.pk].access_token, tokens[reauthorized.pk].generation) == ("reauthorized", 2)
    assert tokens[reauthorized.pk].refresh_token == "old-refresh"


def test_rows_that_write_different_columns_are_each_written_with_their_own(database, make_connection):
    # given two leased tokens, one of whose results leaves the refresh token as it is (no rotation)
    ids = [make_connection(register=False).pk for _ in range(2)] if database == "default" else [1, 2]
    rotated, kept = leased_rows(database, ids, "batch")
    without_rotation = new_values(kept.pk)
    del without_rotation["refresh_token"]
    # when both are written
    written = store.fenced_updates(
        [
            (store.Fence(rotated.pk, "batch", 1), new_values(rotated.pk)),
            (store.Fence(kept.pk, "batch", 1), without_rotation),
        ],
        using=database,
    )
    # then each row got exactly its own columns
    assert written == {rotated.pk, kept.pk}
    tokens = OAuthToken.objects.using(database).in_bulk()
    assert tokens[rotated.pk].refresh_token == f"new-refresh-{rotated.pk}"
    assert (tokens[kept.pk].access_token, tokens[kept.pk].refresh_token) == (f"new-access-{kept.pk}", "old-refresh")


def due(make_connection, count: int) -> list[OAuthToken]:
    now = timezone.now()
    return [
        OAuthToken.objects.create(
            connection=make_connection(register=False),
            access_token="old-access",
            refresh_token="old-refresh",
            expires_at=now + timedelta(minutes=1),
            next_refresh_at=now - timedelta(seconds=1),
        )
        for _ in range(count)
    ]


def answer(token: OAuthToken) -> TokenResponse:
    return TokenResponse(
        access_token=f"new-access-{token.pk}",
        refresh_token=f"new-refresh-{token.pk}",
        id_token="",
        token_type="Bearer",
        scope="read",
        expires_in=3600,
        extra={},
    )


def test_a_batch_writes_its_results_and_drops_the_one_whose_token_was_authorized_again_meanwhile(
    make_connection, settings, monkeypatch
):
    # given a batch of four due tokens, one of which is authorized again while its provider call is under way
    settings.REFRESH_CONCURRENCY = 4
    tokens = due(make_connection, 4)
    reauthorized = tokens[2]
    dropped: list[int] = []

    def provider(connection, token):
        if token.pk == reauthorized.pk:
            OAuthToken.objects.filter(pk=token.pk).update(generation=5, access_token="reauthorized", lease_owner="")
        return answer(token)

    monkeypatch.setattr(refresh, "_fetch_new_token", provider)
    monkeypatch.setattr(outcomes, "token_values_drop", lambda connection, values, why: dropped.append(values))
    # when the worker refreshes the batch
    refresh_batch.tokens_refresh([(token.pk, token.generation) for token in tokens], None)
    # then the three others hold their new tokens, their leases given back
    after = OAuthToken.objects.in_bulk()
    for token in tokens:
        if token.pk != reauthorized.pk:
            assert (after[token.pk].access_token, after[token.pk].generation) == (f"new-access-{token.pk}", 2)
            assert (after[token.pk].refresh_token, after[token.pk].lease_owner) == (f"new-refresh-{token.pk}", "")
    # and the one authorized again keeps its new grant; the late result was dropped, not stored
    assert (after[reauthorized.pk].access_token, after[reauthorized.pk].generation) == ("reauthorized", 5)
    assert dropped == [
        [(f"new-refresh-{reauthorized.pk}", "refresh_token"), (f"new-access-{reauthorized.pk}", "access_token")]
    ]
    # and only the results stored are audited as refreshed
    assert AuditEvent.objects.filter(action="token_refresh", outcome="success").count() == 3


def test_results_that_come_in_while_a_write_is_under_way_are_written_together_by_the_next(
    make_connection, settings, monkeypatch
):
    # given a batch of four due tokens, whose first result's write holds until the three others have come in
    settings.REFRESH_CONCURRENCY = 4
    tokens = due(make_connection, 4)
    monkeypatch.setattr(refresh, "_fetch_new_token", lambda connection, token: answer(token))
    statements: list[int] = []
    real, batches = store.fenced_updates, []

    class Recorded(outcomes.ResultBatch):
        def __init__(self, *args: object) -> None:
            super().__init__(*args)  # type: ignore[arg-type]
            batches.append(self)

    monkeypatch.setattr(outcomes, "ResultBatch", Recorded)

    def write(rows, using=None):
        if not statements:
            wait_for(lambda: len(batches[0]._added) == 3, 10, "the three other results to come in")
        statements.append(len(rows))
        return real(rows, using)

    monkeypatch.setattr(outcomes, "fenced_updates", write)
    # when the worker refreshes the batch
    refresh_batch.tokens_refresh([(token.pk, token.generation) for token in tokens], None)
    # then the first result was written alone and the three that came in meanwhile with one statement
    assert statements == [1, 3]
    assert sorted(OAuthToken.objects.values_list("generation", flat=True)) == [2, 2, 2, 2]


def test_a_batch_write_whose_answer_was_lost_counts_the_rows_it_wrote(make_connection, settings, monkeypatch):
    # given two due tokens, and a database whose first answer to the batch's write is lost after it committed
    settings.REFRESH_CONCURRENCY = 1
    tokens = due(make_connection, 2)
    monkeypatch.setattr(refresh, "_fetch_new_token", lambda connection, token: answer(token))
    dropped: list[object] = []
    monkeypatch.setattr(outcomes, "token_values_drop", lambda *args: dropped.append(args))
    real, calls = store.fenced_updates, []

    def write_then_lose_the_answer(rows, using=None):
        calls.append(len(rows))
        written = real(rows, using)
        if len(calls) == 1:
            raise OperationalError("server closed the connection unexpectedly")
        return written

    monkeypatch.setattr(outcomes, "fenced_updates", write_then_lose_the_answer)
    # when the worker refreshes them
    refresh_batch.tokens_refresh([(token.pk, token.generation) for token in tokens], None)
    # then the result the database took is counted as stored (not dropped as a lost fence), and audited
    assert dropped == []
    after = OAuthToken.objects.in_bulk()
    assert [after[token.pk].access_token for token in tokens] == [f"new-access-{token.pk}" for token in tokens]
    assert AuditEvent.objects.filter(action="token_refresh", outcome="success").count() == 2
    assert lease.token_rows().filter(lease_owner="").count() == 2


def test_an_unexpected_error_in_a_batch_write_drops_no_result_of_its_statement(make_connection, settings, monkeypatch):
    # given a batch of three due tokens: the first result is written alone while the two others come in, and the
    # write of those two meets an unexpected error (a bug, not the database)
    settings.REFRESH_CONCURRENCY = 3
    tokens = due(make_connection, 3)
    monkeypatch.setattr(refresh, "_fetch_new_token", lambda connection, token: answer(token))
    dropped: list[object] = []
    monkeypatch.setattr(outcomes, "token_values_drop", lambda *args: dropped.append(args))
    real, statements, batches = store.fenced_updates, [], []

    class Recorded(outcomes.ResultBatch):
        def __init__(self, *args: object) -> None:
            super().__init__(*args)  # type: ignore[arg-type]
            batches.append(self)

    def write_then_break(rows, using=None):
        statements.append(len(rows))
        if len(statements) == 1:
            wait_for(lambda: len(batches[0]._added) == 2, 10, "the two other results to come in")
            return real(rows, using)
        raise ValueError("a bug")

    monkeypatch.setattr(outcomes, "ResultBatch", Recorded)
    monkeypatch.setattr(outcomes, "fenced_updates", write_then_break)
    # when the worker refreshes the batch (each token's unexpected error is logged, not raised)
    refresh_batch.tokens_refresh([(token.pk, token.generation) for token in tokens], None)
    # then the first is stored, and neither result the error met is taken for one whose fence was lost: none is
    # dropped, both tokens keep what they held
    assert statements == [1, 2] and dropped == []
    after = OAuthToken.objects.in_bulk()
    assert [after[token.pk].access_token for token in tokens].count("old-access") == 2
    assert sum(after[token.pk].generation for token in tokens) == 4
    assert AuditEvent.objects.filter(action="token_refresh").count() == 1
