"""The admin's big lists (connections.admin.paging, AuditEvent's date drill-down): no full count of the table on a
page load, an estimate past EXACT_UP_TO rows, and the years, months and days of the drill-down found by probing the
index, not by reading every row."""

import re
from datetime import UTC, datetime

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from connections.admin import paging
from connections.audit.events import Action, Outcome, audit_record
from connections.models import AuditEvent

pytestmark = pytest.mark.django_db

LIST = "/admin/connections/auditevent/"


def events_at(*moments: datetime) -> None:
    for moment in moments:
        event = audit_record(action=Action.TOKEN_REFRESH, outcome=Outcome.SUCCESS, detail="x")
        AuditEvent.objects.filter(pk=event.pk).update(created_at=moment)


def test_a_small_list_is_counted_exactly_with_a_bounded_count(admin_client):
    events_at(*[datetime(2026, 3, 1, tzinfo=UTC)] * 3)
    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get(LIST)
    assert response.context["cl"].result_count == 3
    counts = [query["sql"] for query in queries if "COUNT(" in query["sql"].upper()]
    assert counts and all("LIMIT" in sql for sql in counts), counts  # never a count of the whole table


def test_past_the_exact_bound_the_count_is_the_planners_estimate(admin_client, monkeypatch):
    monkeypatch.setattr(paging, "EXACT_UP_TO", 5)
    events_at(*[datetime(2026, 3, 1, tzinfo=UTC)] * 12)
    connection.cursor().execute("ANALYZE connections_auditevent")
    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get(LIST)
    assert response.status_code == 200
    assert any(query["sql"].startswith("EXPLAIN (FORMAT JSON)") for query in queries)
    assert response.context["cl"].result_count == paging.estimated_count(AuditEvent.objects.all())
    assert response.context["cl"].result_count >= 6


def test_the_pages_stop_at_max_pages():
    paginator = paging.EstimatedCountPaginator(list(range(1000)), 10)
    assert paginator.num_pages == 100
    paging_limit = paging.EstimatedCountPaginator(list(range(10)), 1)
    paging_limit.__dict__["count"] = 10 * paging.MAX_PAGES
    assert paging_limit.num_pages == paging.MAX_PAGES


def test_the_date_drill_down_lists_the_periods_that_have_events(admin_client, settings):
    settings.TIME_ZONE = "UTC"
    events_at(
        datetime(2025, 11, 30, 12, tzinfo=UTC), datetime(2026, 2, 3, tzinfo=UTC), datetime(2026, 2, 17, tzinfo=UTC)
    )
    years = AuditEvent.objects.datetimes("created_at", "year")
    assert [moment.year for moment in years] == [2025, 2026]
    months = AuditEvent.objects.filter(created_at__year=2026).datetimes("created_at", "month")
    assert [(moment.year, moment.month) for moment in months] == [(2026, 2)]
    days = AuditEvent.objects.filter(created_at__year=2026, created_at__month=2).datetimes("created_at", "day")
    assert [moment.day for moment in days] == [3, 17]
    # and the admin's drill-down shows them, without truncating every row's time in the database
    with CaptureQueriesContext(connection) as queries:
        page = admin_client.get(LIST).content.decode()
    assert re.findall(r"created_at__year=(\d+)", page)[:2] == ["2025", "2026"]
    assert not [query["sql"] for query in queries if "DATE_TRUNC" in query["sql"].upper()]
    page = admin_client.get(LIST, {"created_at__year": "2026", "created_at__month": "2"}).content.decode()
    assert "February 3" in page and "February 17" in page and "February 4" not in page


def test_the_audit_search_is_by_prefix_of_who_and_of_the_connection(admin_client):
    audit_record(action=Action.TOKEN_REFRESH, outcome=Outcome.SUCCESS, actor_label="ops-bot", connection_label="crm")
    audit_record(action=Action.TOKEN_REFRESH, outcome=Outcome.SUCCESS, actor_label="alice", connection_label="wiki")
    found = {event.actor_label for event in admin_client.get(LIST, {"q": "ops"}).context["cl"].result_list}
    assert found == {"ops-bot"}
    found = {event.actor_label for event in admin_client.get(LIST, {"q": "wik"}).context["cl"].result_list}
    assert found == {"alice"}
    assert not admin_client.get(LIST, {"q": "bot"}).context["cl"].result_list  # a prefix, not anywhere


def test_the_bot_key_search_is_by_prefix_of_the_name_the_key_id_or_the_user(admin_client, bot):
    keys = "/admin/connections/botkey/"
    assert list(admin_client.get(keys, {"q": "finance"}).context["cl"].result_list) == [bot.key]  # the name
    assert list(admin_client.get(keys, {"q": bot.key.key_id[:6]}).context["cl"].result_list) == [bot.key]
    assert list(admin_client.get(keys, {"q": "finance-b"}).context["cl"].result_list) == [bot.key]  # the user
    assert not admin_client.get(keys, {"q": "runner"}).context["cl"].result_list  # inside the name: not a prefix
