"""Bot keys seen from their role, their reach (which connections a key's user may get tokens for), Revoke on the
key's own page, and the expiry filter that looks ahead."""

import re
from datetime import timedelta
from uuid import uuid4

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from django.utils import timezone

from connections import selectors
from connections.endpoint.bot_keys import bot_key_create, connection_reach_for
from connections.models import AuditEvent, BotKey, Role
from tests.conftest import messages_of
from tests.connections.admin.test_permissions import _issue

pytestmark = pytest.mark.django_db


@pytest.fixture
def viewer_client(make_user) -> Client:
    """Staff with View connections only."""
    client = Client()
    client.force_login(make_user("viewer", perms=("view_connections",), staff=True))
    return client


# --- the role page ---------------------------------------------------------------------------------------------


def test_role_page_lists_its_members_bot_keys(admin_client, make_user):
    finance, other = Role.objects.create(name="Finance bots"), Role.objects.create(name="Other")
    alice = make_user("alice", roles=(finance,))
    outsider = make_user("outsider", roles=(other,))
    active, raw = bot_key_create(user=alice, name="nightly")
    revoked, _ = bot_key_create(user=alice, name="old runner")
    revoked.revoked_at = timezone.now()
    revoked.save()
    BotKey.objects.filter(pk=active.pk).update(last_used_at=timezone.now(), last_used_from="10.0.0.7")
    foreign, _ = bot_key_create(user=outsider, name="not theirs")

    page = admin_client.get(f"/admin/connections/role/{finance.pk}/change/").content.decode()

    rows = re.findall(r'<tr class="member-key" data-key-id="(\w+)">(.*?)</tr>', page, re.S)
    assert [key_id for key_id, _ in rows] == [active.key_id, revoked.key_id]
    first, second = (re.sub(r"\s+", " ", row) for _, row in rows)
    assert "<td>alice</td>" in first and "<td>nightly</td>" in first and "<td>Active</td>" in first
    assert "from 10.0.0.7" in first and f'href="/admin/connections/botkey/{active.pk}/change/"' in first
    assert "<td>Revoked</td>" in second and "never" in second
    assert foreign.key_id not in page and raw not in page and active.digest not in page


def test_role_page_hides_bot_keys_from_who_may_not_see_keys(make_user):
    role = Role.objects.create(name="Finance bots")
    key, _ = bot_key_create(user=make_user("alice", roles=(role,)), name="nightly")
    role_editor = make_user("role-editor", staff=True)
    role_editor.user_permissions.add(*Permission.objects.filter(codename__in=("view_role", "change_role")))
    client = Client()
    client.force_login(role_editor)
    page = client.get(f"/admin/connections/role/{role.pk}/change/")
    assert page.status_code == 200 and key.key_id not in page.content.decode()


# --- reach -------------------------------------------------------------------------------------------------------


def test_reach_follows_roles_tokens_and_authorizations(make_user, make_connection, django_assert_num_queries):
    finance, other = Role.objects.create(name="Finance bots"), Role.objects.create(name="Other")
    alice = make_user("alice", roles=(finance,))
    shared = make_connection(register=False, name="A shared")
    not_connected = make_connection(register=False, name="B not connected")
    mine = make_connection(register=False, name="C mine", token_type="user_specific")
    app = make_connection(register=False, name="D app", grant_type="client_credentials")
    disabled = make_connection(register=False, name="E disabled", is_enabled=False)
    elsewhere = make_connection(register=False, name="F elsewhere")
    for connection in (shared, not_connected, mine, app, disabled):
        connection.roles.add(finance)
    elsewhere.roles.add(other)
    _issue(shared, None)
    _issue(disabled, None)
    _issue(mine, make_user("bob"))  # someone else's authorization is not alice's

    with django_assert_num_queries(2):
        reach = connection_reach_for(alice)

    assert [(item.connection, item.gets_token, item.roles) for item in reach] == [
        (shared, True, ["Finance bots"]),
        (not_connected, False, ["Finance bots"]),
        (mine, False, ["Finance bots"]),
        (app, True, ["Finance bots"]),
        (disabled, False, ["Finance bots"]),
    ]
    assert reach[2].status == "Not authorized by alice yet: they authorize it on My OAuth connections."
    assert reach[4].status.startswith("Disabled")

    # when alice authorizes her own token, and joins the other role too
    _issue(mine, alice)
    alice.groups.add(other)
    reach = {item.connection: item for item in connection_reach_for(alice)}
    assert reach[mine].gets_token and reach[mine].status == "Authorized by alice."
    assert reach[elsewhere].roles == ["Other"]


