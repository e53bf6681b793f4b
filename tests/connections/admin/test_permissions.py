"""Who may do what: (role) x (token type) x (key state), through both the admin and the token endpoint."""

from datetime import timedelta

import pytest
from django.contrib.auth.models import Group, Permission
from django.test import Client
from django.utils import timezone

from connections.endpoint.bot_keys import bot_key_create
from connections.engine.store import token_store
from connections.oauth.client import TokenResponse
from tests.conftest import stored_rows

pytestmark = pytest.mark.django_db

ROLES = ("manage", "view", "invited", "nothing")
TOKEN_TYPES = ("shared", "user_specific")
KEYS = ("valid", "revoked", "expired", "wrong")

# What the admin answers for each role: (change list, add page, Refresh now).
ADMIN = {
    "manage": (200, 200, 302),
    "view": (200, 403, 403),
    "invited": (403, 403, 403),
    "nothing": (403, 403, 403),
}


def _issue(connection, user) -> None:
    response = TokenResponse(
        access_token=f"access-{connection.slug}-{user.pk if user else 'shared'}",
        refresh_token="",
        id_token="",
        token_type="Bearer",
        scope="read",
        expires_in=3600,
        extra={},
    )
    token_store(connection=connection, user=user, response=response)


@pytest.mark.parametrize("key_state", KEYS)
@pytest.mark.parametrize("token_type", TOKEN_TYPES)
@pytest.mark.parametrize("role_kind", ROLES)
def test_permission_matrix(role_kind, token_type, key_state, make_user, make_connection):
    # given a connection of this token type, connected, and a staff user holding one kind of role
    connection = make_connection(token_type=token_type, register=False)
    role = Group.objects.create(name=f"{role_kind} role")
    if role_kind in ("manage", "view"):
        role.permissions.add(Permission.objects.get(codename=f"{role_kind}_connections"))
    if role_kind == "invited":
        connection.roles.add(role)
    user = make_user(roles=(role,), staff=True)
    _issue(connection, user if token_type == "user_specific" else None)
    key, raw = bot_key_create(user=user, name="matrix")
    if key_state == "revoked":
        key.revoked_at = timezone.now()
    elif key_state == "expired":
        key.expires_at = timezone.now() - timedelta(minutes=1)
    elif key_state == "wrong":
        raw = raw[:-4] + "xxxx"
    key.save()

    # when the bot asks for a token
    response = Client().get(f"/api/v1/connections/{connection.slug}/token", HTTP_AUTHORIZATION=f"Bearer {raw}")

    # then only a valid key of an invited role gets it: managing or viewing connections is not using them
    if key_state != "valid":
        assert (response.status_code, response.json()["error"]) == (401, "invalid_key")
    elif role_kind == "invited":
        assert response.status_code == 200
        assert response.json()["access_token"].startswith(f"access-{connection.slug}-")
    else:
        assert (response.status_code, response.json()["error"]) == (403, "forbidden")

    # and the admin answers by feature permission: hidden and refused, not only hidden
    admin = Client()
    admin.force_login(user)
    before = stored_rows()
    changelist = admin.get("/admin/connections/connection/")
    add = admin.get("/admin/connections/connection/add/")
    refresh = admin.post(f"/admin/connections/connection/{connection.pk}/refresh/")
    assert (changelist.status_code, add.status_code, refresh.status_code) == ADMIN[role_kind]
    if role_kind != "manage":  # a refused Refresh now touched no token, wrote no audit event
        assert stored_rows() == before
    index = admin.get("/admin/").content.decode()
    assert ("/admin/connections/connection/" in index) == (role_kind in ("manage", "view"))
