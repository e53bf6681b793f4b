"""The connection list: the status filter (in the database, agreeing with the status column), who uses each
connection, when a bot last got a token of it (moved by the batched audit of token requests), the short token
type labels, and no query per row."""

import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.db import connection as db
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from connections import selectors
from connections.audit import events as audit
from connections.cache import token_cache
from connections.models import AuditEvent, Connection, ConnectionStatus
from connections.web.forms import ConnectionForm
from tests.conftest import get_token
from tests.connections.admin.test_connection_admin import _edit_form
from tests.connections.conftest import stored_token

pytestmark = pytest.mark.django_db

LIST = "/admin/connections/connection/"


def test_the_status_filter_yields_exactly_the_connections_whose_status_column_says_so(
    manager_client, every_kind_of_connection
):
    # given connections of both token types in every status
    made = every_kind_of_connection
    column = {connection.pk: selectors.connection_status(connection) for connection in made.values()}
    assert {status.code for status in column.values()} == set(ConnectionStatus)  # every status is tried
    assert column[made["shared test failed"].pk].label == "Not connected — last attempt failed"
    for code in ConnectionStatus:
        # when the administrator filters the list by that status
        response = manager_client.get(LIST, {"status": code})
        # then it lists exactly the connections whose status column says so, and the column says it
        listed = {connection.pk for connection in response.context["cl"].result_list}
        assert listed == {pk for pk, status in column.items() if status.code == code}, code
        page = response.content.decode()
        for pk in listed:
            assert str(column[pk]).split(",")[0] in page
    # and the dashboard's counts are the same statuses
    counts = selectors.connection_status_counts()
    assert counts == {code: sum(status.code == code for status in column.values()) for code in ConnectionStatus}


def test_the_status_filter_filters_in_the_database(manager_client, every_kind_of_connection):
    made = every_kind_of_connection
    with CaptureQueriesContext(db) as queries:
        response = manager_client.get(LIST, {"status": "reauthorization_required"})
    assert list(response.context["cl"].result_list) == [made["shared reauthorization required"]]
    # the page's rows come filtered from the database, not picked in Python
    rows = [query["sql"] for query in queries if query["sql"].startswith('SELECT "connections_connection"."id"')]
    assert len(rows) == 1 and "= 'reauthorization_required'" in rows[0], rows


def test_an_unknown_status_is_refused_as_the_admin_refuses_a_bad_filter(manager_client, make_connection):
    make_connection(register=False)
    response = manager_client.get(LIST, {"status": "sleeping"})
    assert response.status_code == 302 and response["Location"].endswith("?e=1")


def _listed_connection(make_connection, make_user, number: int) -> Connection:
    connection = make_connection(register=False, token_type="user_specific" if number % 2 else "shared")
    role = Group.objects.create(name=f"Role {number}")
    connection.roles.add(role, Group.objects.create(name=f"Other role {number}"))
    stored_token(connection, user=make_user() if number % 2 else None, last_error="HTTP 503.", consecutive_failures=2)
    return connection


def test_the_list_costs_no_query_per_row(manager_client, make_connection, make_user, django_assert_max_num_queries):
    # given two connections, with roles and tokens, listed once to count the queries
    for number in range(2):
        _listed_connection(make_connection, make_user, number)
    with CaptureQueriesContext(db) as two_rows:
        assert manager_client.get(LIST).status_code == 200
    # when the list shows eight more, then it costs no more queries
    for number in range(2, 10):
        _listed_connection(make_connection, make_user, number)
    with django_assert_max_num_queries(len(two_rows)):
        response = manager_client.get(LIST)
    assert len(response.context["cl"].result_list) == 10
    page = response.content.decode()
    assert '<td class="field-used_by_display">Other role 9, Role 9</td>' in page
    assert page.count('class="last-error connection-failed"') >= 10  # each row's last error (HTTP 503.)


def test_the_list_shows_who_uses_it_and_short_token_types(manager_client, make_connection):
    # given a connection invited to two roles, another to none
    used = make_connection(register=False)
    used.roles.add(Group.objects.create(name="Finance bots"), Group.objects.create(name="HR bots"))
    make_connection(register=False, token_type="user_specific")
    # when
    response = manager_client.get(LIST)
    page = response.content.decode()
    # then the Used by column names the roles; the token types are one or two words
    cells = re.findall(r'<td class="field-used_by_display">(.*?)</td>', page)
    assert sorted(cells) == ["Finance bots, HR bots", "—"]
    assert sorted(re.findall(r'<span class="token-type">(.*?)</span>', page)) == ["Shared", "User-specific"]
    # and the form explains them in the field's help text
    form = manager_client.get(f"{LIST}{used.pk}/change/").content.decode()
    assert "one token, authorized by an administrator, for unattended bots" in form


