"""Single sign-on in a real browser: from Control Room's sign-in page to the identity provider (the loopback
server as OpenID Provider) and back, signed in with the roles the person's groups map to; Log out ends the
provider's session too; a session is renewed silently at the provider, with the person's groups as they are
now."""

from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from playwright.sync_api import expect

from connections.models import PersonIdentity
from tests.connections.people.conftest import identity_provider  # noqa: F401 - the fixture, for this module

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def public_url(live_server, settings) -> str:
    settings.PUBLIC_URL = live_server.url
    return live_server.url


def test_a_person_signs_in_with_the_identity_provider_and_out_again(
    public_url,
    identity_provider,  # noqa: F811
    page,
    settings,
):
    # given a person in the provider's "finance" group, mapped to the role Finance, whose members may open the admin
    Group.objects.create(name="Finance")
    username, password = identity_provider.person("grace", groups=["finance", "unrelated"])
    settings.OIDC_ROLE_MAP = {"finance": ["Finance"]}
    settings.OIDC_STAFF_GROUPS = ["finance"]

    # when they open My connections, choose "Sign in with Loopback IdP" and sign in at the provider
    page.goto(f"{public_url}/connections/mine/")
    page.click("#sign-in-with")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("#loginForm button[type=submit]")

    # then they are back on My connections, signed in as a new user in the Finance role, staff by their group
    expect(page.locator("#user-tools")).to_contain_text("Signed in as grace")
    assert page.url == f"{public_url}/connections/mine/"
    user = PersonIdentity.objects.get().user
    assert list(user.groups.values_list("name", flat=True)) == ["Finance"]
    assert user.is_staff and not user.is_superuser

    # when they log out
    page.click("#logout-form button")

    # then the provider's session ended too: signing in again asks for the password at the provider
    expect(page.locator("#sign-in-with")).to_be_visible()
    page.click("#sign-in-with")
    expect(page.locator("#loginForm")).to_be_visible()


def test_a_session_is_renewed_silently_and_takes_a_removed_group_away(
    public_url,
    identity_provider,  # noqa: F811
    page,
    settings,
    time_machine,
):
    # given a person signed in, whose "support" group gives the role Support
    Group.objects.create(name="Support")
    settings.OIDC_ROLE_MAP = {"support": ["Support"]}
    username, password = identity_provider.person("hugo", groups=["support"])
    page.goto(f"{public_url}/accounts/login/")
    page.click("#sign-in-with")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("#loginForm button[type=submit]")
    expect(page.locator("#user-tools")).to_contain_text("Signed in as hugo")
    user = PersonIdentity.objects.get().user
    assert list(user.groups.values_list("name", flat=True)) == ["Support"]

    # when the person leaves the group at the provider, and opens a page once OIDC_RENEW_SECONDS have passed
    identity_provider.server.set_person(username, groups=[])  # the same password: its session there lasts
    time_machine.move_to(timedelta(seconds=settings.OIDC_RENEW_SECONDS + 5), tick=True)
    page.goto(f"{public_url}/connections/mine/")

    # then the session was renewed at the provider without a word from them (its session there lasts), and the
    # role is gone
    expect(page.locator("#user-tools")).to_contain_text("Signed in as hugo")
    assert page.url == f"{public_url}/connections/mine/"
    assert list(user.groups.all()) == []
