import csv
import io

import pytest
from django.contrib.auth.models import Group

from connections.models import AuditEvent
from connections.services import audit_record

pytestmark = pytest.mark.django_db


def test_role_admin_sets_permissions_members_and_connections(admin_client, make_user, make_connection):
    member = make_user("finance-bot")
    connection = make_connection(register=False)
    response = admin_client.post(
        "/admin/connections/role/add/",
        {
            "name": "Finance bots",
            "feature_permissions": ["view_connections"],
            "members": [member.pk],
            "invited_connections": [connection.pk],
        },
    )
    assert response.status_code == 302
    role = Group.objects.get(name="Finance bots")
    assert list(role.permissions.values_list("codename", flat=True)) == ["view_connections"]
    assert list(role.user_set.all()) == [member] and list(connection.roles.all()) == [role]
    member = type(member).objects.get(pk=member.pk)
    assert member.has_perm("connections.view_connections")
    assert not member.has_perm("connections.manage_connections")
    listing = admin_client.get("/admin/connections/role/").content.decode()
    assert "View connections" in listing and connection.name in listing
    page = admin_client.get(f"/admin/connections/connection/{connection.pk}/change/").content.decode()
    assert "Finance bots" in page
    assert AuditEvent.objects.filter(action="role_update", detail__contains="view_connections").exists()


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
