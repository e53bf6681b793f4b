"""Deleting a role or a user keeps the history of who could get tokens: the role's event names what it held, a
user leaves their roles as from a role's page, and their own tokens are revoked at the provider first."""

import pytest
from django.contrib.auth.models import Group, Permission, User
from django.test import Client

from connections.models import AuditEvent, BotKey, OAuthToken, Role
from tests.conftest import authorize_and_store_token
from tests.support.bots import make_bot

pytestmark = pytest.mark.django_db


def _events(action: str) -> list[str]:
    return list(AuditEvent.objects.filter(action=action).order_by("id").values_list("detail", flat=True))


def test_deleting_a_role_records_what_it_held(admin_client, make_connection):
    # given a role with a member and an invitation
    bot = make_bot("finance-bot", "Finance bots", "nightly")
    connection = make_connection(register=False, name="Finance CRM", slug="finance-crm")
    connection.roles.add(bot.role)
    # when an administrator deletes it on its page
    response = admin_client.post(f"/admin/connections/role/{bot.role.pk}/delete/", {"post": "yes"})
    # then it is gone, and its event says who held it and what it was invited to
    assert response.status_code == 302
    assert not Group.objects.filter(pk=bot.role.pk).exists()
    assert _events("role_update") == [
        "Role Finance bots deleted: permissions none; members finance-bot; connections finance-crm."
    ]


def test_deleting_roles_with_the_list_action_records_each(admin_client):
    first, second = Role.objects.create(name="First"), Role.objects.create(name="Second")
    data = {"action": "delete_selected", "_selected_action": [first.pk, second.pk], "post": "yes"}
    assert admin_client.post("/admin/connections/role/", data).status_code == 302
    assert not Role.objects.exists()
    assert sorted(_events("role_update")) == [
        "Role First deleted: permissions none; members none; connections none.",
        "Role Second deleted: permissions none; members none; connections none.",
    ]


@pytest.mark.parametrize("confirmation", [{"post": "yes"}, {"confirm": "1"}])  # Django deletes on any POST
def test_deleting_a_user_revokes_their_own_tokens_and_records_the_roles_they_leave(
    admin_client, make_connection, make_user, authserver, confirmation
):
    # given a user in a role, with a bot key and their own token of a user-specific connection
    role = Role.objects.create(name="Sales bots")
    connection = make_connection(token_type="user_specific")
    connection.roles.add(role)
    bob = make_user("bob", roles=(role,))
    BotKey.objects.create(user=bob, name="bob's key", key_id="0123456789ab", digest="x" * 64)
    bob_client = Client()
    bob_client.force_login(bob)
    authorize_and_store_token(bob_client, connection, authserver)
    token = OAuthToken.objects.get(user=bob)
    assert authserver.whoami(token.access_token).status_code == 200
    # when an administrator sees the confirmation and deletes the user
    page = admin_client.get(f"/admin/auth/user/{bob.pk}/delete/").content.decode()
    assert "revoked at the provider first" in page
    response = admin_client.post(f"/admin/auth/user/{bob.pk}/delete/", confirmation, follow=True)
    # then the token no longer works at the provider, and the user, token and key are gone
    assert "Deleted the user bob." in response.content.decode()
    assert authserver.whoami(token.access_token).status_code == 401
    assert not User.objects.filter(username="bob").exists()
    assert not OAuthToken.objects.exists() and not BotKey.objects.exists()
    # and the history says so: a disconnect and the role they left, as a role's page would say it
    assert _events("disconnect") == ["Tokens revoked at the provider and removed."]
    assert _events("role_update") == ["Role Sales bots: members removed bob."]


def test_deleting_a_user_needs_the_permission_for_what_goes_with_them(make_user, make_connection):
    # given staff who may delete users but not bot keys, and a user with a key
    account = make_user("people-admin", staff=True)
    account.user_permissions.add(*Permission.objects.filter(codename__in=("view_user", "delete_user")))
    client = Client()
    client.force_login(account)
    carol = make_user("carol")
    BotKey.objects.create(user=carol, name="carol's key", key_id="ba9876543210", digest="y" * 64)
    # when they post the deletion anyway, then it is refused and nothing goes
    assert client.post(f"/admin/auth/user/{carol.pk}/delete/", {"post": "yes"}).status_code == 403
    assert User.objects.filter(username="carol").exists() and BotKey.objects.exists()


def test_users_cannot_be_deleted_in_bulk(admin_client):
    assert "delete_selected" not in admin_client.get("/admin/auth/user/").content.decode()
