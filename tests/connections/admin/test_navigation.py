"""Finding one's way: the admin's home (getting started, its links, the order of its apps, View site), one date
format to the second, My connections searched and filtered with a confirmed Disconnect, the token endpoint's
words for a connection nobody authorized, and the first administrator's password in a banner."""

import re
from io import StringIO

import pytest
from django.contrib.auth.models import Group, User
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from connections.endpoint.bot_keys import bot_key_create
from connections.models import OAuthToken, TokenState
from connections.web import views as web_views
from tests.conftest import authorize_and_store_token, get_token, messages_of

pytestmark = pytest.mark.django_db


@pytest.fixture
def root_client() -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("root", "root@example.com", "pw"))
    return client


def test_the_admin_home_lists_getting_started_with_links_to_each_step(root_client, settings):
    page = root_client.get("/admin/").content.decode()
    started = page[page.index('id="getting-started"') :]
    links = re.findall(r'<li><a href="([^"]+)">', started)
    assert links[:4] == [
        "/admin/connections/connection/add/",
        "/admin/connections/role/add/",
        "/admin/auth/user/add/",
        "/admin/connections/botkey/add/",
    ]
    curl = re.search(r'<pre id="first-token-curl">(.*?)</pre>', started).group(1)
    assert curl == (
        f'curl -H "Authorization: Bearer &lt;bot key&gt;" {settings.PUBLIC_URL}/api/v1/connections/&lt;slug&gt;/token'
    )
    assert "Bots: getting a token" in started
    for link in (
        'id="outbound-link"',
        'href="/admin/outbound/"',
        'href="/connections/mine/"',
        "/admin/connections/connection/dashboard/",
    ):
        assert link in page


@pytest.mark.parametrize("who", ["root_client", "manager_client"])
def test_every_link_of_getting_started_answers_whoever_sees_it(request, who):
    client = request.getfixturevalue(who)
    page = client.get("/admin/").content.decode()
    started = page[page.index('id="getting-started"') : page.index("</ol>")]
    links = re.findall(r'href="(/[^"]+)"', started)
    assert len(links) == (5 if who == "root_client" else 3)  # a manager may not add roles or users; + the bots page
    for link in [*links, "/admin/outbound/", "/admin/connections/connection/dashboard/"]:
        assert client.get(link).status_code == 200, link
    if who == "manager_client":
        assert "Create a role (someone who may add roles does this)" in started


def test_getting_started_is_for_those_who_manage_connections(make_user):
    viewer = Client()
    viewer.force_login(make_user("viewer", perms=("view_connections",), staff=True))
    page = viewer.get("/admin/").content.decode()
    assert 'id="getting-started"' not in page and 'href="/admin/outbound/"' in page


def test_view_site_goes_to_my_connections(manager_client):
    page = manager_client.get("/admin/").content.decode()
    assert re.search(r'<a href="/connections/mine/">View site</a>', page)


def test_the_login_security_tables_come_after_the_oauth_ones(root_client):
    response = root_client.get("/admin/")
    labels = [app["app_label"] for app in response.context["app_list"]]
    assert labels[-1] == "axes" and labels.index("connections") < labels.index("axes")
    assert labels[:-1] == sorted(labels[:-1])  # the others as Django orders them
    sidebar = [app["app_label"] for app in root_client.get("/admin/connections/connection/").context["available_apps"]]
    assert sidebar == labels
    page = response.content.decode()
    assert page.index("OAuth connections") < page.index("Access attempts")


def test_dates_show_seconds_in_admin_lists_and_readonly_fields(root_client, make_user):
    key, _ = bot_key_create(user=make_user("dated-bot"), name="dated key")
    shown = timezone.localtime(key.created_at).strftime("%Y-%m-%d %H:%M:%S")

    listing = root_client.get("/admin/connections/botkey/").content.decode()
    assert re.search(rf'<td class="field-created_at[^"]*">{shown}</td>', listing)

    change = root_client.get(f"/admin/connections/botkey/{key.pk}/change/").content.decode()
    readonly = re.search(r'field-created_at.*?<div class="readonly">(.*?)</div>', change, re.S).group(1)
    assert readonly == shown


# --- My OAuth connections: search, status filter, confirmed Disconnect ------------------------------------------


