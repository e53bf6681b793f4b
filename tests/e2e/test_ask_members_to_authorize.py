"""Asking members to authorize, in a real browser: a manager asks on the connection page, and the link in the member's
e-mail leads, through the sign-in page, to that connection's Authorize button, which sends them to the provider for
it."""

import re
from urllib.parse import parse_qs, urlsplit

import pytest
from django.contrib.auth.models import Group, User
from playwright.sync_api import expect

from tests.e2e.conftest import sign_in_as_root

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_the_emailed_link_leads_to_the_connections_authorize_button(
    live_server, settings, page, browser, make_connection, mailoutbox
):
    settings.PUBLIC_URL = live_server.url
    settings.OAUTH_REDIRECT_URI = f"{live_server.url}/oauth/callback/"
    # given two user-specific connections invited to the Support role, one's slug within the other's, whose member
    # ben has authorized neither
    support = Group.objects.create(name="Support")
    crm = make_connection(token_type="user_specific", name="CRM", slug="crm")
    other = make_connection(token_type="user_specific", name="CRM Europe", slug="crm-eu")
    for connection in (crm, other):
        connection.roles.add(support)
    User.objects.create_user("ben", email="ben@corp.example", password="ben-password-1").groups.add(support)

    # when a manager opens the CRM's page and asks Support's members to authorize
    sign_in_as_root(page, live_server.url)
    page.goto(f"{live_server.url}/admin/connections/connection/{crm.pk}/change/")
    expect(page.locator("tr.member-authorization[data-username=ben]")).to_contain_text("Not yet")
    page.select_option("#ask-role", label="Support")
    page.click("#ask-members")
    expect(page.locator(".messagelist")).to_contain_text("Asked 1 member(s) of Support to authorize: ben.")
    expect(page.locator("tr.member-authorization[data-username=ben]")).not_to_contain_text("—")

    # then ben's e-mail holds a link, which leads him, once signed in, to the CRM and its Authorize button only (not
    # to CRM Europe, whose slug contains the CRM's)
    (mail,) = mailoutbox
    link = re.search(r"http://\S+", mail.body).group(0)
    member = browser.new_context().new_page()
    member.goto(link)
    member.fill("#id_username", "ben")
    member.fill("#id_password", "ben-password-1")
    member.click("#login-form input[type=submit]")
    rows = member.locator("tr.connection-row")
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-slug", "crm")

    # and the button sends him to the provider to authorize the CRM's client
    rows.first.get_by_role("button", name="Authorize").click()
    member.wait_for_url(re.compile(r".*/accounts/login/.*"))
    authorize = parse_qs(urlsplit(parse_qs(urlsplit(member.url).query)["next"][0]).query)
    assert authorize["client_id"] == [crm.client_id]
    member.context.close()
