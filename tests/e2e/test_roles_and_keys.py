"""An administrator's roles and bot keys in a real browser: a role with a member and invited connections, a bot
key for that member with its reach, the Copy button, Revoke from the key's page, and the audit list."""

import re

import pytest
from django.contrib.auth.models import User
from django.test import Client
from playwright.sync_api import expect

from connections.models import AuditEvent, BotKey, Role
from tests.connections.admin.test_permissions import _issue
from tests.e2e.conftest import choose, sign_in_as_root

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def _create_role(page, url: str) -> None:
    """The role page: a name, a member, two invited connections; Save and continue editing."""
    page.goto(f"{url}/admin/connections/role/add/")
    page.fill("#id_name", "Finance bots")
    choose(page, "members", "finance-bot")
    choose(page, "invited_connections", "Finance CRM")
    choose(page, "invited_connections", "Finance mail")
    page.click("input[name=_continue]")
    expect(page.locator(".messagelist .success").first).to_contain_text("was added successfully")


def _create_key(page, url: str) -> str:
    """Bot keys > Add for finance-bot; returns the raw key shown once."""
    page.goto(f"{url}/admin/connections/botkey/add/")
    page.select_option("#id_user", label="finance-bot")
    page.fill("#id_name", "nightly runner")
    page.click("input[name=_save]")
    expect(page.locator("#raw-key")).to_contain_text("crk_")
    return page.locator("#raw-key").inner_text().strip()


def _ask_for_token(raw_key: str) -> int:
    return Client().get("/api/v1/connections/finance-crm/token", HTTP_AUTHORIZATION=f"Bearer {raw_key}").status_code


def test_role_member_key_reach_copy_and_revoke(laptop_page, live_server, make_connection):
    page = laptop_page
    # given an administrator, a bot runner, a connected shared connection and a user-specific one
    User.objects.create_user("finance-bot")
    shared = make_connection(register=False, name="Finance CRM", slug="finance-crm")
    _issue(shared, None)
    personal = make_connection(register=False, name="Finance mail", slug="finance-mail", token_type="user_specific")
    sign_in_as_root(page, live_server.url)

    # when they create a role with the bot runner as member, invited to both connections
    _create_role(page, live_server.url)
    role = Role.objects.get(name="Finance bots")
    assert list(role.user_set.values_list("username", flat=True)) == ["finance-bot"]
    assert set(role.connections.all()) == {shared, personal}
    expect(page.locator(".field-member_bot_keys")).to_contain_text("No member of Finance bots has a bot key.")

    # and create a bot key for that member
    raw_key = _create_key(page, live_server.url)

    # then the key is shown once, with a working Copy button and the connections it reaches
    copy = page.locator("#copy-key")
    expect(copy).to_be_visible()
    copy.click()
    expect(copy).to_have_text(re.compile(r"^(Copied|Select and copy)$"))
    reach = page.locator("table.bot-key-reach")
    expect(reach.locator("tr[data-slug=finance-crm] .reach-gets-token")).to_have_text("Yes")
    expect(reach.locator("tr[data-slug=finance-mail] .reach-gets-token")).to_have_text("No")
    expect(reach.locator("tr[data-slug=finance-mail]")).to_contain_text("Not authorized by finance-bot yet")
    assert _ask_for_token(raw_key) == 200

    # and the key's page shows the same reach, and the role's page the key
    page.click("#key-page")
    expect(page.locator(".field-reach tr[data-slug=finance-crm] .reach-gets-token")).to_have_text("Yes")
    key = BotKey.objects.get()
    page.goto(f"{live_server.url}/admin/connections/role/{role.pk}/change/")
    expect(page.locator(f"tr.member-key[data-key-id='{key.key_id}']")).to_contain_text("Active")
    page.click(f"tr.member-key[data-key-id='{key.key_id}'] a")

    # when they revoke it from its own page, confirming
    page.click("#revoke-link")
    expect(page.locator("#content")).to_contain_text("cannot be restored")
    page.click("#confirm-revoke")

    # then it is revoked, says so, and gets no token any more
    expect(page.locator(".messagelist .success")).to_contain_text("Revoked the key")
    expect(page.locator(".field-state .readonly")).to_have_text("Revoked")
    expect(page.locator(".field-reach")).to_contain_text("This key is revoked: it gets no token.")
    expect(page.locator("#revoke-link")).to_have_count(0)
    assert _ask_for_token(raw_key) == 401
    assert AuditEvent.objects.filter(action="bot_key_revoke", actor_label="root").count() == 1
    _audit_list_reads_well(page, live_server.url)


def _audit_list_reads_well(page, url: str) -> None:
    """The audit list says it all in words, its detail column wrapped within the screen beside both sidebars."""
    page.goto(f"{url}/admin/connections/auditevent/")
    rows = page.locator("#result_list tbody tr")
    expect(rows.filter(has_text="Bot key revoked")).to_have_count(1)
    created = rows.filter(has_text="Role changed").first.locator("td.field-detail")
    expect(created).to_have_text(
        "Role Finance bots created: permissions none; members finance-bot; connections finance-crm, finance-mail."
    )
    overflow = page.locator("#changelist .results").evaluate("element => element.scrollWidth - element.clientWidth")
    assert overflow <= 0, f"the audit table is {overflow} px wider than its place at 1366"
    assert page.evaluate("document.documentElement.scrollWidth") <= 1366
    assert created.bounding_box()["width"] >= 180
