"""Password sign-in switched off (or kept for a break-glass account only), the "Sign in with" link on both sign-in
pages, logout that ends the identity provider's session too, and sessions that end with the provider's or after
SESSION_MAX_HOURS."""

from datetime import timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests
from django.contrib.auth.models import Group, User
from django.test import Client

from connections.models import AuditEvent, BotAccount, PersonIdentity
from tests.connections.people.conftest import CLIENT_ID, sign_in
from tests.support.processes import manage, minimal_env


@pytest.fixture
def root(db) -> User:
    return User.objects.create_superuser("root", "root@example.com", "root-password-1")


def password_sign_in(path: str, username: str, password: str) -> Client:
    client = Client()
    client.post(path, {"username": username, "password": password})
    return client


@pytest.mark.parametrize("path", ["/accounts/login/", "/admin/login/"])
def test_both_sign_in_pages_offer_the_identity_provider_and_keep_where_to_go(identity_provider, path):
    page = Client().get(path, {"next": "/connections/mine/?q=crm"}).content.decode()
    assert 'href="/oidc/authenticate/?next=/connections/mine/%3Fq%3Dcrm"' in page
    assert "Sign in with Loopback IdP" in page and 'id="login-form"' in page


@pytest.mark.parametrize("path", ["/accounts/login/", "/admin/login/"])
def test_password_sign_in_off_lets_nobody_in_with_a_password(identity_provider, settings, root, path):
    settings.PASSWORD_SIGN_IN_ALLOWS = "nobody"

    page = Client().get(path).content.decode()
    client = password_sign_in(path, "root", "root-password-1")

    assert "Password sign-in is switched off" in page and 'id="login-form"' not in page
    assert "_auth_user_id" not in client.session


def test_break_glass_keeps_password_sign_in_for_that_account_only(identity_provider, settings, root):
    settings.PASSWORD_SIGN_IN_ALLOWS, settings.BREAK_GLASS_USERNAME = "break-glass", "root"
    User.objects.create_user("manager", password="manager-password-1", is_staff=True)

    assert 'id="break-glass"' in Client().get("/admin/login/").content.decode()
    assert password_sign_in("/admin/login/", "root", "root-password-1").session["_auth_user_id"] == str(root.pk)
    assert "_auth_user_id" not in password_sign_in("/admin/login/", "manager", "manager-password-1").session


def test_a_password_session_ends_when_password_sign_in_is_switched_off(identity_provider, settings, root):
    client = password_sign_in("/accounts/login/", "root", "root-password-1")
    settings.PASSWORD_SIGN_IN_ALLOWS = "nobody"
    assert client.get("/connections/mine/").status_code == 302


def test_logout_ends_the_identity_providers_session_too(identity_provider, settings):
    username, password = identity_provider.person("mia")
    client = Client()
    sign_in(client, identity_provider, username, password)

    answer = client.post("/accounts/logout/")

    end_session = urlsplit(answer["Location"])
    query = parse_qs(end_session.query)
    assert answer["Location"].startswith(identity_provider.server.end_session_url)
    assert query["client_id"] == [CLIENT_ID]
    assert query["post_logout_redirect_uri"] == [f"{settings.PUBLIC_URL}/accounts/login/"]
    assert query["id_token_hint"][0].count(".") == 2
    assert "_auth_user_id" not in client.session


def test_the_admins_logout_of_a_password_session_ends_it_here_only(identity_provider, root):
    client = password_sign_in("/admin/login/", "root", "root-password-1")
    answer = client.post("/admin/logout/")
    assert answer["Location"] == "/accounts/login/"
    assert "_auth_user_id" not in client.session


def test_a_session_is_renewed_silently_and_ends_with_the_providers(identity_provider, settings, time_machine):
    # given a person signed in with the identity provider
    username, password = identity_provider.person("noor")
    client = Client()
    sign_in(client, identity_provider, username, password)
    assert client.get("/connections/mine/").status_code == 200

    # when OIDC_RENEW_SECONDS have passed
    time_machine.move_to(timedelta(seconds=settings.OIDC_RENEW_SECONDS + 5), tick=True)
    renewing = client.get("/connections/mine/")

    # then the page first asks the provider, silently, whether the person is still signed in there
    query = parse_qs(urlsplit(renewing["Location"]).query)
    assert renewing["Location"].startswith(identity_provider.server.authorize_url) and query["prompt"] == ["none"]
    assert query["client_id"] == [CLIENT_ID] and query["code_challenge_method"] == ["S256"]

    # when the provider's session has ended (a browser without it: login_required)
    answer = requests.get(renewing["Location"], allow_redirects=False, timeout=10)
    assert answer.is_redirect, answer.text[:3000]
    back = urlsplit(answer.headers["Location"])
    assert parse_qs(back.query)["error"] == ["login_required"]
    ended = client.get(f"{back.path}?{back.query}")

    # then the session here has ended too, said on the page
    assert ended.status_code == 403 and "Your session at Loopback IdP has ended" in ended.content.decode()
    assert client.get("/connections/mine/").status_code == 302
    assert PersonIdentity.objects.count() == 1


