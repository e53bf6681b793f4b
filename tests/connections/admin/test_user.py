"""The user page speaks of roles, and a change of roles made there is audited as the role page audits it; a
role's creation event names what it holds."""

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client

from connections.models import AuditEvent, Role

pytestmark = pytest.mark.django_db


def _user_form(user: User, **overrides: object) -> dict[str, object]:
    """The user change form as the admin posts it (no superuser-only fields)."""
    data: dict[str, object] = {
        "username": user.username,
        "first_name": user.first_name,
        "last_name": user.last_name,
        "email": user.email,
        "is_active": "on",
        "date_joined_0": user.date_joined.strftime("%Y-%m-%d"),
        "date_joined_1": user.date_joined.strftime("%H:%M:%S"),
        "groups": [role.pk for role in user.groups.all()],
    }
    data.update(overrides)
    return data


def _role_form(role: Role, **overrides: object) -> dict[str, object]:
    data: dict[str, object] = {
        "name": role.name,
        "feature_permissions": list(role.permissions.values_list("codename", flat=True)),
        "members": list(role.user_set.values_list("pk", flat=True)),
        "invited_connections": list(role.connections.values_list("pk", flat=True)),
    }
    data.update(overrides)
    return data


def _role_events() -> list[tuple[str, str, str]]:
    return list(
        AuditEvent.objects.filter(action="role_update").order_by("id").values_list("actor_label", "detail", "outcome")
    )


def _staff_client(make_user, username: str, *codenames: str) -> Client:
    account = make_user(username, staff=True)
    account.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    client = Client()
    client.force_login(account)
    return client


@pytest.fixture
def user_manager(make_user) -> Client:
    """Staff who may change users and roles (Django's own permissions) but is no superuser."""
    return _staff_client(make_user, "people-admin", "view_user", "change_user", "add_user", "change_role")


@pytest.fixture
def user_editor(make_user) -> Client:
    """Staff who may change users only: not who holds which role."""
    return _staff_client(make_user, "user-editor", "view_user", "change_user", "add_user", "delete_user")


def test_user_page_calls_groups_roles_and_shows_raw_permissions_to_superusers_only(
    admin_client, user_manager, make_user
):
    finance = Role.objects.create(name="Finance bots")
    alice = make_user("alice")
    make_user("bob", roles=(finance,))
    url = f"/admin/auth/user/{alice.pk}/change/"

    page = user_manager.get(url).content.decode()
    assert '<label for="id_groups">Roles:</label>' in page
    assert f'<option value="{finance.pk}">Finance bots</option>' in page
    assert 'name="user_permissions"' not in page and 'name="is_superuser"' not in page

    as_superuser = admin_client.get(url).content.decode()
    assert 'name="user_permissions"' in as_superuser and 'name="is_superuser"' in as_superuser
    assert '<label for="id_groups">Roles:</label>' in as_superuser
    # the list filters and shows users by role
    listing = admin_client.get(f"/admin/auth/user/?groups__id__exact={finance.pk}").content.decode()
    assert "By role" in listing and ">bob</a>" in listing and ">alice</a>" not in listing
    assert '<td class="field-role_list">Finance bots</td>' in listing


def test_a_user_who_is_not_superuser_cannot_grant_raw_permissions_or_superuser(user_manager, make_user):
    alice = make_user("alice")
    manage = Permission.objects.get(codename="manage_connections")
    response = user_manager.post(
        f"/admin/auth/user/{alice.pk}/change/",
        _user_form(alice, is_superuser="on", user_permissions=[manage.pk]),
    )
    assert response.status_code == 302
    alice.refresh_from_db()
    assert not alice.is_superuser and not alice.user_permissions.exists()


def test_roles_changed_on_the_user_page_are_audited_per_role(admin_client, make_user):
    # given alice in Ops, and a Finance role she is not in
    finance, ops = Role.objects.create(name="Finance bots"), Role.objects.create(name="Ops")
    alice = make_user("alice", roles=(ops,))
    url = f"/admin/auth/user/{alice.pk}/change/"

    # when the admin adds her to Finance bots
    assert admin_client.post(url, _user_form(alice, groups=[finance.pk, ops.pk])).status_code == 302

    # then she is a member, and one event says so, by whom
    assert set(alice.groups.all()) == {finance, ops}
    assert _role_events() == [("admin", "Role Finance bots: members added alice.", "success")]
    event = AuditEvent.objects.get(action="role_update")
    assert event.actor.username == "admin"

    # when the admin takes her out of both roles
    assert admin_client.post(url, _user_form(alice, groups=[])).status_code == 302

    # then one event per role, each naming her as removed
    assert not alice.groups.exists()
    assert _role_events()[1:] == [
        ("admin", "Role Finance bots: members removed alice.", "success"),
        ("admin", "Role Ops: members removed alice.", "success"),
    ]

    # and saving the page without a change of roles writes no role event
    admin_client.post(url, _user_form(alice, first_name="Alice"))
    assert len(_role_events()) == 3