def test_reach_costs_the_same_queries_for_many_connections(make_user, make_connection, django_assert_num_queries):
    role = Role.objects.create(name="Many")
    user = make_user("many", roles=(role, Role.objects.create(name="More")))
    for number in range(8):
        connection = make_connection(register=False, token_type="user_specific" if number % 2 else "shared")
        connection.roles.add(*user.groups.all())
    with django_assert_num_queries(2):
        reach = connection_reach_for(user)
    assert len(reach) == 8 and all(item.roles == ["Many", "More"] for item in reach)


def test_key_page_and_created_page_show_the_reach(admin_client, make_user, make_connection):
    role = Role.objects.create(name="Finance bots")
    alice = make_user("alice", roles=(role,))
    connection = make_connection(register=False)
    connection.roles.add(role)
    _issue(connection, None)

    created = admin_client.post(
        "/admin/connections/botkey/add/", {"user": alice.pk, "name": "nightly", "submission": uuid4().hex}
    )
    page = created.content.decode()
    assert f'data-slug="{connection.slug}"' in page and '<td class="reach-gets-token">Yes</td>' in page
    assert 'data-copy-from="raw-key"' in page and "connections/copy_button.js" in page

    key = BotKey.objects.get()
    key_page = admin_client.get(f"/admin/connections/botkey/{key.pk}/change/").content.decode()
    assert f'data-slug="{connection.slug}"' in key_page and '<td class="reach-gets-token">Yes</td>' in key_page

    # a revoked key reaches nothing, whatever its user may
    key.revoked_at = timezone.now()
    key.save()
    key_page = admin_client.get(f"/admin/connections/botkey/{key.pk}/change/").content.decode()
    assert "This key is revoked: it gets no token." in key_page
    assert '<td class="reach-gets-token">No</td>' in key_page


def test_created_page_says_when_the_user_reaches_nothing(admin_client, make_user):
    alice = make_user("alice")
    page = admin_client.post(
        "/admin/connections/botkey/add/", {"user": alice.pk, "name": "x", "submission": uuid4().hex}
    ).content.decode()
    assert "None: no role of alice is invited to a connection." in page


def test_key_times_are_shown_in_the_one_format_to_the_second(admin_client, make_user, settings):
    settings.TIME_ZONE = "Europe/Paris"  # shown in the site's time zone, not said to be UTC
    role = Role.objects.create(name="Finance bots")
    alice = make_user("alice", roles=(role,))
    page = admin_client.post(
        "/admin/connections/botkey/add/",
        {"user": alice.pk, "name": "nightly", "expires_days": "7", "submission": uuid4().hex},
    ).content.decode()
    key = BotKey.objects.get()
    expires = selectors.moment_text(key.expires_at)
    assert f"it expires {expires}." in page and "UTC" not in page
    used_at = timezone.now()
    BotKey.objects.filter(pk=key.pk).update(last_used_at=used_at)
    role_page = admin_client.get(f"/admin/connections/role/{role.pk}/change/").content.decode()
    assert f"<td>{selectors.moment_text(used_at)}</td>" in role_page


# --- Revoke on the key's page ----------------------------------------------------------------------------------


def test_revoke_from_the_keys_page_asks_then_revokes_and_audits(manager_client, make_user):
    key, _ = bot_key_create(user=make_user("alice"), name="nightly")
    key_url = f"/admin/connections/botkey/{key.pk}/change/"
    revoke_url = f"/admin/connections/botkey/{key.pk}/revoke/"
    assert f'href="{revoke_url}"' in manager_client.get(key_url).content.decode()

    # the link asks first; asking changes nothing
    confirmation = manager_client.get(revoke_url)
    assert confirmation.status_code == 200 and "Yes, revoke it" in confirmation.content.decode()
    key.refresh_from_db()
    assert key.revoked_at is None

    # when confirmed
    response = manager_client.post(revoke_url)
    assert response.status_code == 302 and response["Location"] == key_url
    key.refresh_from_db()
    assert key.revoked_at is not None
    event = AuditEvent.objects.get(action="bot_key_revoke")
    assert (event.actor_label, event.detail) == ("manager", f"Key {key.key_id} 'nightly' of alice")
    assert messages_of(response) == [f"Revoked the key {key}: it gets no token any more."]

    # the page no longer offers it, and a second POST revokes nothing more
    assert f'href="{revoke_url}"' not in manager_client.get(key_url).content.decode()
    again = manager_client.post(revoke_url)
    assert messages_of(again) == [f"The key {key} was already revoked."]
    assert AuditEvent.objects.filter(action="bot_key_revoke").count() == 1