def test_last_token_issued_follows_the_batched_audit_of_real_token_requests(manager_client, bot_connection, bot):
    # given a connection no bot has asked for yet
    assert bot_connection.last_token_issued_at is None
    assert "never" in _issued_cell(manager_client, bot_connection)
    # when a bot gets a token, then nothing is written in its request: the answer's audit is batched
    assert get_token(bot.raw_key, bot_connection.slug).status_code == 200
    bot_connection.refresh_from_db()
    assert bot_connection.last_token_issued_at is None
    # and when the batch is written, the connection says when
    assert token_cache.report()
    event = AuditEvent.objects.get(action="token_request", outcome="success")
    bot_connection.refresh_from_db()
    assert bot_connection.last_token_issued_at == event.created_at
    assert selectors.moment_text(event.created_at) in _issued_cell(manager_client, bot_connection)


def test_last_token_issued_moves_forward_only_and_only_for_successes(bot_connection, make_connection):
    # given a connection a bot got a token of a minute ago
    other = make_connection(register=False)
    now = timezone.now()
    minute_ago = now - timedelta(minutes=1)
    audit.audit_events_write([_token_request(bot_connection, minute_ago)])
    bot_connection.refresh_from_db()
    assert bot_connection.last_token_issued_at == minute_ago
    # when a batch brings an older success (another process's, written late), a newer refusal, and successes of
    # another connection
    audit.audit_events_write(
        [
            _token_request(bot_connection, now - timedelta(minutes=5)),
            _token_request(bot_connection, now, outcome=AuditEvent.Outcome.FAILURE),
            _token_request(other, now - timedelta(seconds=30)),
            _token_request(other, now - timedelta(seconds=10)),
            _token_request(other, now - timedelta(seconds=20)),
        ]
    )
    # then the first keeps its newer time, the other takes the newest of its batch
    bot_connection.refresh_from_db()
    other.refresh_from_db()
    assert bot_connection.last_token_issued_at == minute_ago
    assert other.last_token_issued_at == now - timedelta(seconds=10)
    # and a newer success moves it on
    audit.audit_events_write([_token_request(bot_connection, now)])
    bot_connection.refresh_from_db()
    assert bot_connection.last_token_issued_at == now


def test_a_busy_connection_is_written_at_most_every_ten_seconds_by_a_process(bot_connection, django_assert_num_queries):
    # given a connection whose last token this process wrote a moment ago
    now = timezone.now()
    audit.audit_events_write([_token_request(bot_connection, now)])
    # when the next batches bring tokens issued 3 s, then 11 s later
    with django_assert_num_queries(3):  # the batch's INSERT in its transaction: no UPDATE of the connection
        audit.audit_events_write([_token_request(bot_connection, now + timedelta(seconds=3))])
    bot_connection.refresh_from_db()
    assert bot_connection.last_token_issued_at == now
    audit.audit_events_write([_token_request(bot_connection, now + timedelta(seconds=11))])
    # then the time moved on the second only (the first is at most ten seconds behind)
    bot_connection.refresh_from_db()
    assert bot_connection.last_token_issued_at == now + timedelta(seconds=11)


def _token_request(connection: Connection, at, outcome=AuditEvent.Outcome.SUCCESS) -> dict:
    row = audit.audit_event_row(action=AuditEvent.Action.TOKEN_REQUEST, outcome=outcome, connection=connection)
    return {**row, "created_at": at}


def _issued_cell(client, connection: Connection) -> str:
    page = client.get(LIST).content.decode()
    row = re.search(rf"<tr>(?:(?!</tr>).)*?>{re.escape(connection.name)}<br>.*?</tr>", page, re.S).group()
    return re.search(r'<span class="last-token-issued">(.*?)</span><br>', row, re.S).group(1)


def test_an_admin_save_does_not_put_back_what_the_engine_wrote_meanwhile(manager_client, bot_connection, monkeypatch):
    # given a bot's token audited in a batch while an administrator's save is on its way (after the page read the
    # connection, before it writes it)
    issued_at = timezone.now()
    clean = ConnectionForm.clean

    def clean_while_a_batch_lands(form):
        audit.audit_events_write([_token_request(bot_connection, issued_at)])
        return clean(form)

    monkeypatch.setattr(ConnectionForm, "clean", clean_while_a_batch_lands)
    # when the administrator saves a change of its description
    response = manager_client.post(
        f"{LIST}{bot_connection.pk}/change/", _edit_form(bot_connection, description="Renamed")
    )
    assert response.status_code == 302, response.context["adminform"].form.errors
    # then the description changed, and the time written meanwhile stays
    bot_connection.refresh_from_db()
    assert bot_connection.description == "Renamed" and bot_connection.last_token_issued_at == issued_at