@pytest.fixture
def agent_setup(make_connection, make_user, authserver):
    """An agent invited to four user-specific connections: connected, refresh failing, not connected, disabled."""
    role = Group.objects.create(name="Support agents")
    connected = make_connection(token_type="user_specific", name="Helpdesk CRM", description="Tickets for EMEA")
    failing = make_connection(token_type="user_specific", name="Calendar sync")
    untouched = make_connection(token_type="user_specific", name="Drive archive", slug="drive-archive")
    disabled = make_connection(token_type="user_specific", name="Old wiki", is_enabled=False)
    for connection in (connected, failing, untouched, disabled):
        connection.roles.add(role)
    agent = make_user("agent", roles=(role,))
    client = Client()
    client.force_login(agent)
    authorize_and_store_token(client, connected, authserver)
    authorize_and_store_token(client, failing, authserver)
    OAuthToken.objects.filter(connection=failing).update(state=TokenState.REFRESH_FAILING)
    return client, {"connected": connected, "failing": failing, "untouched": untouched, "disabled": disabled}


def listed(client: Client, **params: str) -> list[str]:
    response = client.get("/connections/mine/", params)
    assert response.status_code == 200
    return re.findall(r'<tr class="connection-row" data-slug="([^"]+)">', response.content.decode())


def test_my_connections_are_searched_by_name_slug_provider_and_description(agent_setup):
    client, made = agent_setup
    assert len(listed(client)) == 4
    assert listed(client, q="helpdesk") == [made["connected"].slug]
    assert listed(client, q="DRIVE-ARCH") == ["drive-archive"]
    assert listed(client, q="emea") == [made["connected"].slug]
    assert len(listed(client, q="custom")) == 4  # the provider type's name
    page = client.get("/connections/mine/", {"q": "payroll"}).content.decode()
    assert 'id="no-match"' in page and "No connection matches “payroll”" in page
    assert 'value="payroll"' in page  # kept in the form


@pytest.mark.parametrize(
    ("status", "which"),
    [
        ("connected", "connected"),
        ("refresh_failing", "failing"),
        ("not_connected", "untouched"),
        ("disabled", "disabled"),
    ],
)
def test_my_connections_are_filtered_by_status(agent_setup, status, which):
    client, made = agent_setup
    assert listed(client, status=status) == [made[which].slug]
    page = client.get("/connections/mine/", {"status": status}).content.decode()
    assert f'<option value="{status}" selected>' in page


def test_my_connections_come_a_page_at_a_time_with_the_search_and_filter_kept(agent_setup, monkeypatch):
    client, made = agent_setup
    monkeypatch.setattr(web_views, "MY_CONNECTIONS_PER_PAGE", 2)
    first, second = listed(client), listed(client, p="2")
    assert len(first) == len(second) == 2 and set(first) | set(second) == {c.slug for c in made.values()}
    page = client.get("/connections/mine/", {"q": "custom", "p": "1"}).content.decode()  # the provider type's name
    assert "Page 1 of 2 (4 connections)" in page and 'href="?q=custom&amp;p=2" rel="next"' in page
    assert listed(client, status="connected", p="1") == [made["connected"].slug]  # filtered before paging


def test_search_and_filter_combine_and_an_unknown_status_is_ignored(agent_setup):
    client, made = agent_setup
    assert listed(client, q="helpdesk", status="not_connected") == []
    assert (
        "No connection matches “helpdesk” with that status"
        in client.get("/connections/mine/", {"q": "helpdesk", "status": "not_connected"}).content.decode()
    )
    assert listed(client, status="reauthorization_required") == []
    OAuthToken.objects.filter(connection=made["failing"]).update(state=TokenState.REAUTHORIZATION_REQUIRED)
    assert listed(client, status="reauthorization_required") == [made["failing"].slug]
    assert len(listed(client, status="<script>")) == 4


def test_disconnect_asks_first_and_says_the_grant_is_revoked_at_the_provider(agent_setup, authserver):
    client, made = agent_setup
    connection = made["connected"]
    token = OAuthToken.objects.get(connection=connection)
    page = client.get(f"/connections/mine/{connection.slug}/disconnect/").content.decode()
    assert 'id="revokes"' in page and "revoked at the provider" in page and 'id="confirm-disconnect"' in page
    assert OAuthToken.objects.filter(pk=token.pk).exists()  # asking changed nothing

    response = client.post(f"/connections/mine/{connection.slug}/disconnect/")

    assert response["Location"] == "/connections/mine/"
    assert any(f"Disconnected {connection}" in text for text in messages_of(response))
    assert not OAuthToken.objects.filter(pk=token.pk).exists()
    assert authserver.whoami(token.access_token).status_code == 401


def test_disconnect_says_when_the_provider_cannot_revoke(agent_setup):
    client, made = agent_setup
    connection = made["failing"]
    connection.revocation_url = ""
    connection.save(update_fields=["revocation_url"])
    page = client.get(f"/connections/mine/{connection.slug}/disconnect/").content.decode()
    assert 'id="not-revoked"' in page and "offers no revocation endpoint" in page