def test_only_managers_revoke(viewer_client, make_user):
    key, _ = bot_key_create(user=make_user("alice"), name="nightly")
    page = viewer_client.get(f"/admin/connections/botkey/{key.pk}/change/")
    assert page.status_code == 200 and "/revoke/" not in page.content.decode()
    assert viewer_client.get(f"/admin/connections/botkey/{key.pk}/revoke/").status_code == 403
    assert viewer_client.post(f"/admin/connections/botkey/{key.pk}/revoke/").status_code == 403
    key.refresh_from_db()
    assert key.revoked_at is None and not AuditEvent.objects.filter(action="bot_key_revoke").exists()
    assert Client().post(f"/admin/connections/botkey/{key.pk}/revoke/").status_code == 302  # to the login page
    key.refresh_from_db()
    assert key.revoked_at is None


def test_revoking_a_missing_key_is_404(manager_client):
    assert manager_client.post("/admin/connections/botkey/999999/revoke/").status_code == 404


# --- the expiry filter -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("7d", {"in 3 days"}),
        ("30d", {"in 3 days", "in 20 days"}),
        ("expired", {"expired"}),
        ("never", {"never"}),
        ("", {"in 3 days", "in 20 days", "in 60 days", "expired", "never"}),
    ],
)
def test_expiry_filter_looks_ahead(admin_client, make_user, choice, expected):
    user = make_user("bot")
    now = timezone.now()
    for name, expires_at in (
        ("in 3 days", now + timedelta(days=3)),
        ("in 20 days", now + timedelta(days=20)),
        ("in 60 days", now + timedelta(days=60)),
        ("expired", now - timedelta(hours=1)),
        ("never", None),
    ):
        key, _ = bot_key_create(user=user, name=name)
        BotKey.objects.filter(pk=key.pk).update(expires_at=expires_at)
    page = admin_client.get("/admin/connections/botkey/", {"expiry": choice} if choice else {}).content.decode()
    shown = set(re.findall(r'<a href="/admin/connections/botkey/\d+/change/[^"]*">([^<]+)</a>', page))
    assert shown == expected
    assert "Expires in the next 7 days" in page and "Never expires" in page


def test_names_are_escaped_on_the_reach_and_role_pages(admin_client, make_user, make_connection):
    role = Role.objects.create(name="<i>Finance</i>")
    alice = make_user("alice", roles=(role,))
    connection = make_connection(register=False, name="<script>alert(1)</script>")
    connection.roles.add(role)
    key, _ = bot_key_create(user=alice, name="<b>nightly</b>")
    key_page = admin_client.get(f"/admin/connections/botkey/{key.pk}/change/").content.decode()
    assert "<script>alert(1)</script>" not in key_page and "&lt;script&gt;alert(1)&lt;/script&gt;" in key_page
    assert "<td><i>Finance</i></td>" not in key_page and "&lt;i&gt;Finance&lt;/i&gt;" in key_page
    role_page = admin_client.get(f"/admin/connections/role/{role.pk}/change/").content.decode()
    assert "<td><b>nightly</b></td>" not in role_page and "<td>&lt;b&gt;nightly&lt;/b&gt;</td>" in role_page


def test_sending_the_add_form_again_does_not_make_a_second_key(admin_client, make_user):
    # given a key created from the add form
    alice = make_user("alice")
    form = {"user": alice.pk, "name": "nightly", "submission": uuid4().hex}
    assert "crk_" in admin_client.post("/admin/connections/botkey/add/", form).content.decode()
    # when the created page is reloaded (the browser sends the same form again)
    page = admin_client.post("/admin/connections/botkey/add/", form).content.decode()
    # then no second key is made, and the page says why
    assert BotKey.objects.filter(user=alice).count() == 1
    assert "This form was already sent" in page and "crk_" not in page
    # and a form opened again makes one
    fresh = admin_client.get("/admin/connections/botkey/add/").content.decode()
    submission = re.search(r'name="submission" value="([^"]+)"', fresh).group(1)
    admin_client.post("/admin/connections/botkey/add/", {**form, "name": "second", "submission": submission})
    assert BotKey.objects.filter(user=alice).count() == 2


