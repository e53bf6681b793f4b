"""The audit log (connections.audit.events): append-only in the admin, exported as CSV with the list's filters, and a
worker's batch of events written a few statements in all."""

import csv
import io

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from connections.audit import events as audit
from connections.audit.events import audit_record
from connections.models import AuditEvent

pytestmark = pytest.mark.django_db


def test_audit_log_is_read_only(admin_client):
    event = audit_record(action="token_request", outcome="success", actor_label="bot")
    assert admin_client.get("/admin/connections/auditevent/add/").status_code == 403
    assert admin_client.post(f"/admin/connections/auditevent/{event.pk}/delete/", {"post": "yes"}).status_code == 403
    page = admin_client.get(f"/admin/connections/auditevent/{event.pk}/change/").content.decode()
    assert 'name="_save"' not in page
    assert AuditEvent.objects.filter(pk=event.pk).exists()


def test_audit_csv_export_follows_the_filters(admin_client):
    audit_record(action="token_request", outcome="success", actor_label="bot-a", detail="ok")
    audit_record(action="token_request", outcome="failure", actor_label="bot-b", detail="=HYPERLINK(evil)")
    audit_record(action="disconnect", outcome="success", actor_label="admin")
    listing = admin_client.get("/admin/connections/auditevent/?outcome__exact=failure").content.decode()
    assert "export.csv?outcome__exact=failure" in listing
    response = admin_client.get("/admin/connections/auditevent/export.csv?outcome__exact=failure")
    assert response["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert rows[0][:5] == ["created_at", "actor_label", "connection_label", "action", "outcome"]
    assert len(rows) == 2 and rows[1][1] == "bot-b"
    assert rows[1][5] == "'=HYPERLINK(evil)"  # defused for spreadsheets


def test_a_batch_of_events_is_written_with_one_statement(make_connection):
    # given seven events of a worker's batch, one of them for a connection deleted meanwhile
    kept, deleted = make_connection(register=False), make_connection(register=False)
    rows = [
        audit.audit_event_row(
            action=AuditEvent.Action.TOKEN_REFRESH,
            outcome=AuditEvent.Outcome.SUCCESS,
            connection=deleted if number == 6 else kept,
            actor_label="refresh worker",
            detail=f"event {number}\x00",
        )
        for number in range(7)
    ]
    deleted_slug = deleted.slug
    deleted.delete()
    # when they are written
    with CaptureQueriesContext(connection) as queries:
        audit.audit_events_write(rows)
    # then one INSERT, sent once for all of them (executemany), wrote them all, in order, the deleted
    # connection's with its label only
    assert [query["sql"].split(" INTO ")[0] for query in queries if "INSERT" in query["sql"]] == ["7 times: INSERT"]
    written = list(AuditEvent.objects.order_by("pk").values_list("detail", "connection_id", "connection_label"))
    assert written == [
        *[(f"event {number}", kept.pk, kept.slug) for number in range(6)],
        ("event 6", None, deleted_slug),
    ]