def test_the_role_page_writes_the_same_event_for_the_same_change(admin_client, make_user):
    finance = Role.objects.create(name="Finance bots")
    alice, bob = make_user("alice"), make_user("bob")

    # alice joins through the user page; bob through the role page
    admin_client.post(f"/admin/auth/user/{alice.pk}/change/", _user_form(alice, groups=[finance.pk]))
    from_user_page = AuditEvent.objects.filter(action="role_update").latest("id")
    alice.groups.remove(finance)  # so that the role page makes the very same change for alice
    response = admin_client.post(
        f"/admin/connections/role/{finance.pk}/change/", _role_form(finance, members=[alice.pk])
    )
    assert response.status_code == 302
    from_role_page = AuditEvent.objects.filter(action="role_update").latest("id")

    fields = ("action", "outcome", "actor_id", "actor_label", "connection_label", "detail")
    assert [getattr(from_role_page, name) for name in fields] == [getattr(from_user_page, name) for name in fields]
    assert from_role_page.detail == "Role Finance bots: members added alice."

    # and a role page change of members and permissions says both
    admin_client.post(
        f"/admin/connections/role/{finance.pk}/change/",
        _role_form(finance, members=[bob.pk], feature_permissions=["view_connections"]),
    )
    assert AuditEvent.objects.filter(action="role_update").latest("id").detail == (
        "Role Finance bots: members added bob; members removed alice; permissions now view_connections (were none)."
    )
    assert list(finance.user_set.all()) == [bob]


def test_a_user_added_with_roles_is_audited(admin_client):
    finance = Role.objects.create(name="Finance bots")
    response = admin_client.post(
        "/admin/auth/user/add/",
        {
            "username": "carol",
            "usable_password": "true",
            "password1": "a-long-password-4-carol",
            "password2": "a-long-password-4-carol",
            "groups": [finance.pk],
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    carol = User.objects.get(username="carol")
    assert list(carol.groups.all()) == [finance]
    assert _role_events() == [("admin", "Role Finance bots: members added carol.", "success")]
    assert "a-long-password" not in AuditEvent.objects.get(action="role_update").detail
    # the add page offers the roles
    assert '<label for="id_groups">Roles:</label>' in admin_client.get("/admin/auth/user/add/").content.decode()


def test_a_role_creation_event_records_its_members_permissions_and_connections(
    admin_client, make_user, make_connection
):
    alice, bob = make_user("alice"), make_user("bob")
    connection = make_connection(register=False)
    response = admin_client.post(
        "/admin/connections/role/add/",
        {
            "name": "Finance bots",
            "feature_permissions": ["view_connections"],
            "members": [bob.pk, alice.pk],
            "invited_connections": [connection.pk],
        },
    )
    assert response.status_code == 302
    event = AuditEvent.objects.get(action="role_update")
    assert event.detail == (
        f"Role Finance bots created: permissions view_connections; members alice, bob; connections {connection.slug}."
    )
    assert connection.client_secret not in event.detail and event.actor_label == "admin"


def test_renaming_a_role_says_so(admin_client):
    role = Role.objects.create(name="Finance")
    admin_client.post(f"/admin/connections/role/{role.pk}/change/", _role_form(role, name="Finance bots"))
    assert _role_events() == [
        ("admin", "Role Finance bots (renamed from Finance) saved; its members, permissions and connections are "
         "unchanged.", "success")
    ]  # fmt: skip


def test_someone_who_may_only_edit_users_cannot_give_a_role(user_editor, make_user):
    # given a role that manages connections, and the editor's own account
    managers = Role.objects.create(name="Connection managers")
    managers.permissions.add(Permission.objects.get(codename="manage_connections"))
    editor = User.objects.get(username="user-editor")
    # when they open their own page, then the roles are shown, not offered
    page = user_editor.get(f"/admin/auth/user/{editor.pk}/change/").content.decode()
    assert "Roles" in page and 'name="groups"' not in page
    # and when they post a role anyway, then it is not given
    response = user_editor.post(f"/admin/auth/user/{editor.pk}/change/", _user_form(editor, groups=[managers.pk]))
    assert response.status_code == 302
    assert not editor.groups.exists() and not editor.has_perm("connections.manage_connections")
    assert not AuditEvent.objects.filter(action="role_update").exists()
    # nor on the add page
    assert 'name="groups"' not in user_editor.get("/admin/auth/user/add/").content.decode()


def test_a_superusers_account_is_for_superusers_only(user_editor, make_user):
    # given a superuser, and staff who may change and delete users
    root = User.objects.create_superuser("root", "root@example.com", "root-password-1")
    # then the superuser's page is shown to them read-only, and its password and deletion are refused
    page = user_editor.get(f"/admin/auth/user/{root.pk}/change/").content.decode()
    assert "root@example.com" in page and 'name="is_active"' not in page and 'name="email"' not in page
    password = {"password1": "x-new-Password-1", "password2": "x-new-Password-1"}
    assert user_editor.post(f"/admin/auth/user/{root.pk}/password/", password).status_code == 403
    assert user_editor.post(f"/admin/auth/user/{root.pk}/delete/", {"post": "yes"}).status_code == 403
    assert user_editor.post(f"/admin/auth/user/{root.pk}/change/", _user_form(root, is_active="")).status_code == 403
    root.refresh_from_db()
    assert root.check_password("root-password-1") and root.is_active