@pytest.mark.parametrize("how", ["delete page", "delete selected"])
def test_deleting_keys_revokes_then_audits_each(admin_client, make_user, how):
    # given two keys of a bot
    owner = make_user("deleted-bot")
    keys = [bot_key_create(user=owner, name=f"runner {n}")[0] for n in range(2)]
    # when an administrator deletes them, from a key's page or with the list's "Delete selected"
    if how == "delete page":
        for key in keys:
            response = admin_client.post(f"/admin/connections/botkey/{key.pk}/delete/", {"post": "yes"})
            assert response.status_code == 302
    else:
        data = {"action": "delete_selected", "_selected_action": [key.pk for key in keys], "post": "yes"}
        assert admin_client.post("/admin/connections/botkey/", data).status_code == 302
    # then they are gone, each revoked first and its deletion recorded with what it was
    assert not BotKey.objects.exists()
    for key in keys:
        events = AuditEvent.objects.filter(detail__contains=f"Key {key.key_id} ").order_by("id")
        assert list(events.values_list("action", flat=True)) == ["bot_key_create", "bot_key_revoke", "bot_key_delete"]
        assert events.last().detail == f"Key {key.key_id} '{key.name}' of deleted-bot"


def test_deleting_webhook_endpoints_is_audited_without_their_secret(admin_client):
    from connections.models import WebhookEndpoint

    endpoints = [
        WebhookEndpoint.objects.create(name=f"Ops {n}", url=f"https://hooks{n}.example/in", secret="whsec-hidden")
        for n in range(2)
    ]
    admin_client.post(f"/admin/connections/webhookendpoint/{endpoints[0].pk}/delete/", {"post": "yes"})
    data = {"action": "delete_selected", "_selected_action": [endpoints[1].pk], "post": "yes"}
    admin_client.post("/admin/connections/webhookendpoint/", data)
    assert not WebhookEndpoint.objects.exists()
    details = list(AuditEvent.objects.filter(action="webhook_delete").order_by("id").values_list("detail", flat=True))
    assert details == ["Webhook endpoint Ops 0 (hooks0.example)", "Webhook endpoint Ops 1 (hooks1.example)"]


def test_created_page_gives_a_ready_to_run_curl_at_the_public_url(admin_client, make_user, make_connection, settings):
    settings.PUBLIC_URL = "https://controlroom.example"
    role = Role.objects.create(name="Finance bots")
    alice = make_user("alice", roles=(role,))
    waiting = make_connection(register=False, name="A waiting")  # reached, but gives no token yet
    ready = make_connection(register=False, name="B ready")
    for connection in (waiting, ready):
        connection.roles.add(role)
    _issue(ready, None)

    page = admin_client.post(
        "/admin/connections/botkey/add/", {"user": alice.pk, "name": "nightly", "submission": uuid4().hex}
    ).content.decode()

    raw = re.search(r'<code id="raw-key" class="raw-key">(crk_\S+)</code>', page).group(1)
    curl = re.search(r'<code id="bot-key-curl" class="raw-key">([^<]+)</code>', page).group(1)
    assert curl == (
        f'curl -H "Authorization: Bearer {raw}" https://controlroom.example/api/v1/connections/{ready.slug}/token'
    )
    assert 'data-copy-from="bot-key-curl"' in page


def test_key_page_says_how_often_last_used_moves_and_revoke_from_delete(admin_client, make_user):
    key, _ = bot_key_create(user=make_user("alice"), name="nightly")
    page = admin_client.get(f"/admin/connections/botkey/{key.pk}/change/").content.decode()
    assert "written at most once a minute" in page
    assert "<strong>Delete</strong> revokes it too, then removes it from this list" in page
    listing = admin_client.get("/admin/connections/botkey/").content.decode()
    assert "Last used (to the minute)" in listing


def test_a_bot_accounts_reach_says_it_gets_shared_connections_only(make_user, make_connection):
    from connections.endpoint.bot_keys import bot_account_create

    role = Role.objects.create(name="Bots")
    robot = bot_account_create(username="robot")
    robot.groups.add(role)
    person = make_user("alice", roles=(role,))
    mine = make_connection(register=False, name="Mine", token_type="user_specific")
    mine.roles.add(role)

    [robot_reach] = connection_reach_for(robot)
    assert not robot_reach.gets_token
    assert robot_reach.status.startswith("robot is a bot account: it gets tokens of shared connections only.")
    [person_reach] = connection_reach_for(person)
    assert person_reach.status == "Not authorized by alice yet: they authorize it on My OAuth connections."
