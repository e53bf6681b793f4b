"""The administrator's actions (connections.services): a role's permissions, members and invited connections."""

import pytest
from django.contrib.auth.models import Group

from connections.models import AuditEvent, OAuthToken

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


def test_a_re_authorization_landing_during_a_disconnect_is_kept_and_said(authorized_connection, manager, monkeypatch):
    # given a connected connection, and a new authorization stored while the disconnect's revocation calls run
    from connections import services
    from connections.engine.store import token_store
    from connections.oauth.answers import TokenResponse

    real_revoke = services.token_values_revoke

    def revoke_while_someone_reauthorizes(connection, values):
        problems = real_revoke(connection, values)
        response = TokenResponse("new-access", "new-refresh", "", "Bearer", "read", 3600, {})
        token_store(connection=connection, user=None, response=response, authorized_by=manager)
        return problems

    monkeypatch.setattr(services, "token_values_revoke", revoke_while_someone_reauthorizes)
    # when the administrator disconnects
    message = services.connection_disconnect(connection=authorized_connection, actor=manager)
    # then the new grant is not deleted unrevoked: it is kept, and the message and the audit say so
    kept = OAuthToken.objects.get(connection=authorized_connection)
    assert (kept.access_token, kept.refresh_token) == ("new-access", "new-refresh")
    assert "1 token(s) authorized again meanwhile are kept, not revoked." in message
    event = AuditEvent.objects.filter(action="disconnect").latest("id")
    assert "authorized again meanwhile are kept" in event.detail
