import hashlib
from io import StringIO
from uuid import uuid4

import pytest
from django.core.management import CommandError, call_command
from django.test import Client

from connections.endpoint.bot_keys import bot_key_check, presented_key
from connections.errors import BotKeyRejected
from connections.models import AuditEvent, BotKey

pytestmark = pytest.mark.django_db


def authenticate(raw: str) -> BotKey:
    """As the token endpoint checks a key it was sent."""
    presented = presented_key(f"Bearer {raw}")
    return bot_key_check(presented, BotKey.objects.select_related("user").filter(key_id=presented.key_id).first())


def test_command_creates_a_key_shown_once_as_the_last_line(make_user):
    make_user("finance-bot")
    out = StringIO()
    call_command("botkey", "create", "--user", "finance-bot", "--name", "nightly", "--expires-days", "30", stdout=out)
    raw = out.getvalue().strip().splitlines()[-1]
    assert raw.startswith("crk_") and len(raw) > 50
    key = BotKey.objects.get()
    assert (key.name, key.user.username) == ("nightly", "finance-bot")
    assert 29 <= (key.expires_at - key.created_at).days <= 30
    # Only a digest is kept: the raw key appears nowhere in the row.
    secret = raw.split("_", 2)[2]
    assert key.digest == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in str(BotKey.objects.filter(pk=key.pk).values().get())
    assert authenticate(raw) == key
    assert raw not in AuditEvent.objects.get(action="bot_key_create").detail


def test_command_refuses_an_unknown_user_and_bad_expiry(make_user):
    with pytest.raises(CommandError, match="No user named 'ghost'"):
        call_command("botkey", "create", "--user", "ghost", stdout=StringIO())
    make_user("bot")
    with pytest.raises(CommandError, match="1 or more"):
        call_command("botkey", "create", "--user", "bot", "--expires-days", "0", stdout=StringIO())
    assert not BotKey.objects.exists()


def test_command_lists_and_revokes(make_user):
    make_user("bot")
    out = StringIO()
    call_command("botkey", "create", "--user", "bot", stdout=out)
    raw = out.getvalue().strip().splitlines()[-1]
    key = BotKey.objects.get()
    listing = StringIO()
    call_command("botkey", "list", stdout=listing)
    assert key.key_id in listing.getvalue() and "active" in listing.getvalue() and raw not in listing.getvalue()
    call_command("botkey", "revoke", key.key_id, stdout=StringIO())
    with pytest.raises(BotKeyRejected, match="revoked"):
        authenticate(raw)


def test_admin_creates_a_key_and_shows_it_once(admin_client, make_user):
    bot = make_user("bot")
    response = admin_client.post(
        "/admin/connections/botkey/add/", {"user": bot.pk, "name": "ci runner", "submission": uuid4().hex}
    )
    assert response.status_code == 200 and "no-store" in response["Cache-Control"]
    page = response.content.decode()
    key = BotKey.objects.get()
    raw = page.split('id="raw-key"')[1].split(">")[1].split("<")[0]
    assert raw.startswith(f"crk_{key.key_id}_")
    assert authenticate(raw) == key
    # Afterwards only its id is ever shown.
    for url in ("/admin/connections/botkey/", f"/admin/connections/botkey/{key.pk}/change/"):
        shown = admin_client.get(url).content.decode()
        assert key.key_id in shown and raw not in shown


def test_admin_revokes_keys(admin_client, make_user):
    from connections.endpoint.bot_keys import bot_key_create

    key, raw = bot_key_create(user=make_user("bot"), name="old")
    admin_client.post("/admin/connections/botkey/", {"action": "revoke_selected", "_selected_action": [key.pk]})
    with pytest.raises(BotKeyRejected, match="revoked"):
        authenticate(raw)


def test_staff_without_permission_cannot_create_keys(make_user):
    staff = make_user(staff=True)
    client = Client()
    client.force_login(staff)
    assert (
        client.post(
            "/admin/connections/botkey/add/", {"user": staff.pk, "name": "x", "submission": uuid4().hex}
        ).status_code
        == 403
    )
    assert not BotKey.objects.exists()