@pytest.mark.parametrize("change", ["deactivated", "made a bot account"])
def test_a_session_ends_when_the_person_may_no_longer_sign_in(identity_provider, change):
    # given a person signed in with the identity provider
    username, password = identity_provider.person("omar")
    client = Client()
    sign_in(client, identity_provider, username, password)
    assert client.get("/connections/mine/").status_code == 200

    # when an administrator deactivates them, or makes their account a bot's
    user = PersonIdentity.objects.get().user
    if change == "deactivated":
        User.objects.filter(pk=user.pk).update(is_active=False)
    else:
        BotAccount.objects.create(user=user)

    # then their next request finds them signed out
    answer = client.get("/connections/mine/")
    assert answer.status_code == 302 and answer["Location"].startswith("/accounts/login/")


def renew(client: Client, provider, username: str, password: str, settings, time_machine):
    """Let the session come due for renewal, and answer the silent sign-in at the provider (prompt=none dropped:
    the test's browser holds no session at the provider, where the person's would): the callback's response."""
    time_machine.move_to(timedelta(seconds=settings.OIDC_RENEW_SECONDS + 5), tick=True)
    renewing = urlsplit(client.get("/connections/mine/")["Location"])
    query = {name: values for name, values in parse_qs(renewing.query).items() if name != "prompt"}
    asking = renewing._replace(query=urlencode(query, doseq=True)).geturl()
    back = urlsplit(provider.server.authorize_with_requests(asking, username, password))
    return client.get(f"{back.path}?{back.query}")


def test_a_silent_renewal_is_audited_only_when_it_changes_something(identity_provider, settings, time_machine):
    # given a person signed in with the identity provider, whose groups map to roles
    support = Group.objects.create(name="Support")
    settings.OIDC_ROLE_MAP = {"help": ["Support"]}
    username, password = identity_provider.person("ruth")
    client = Client()
    sign_in(client, identity_provider, username, password)
    signed_in = AuditEvent.objects.filter(action="sign_in", outcome="success").count()

    # when the session is renewed with nothing changed, then nothing more is audited
    assert renew(client, identity_provider, username, password, settings, time_machine).status_code == 302
    assert AuditEvent.objects.filter(action="sign_in", outcome="success").count() == signed_in

    # when it is renewed after the person joined a mapped group, then the renewal is audited, with the role's join
    identity_provider.server.set_person(username, password, groups=["help"])
    assert renew(client, identity_provider, username, password, settings, time_machine).status_code == 302
    assert list(PersonIdentity.objects.get().user.groups.all()) == [support]
    renewed = AuditEvent.objects.filter(action="sign_in", outcome="success").latest("id")
    assert renewed.detail == "Session renewed with Loopback IdP."
    assert "_auth_user_id" in client.session


def test_a_refused_renewal_ends_the_session(identity_provider, settings, time_machine):
    # given a person signed in with the identity provider, whose session is due for renewal
    username, password = identity_provider.person("pia")
    client = Client()
    sign_in(client, identity_provider, username, password)

    # when the provider answers with a code, but its ID token is spoilt
    identity_provider.server.spoil_next_id_token("audience")
    refused = renew(client, identity_provider, username, password, settings, time_machine)

    # then the renewal is refused, and the session has ended
    assert refused.status_code == 403 and "issued to another application" in refused.content.decode()
    assert "_auth_user_id" not in client.session
    assert client.get("/connections/mine/").status_code == 302


def test_a_session_ends_after_session_max_hours(identity_provider, settings, time_machine, root):
    settings.SESSION_MAX_HOURS = 8
    client = password_sign_in("/accounts/login/", "root", "root-password-1")
    assert client.get("/connections/mine/").status_code == 200

    time_machine.move_to(timedelta(hours=8, minutes=1), tick=True)

    answer = client.get("/connections/mine/")
    assert answer.status_code == 302 and answer["Location"].startswith("/accounts/login/")
    assert "_auth_user_id" not in client.session


@pytest.mark.parametrize(
    ("variables", "sentence"),
    [
        ({"PASSWORD_SIGN_IN": "off"}, "PASSWORD_SIGN_IN is not on, but OIDC_ISSUER is not set"),
        ({"PASSWORD_SIGN_IN": "maybe"}, "PASSWORD_SIGN_IN must be on, off or break-glass:<username>"),
        ({"OIDC_ISSUER": "https://login.example.com"}, "set OIDC_CLIENT_ID and OIDC_CLIENT_SECRET too"),
        ({"OIDC_ROLE_MAP": "finance"}, "OIDC_ROLE_MAP: 'finance' is not group=Role name"),
    ],
)
def test_a_sign_in_setting_that_cannot_work_stops_start_up(tmp_path: Path, variables, sentence):
    result = manage("check", env=minimal_env(tmp_path, DEBUG="true", **variables))
    assert result.returncode != 0 and sentence in result.stderr, result.stderr


def test_the_sign_in_settings_are_read_from_the_env_file_too(tmp_path: Path):
    # given a .env file that switches password sign-in off, with no issuer
    env_file = tmp_path / "people.env"
    env_file.write_text("PASSWORD_SIGN_IN=off\n")

    # when the settings are loaded
    result = manage("check", env={**minimal_env(tmp_path, DEBUG="true"), "ENV_FILE": str(env_file)})

    # then the file's value was read (and refused: nobody could sign in)
    assert result.returncode != 0 and "PASSWORD_SIGN_IN is not on" in result.stderr, result.stderr