def test_there_is_nothing_to_confirm_without_a_token_of_ones_own(agent_setup, make_connection):
    client, made = agent_setup
    assert client.get(f"/connections/mine/{made['untouched'].slug}/disconnect/").status_code == 404
    assert client.get(f"/connections/mine/{make_connection().slug}/disconnect/").status_code == 404  # shared
    assert client.get("/connections/mine/no-such-connection/disconnect/").status_code == 404
    page = client.get("/connections/mine/").content.decode()
    row = re.search(rf'data-slug="{made["untouched"].slug}">(.*?)</tr>', page, re.S).group(1)
    assert "Disconnect" not in row and "Authorize" in row


# --- The token endpoint's words for a connection nobody authorized ---------------------------------------------


def test_a_connection_nobody_authorized_is_said_so(make_connection, bot, make_user):
    shared = make_connection(register=False)
    bot.invite(shared)
    answer = get_token(bot.raw_key, shared.slug)
    assert answer.status_code == 409 and answer.json()["error"] == "not_connected"
    assert answer.json()["detail"] == f"{shared.slug} is not connected: nobody has authorized it yet."

    own = make_connection(token_type="user_specific", register=False)
    bot.invite(own)
    answer = get_token(bot.raw_key, own.slug)
    assert answer.status_code == 409
    assert answer.json()["detail"] == f"{own.slug} is not connected: finance-bot has not authorized it yet."


# --- make run's first administrator ------------------------------------------------------------------------------


def test_the_generated_password_is_printed_in_a_banner_once(monkeypatch):
    for name in ("DJANGO_SUPERUSER_USERNAME", "DJANGO_SUPERUSER_EMAIL", "DJANGO_SUPERUSER_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    out = StringIO()
    call_command("ensure_admin", stdout=out, no_color=True)
    lines = out.getvalue().strip().splitlines()
    assert lines[0] == lines[-1] and set(lines[0]) == {"="}
    password = re.search(r"password: (\S+)", out.getvalue()).group(1)
    assert User.objects.get(username="admin").check_password(password)
    assert all(len(line) <= len(lines[0]) for line in lines)

    again = StringIO()
    call_command("ensure_admin", stdout=again, no_color=True)
    assert again.getvalue().strip() == "An administrator already exists." and password not in again.getvalue()


def test_the_sign_in_page_for_everyone_is_control_rooms():
    page = Client().get("/accounts/login/").content.decode()
    assert "<title>Sign in | Control Room</title>" in page and "Django administration" not in page


def test_the_cookies_have_names_of_their_own():
    # a provider on the same host (another Django site, say) must not replace the admin's session
    client = Client()
    client.get("/accounts/login/")
    assert "controlroom_csrftoken" in client.cookies and "csrftoken" not in client.cookies
    User.objects.create_user("alice", password="alice-password-1")
    client.post("/accounts/login/", {"username": "alice", "password": "alice-password-1"})
    assert "controlroom_sessionid" in client.cookies and "sessionid" not in client.cookies


def test_ensure_admin_takes_an_email_from_the_environment_or_asks_for_one(monkeypatch):
    for name in ("DJANGO_SUPERUSER_USERNAME", "DJANGO_SUPERUSER_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DJANGO_SUPERUSER_EMAIL", "ops@example.com")
    out = StringIO()
    call_command("ensure_admin", stdout=out, no_color=True)
    assert User.objects.get(username="admin").email == "ops@example.com"
    assert "Failure notices are e-mailed to ops@example.com." in out.getvalue()

    # in a terminal, without the variable: asked, a mistyped address asked again
    User.objects.all().delete()
    monkeypatch.delenv("DJANGO_SUPERUSER_EMAIL")
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    answers = iter(["not-an-address", "admin@example.com"])
    monkeypatch.setattr("builtins.input", lambda prompt: next(answers))
    errors = StringIO()
    call_command("ensure_admin", stdout=StringIO(), stderr=errors, no_color=True)
    assert User.objects.get(username="admin").email == "admin@example.com"
    assert "'not-an-address' is not an e-mail address" in errors.getvalue()

    # with none (Enter), the banner says that nobody will be told
    User.objects.all().delete()
    monkeypatch.setattr("builtins.input", lambda prompt: "")
    out = StringIO()
    call_command("ensure_admin", stdout=out, no_color=True)
    assert "No e-mail address: nobody is told when a connection fails" in out.getvalue()
