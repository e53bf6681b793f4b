"""The administrator's actions (connections.services): a role's permissions, members and invited connections."""

import pytest
from django.contrib.auth.models import Group

from connections.models import AuditEvent

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
