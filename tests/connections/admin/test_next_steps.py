"""The admin leads on to the next step: a connection no role is invited to links to inviting one (the connection
chosen already), a saved user's page offers a bot key for them (the user chosen already), and the admin's home page
leads to "Bots: getting a token", a page of the admin, since a deployed instance has no README at hand."""

import re
from pathlib import Path

import pytest

from connections.models import Role

pytestmark = pytest.mark.django_db

DOCS_BOTS = Path(__file__).resolve().parents[3] / "docs" / "bots.md"


def _selected(page: str, select_id: str) -> list[str]:
    select = re.search(rf'<select[^>]*id="{select_id}".*?</select>', page, re.DOTALL).group(0)
    return re.findall(r'<option value="(\d+)"[^>]*selected', select)


def test_a_connection_no_role_is_invited_to_links_to_inviting_one(admin_client, make_connection):
    connection = make_connection(register=False, name="Ledger API")
    page = admin_client.get(f"/admin/connections/connection/{connection.pk}/change/").content.decode()
    link = f'href="/admin/connections/role/add/?invited_connections={connection.pk}" id="invite-role-link"'
    assert "No role is invited yet:" in page and link in page

    role_page = admin_client.get(f"/admin/connections/role/add/?invited_connections={connection.pk}").content.decode()
    assert _selected(role_page, "id_invited_connections") == [str(connection.pk)]

    # once a role is invited, the page names it instead
    connection.roles.add(Role.objects.create(name="Finance bots"))
    page = admin_client.get(f"/admin/connections/connection/{connection.pk}/change/").content.decode()
    assert "No role is invited yet" not in page and "Finance bots" in page


def test_a_saved_user_offers_a_bot_key_for_them(admin_client, make_user):
    alice = make_user("alice")
    page = admin_client.get(f"/admin/auth/user/{alice.pk}/change/").content.decode()
    assert f'href="/admin/connections/botkey/add/?user={alice.pk}" id="create-bot-key-link">Create a bot key' in page

    key_form = admin_client.get(f"/admin/connections/botkey/add/?user={alice.pk}").content.decode()
    assert _selected(key_form, "id_user") == [str(alice.pk)]


def test_the_bots_page_of_the_admin_gives_the_call_and_every_error(admin_client, settings):
    settings.PUBLIC_URL = "https://controlroom.example"
    home = admin_client.get("/admin/").content.decode()
    assert 'href="/admin/bots/"' in home and "README" not in home

    page = admin_client.get("/admin/bots/").content.decode()
    assert "<title>Bots: getting a token" in page
    assert "https://controlroom.example/api/v1/connections/&lt;slug&gt;/token" in page
    # the same errors as docs/bots.md's table, each with its status
    documented = re.findall(r"^\| (\d{3}) \| `(\w+)` \|", DOCS_BOTS.read_text(), re.MULTILINE)
    assert len(documented) == 9
    for status, code in documented:
        assert re.search(rf"<td>{status}</td><td><code>{code}</code></td>", page), code


def test_the_bots_page_is_for_signed_in_staff_only(client):
    answer = client.get("/admin/bots/")
    assert answer.status_code == 302 and "/admin/login/" in answer["Location"]
