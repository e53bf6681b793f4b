"""Small things a new administrator or bot author meets first: where / leads, what a POST to the token endpoint
answers, and what a URL that is not one is called."""

import pytest
from django.test import Client

from connections.errors import OutboundError
from connections.outbound.policy import check_url

pytestmark = pytest.mark.django_db


def test_a_post_to_the_token_endpoint_gets_json_not_a_csrf_page(bot_connection, bot):
    client = Client(enforce_csrf_checks=True)
    answer = client.post(f"/api/v1/connections/{bot_connection.slug}/token", HTTP_AUTHORIZATION=f"Bearer {bot.raw_key}")
    assert answer.status_code == 405 and answer["Allow"] == "GET" and answer["Content-Type"] == "application/json"
    assert answer.json()["error"] == "method_not_allowed" and "answers GET" in answer.json()["detail"]
    assert answer["Cache-Control"] == "no-store"
    got = client.get(f"/api/v1/connections/{bot_connection.slug}/token", HTTP_AUTHORIZATION=f"Bearer {bot.raw_key}")
    assert got.status_code == 200


def test_the_root_leads_administrators_to_the_admin_and_others_to_their_connections(make_user):
    assert Client().get("/")["Location"] == "/admin/"  # then the admin's login page
    staff, member = Client(), Client()
    staff.force_login(make_user("staff-person", perms=("view_connections",), staff=True))
    member.force_login(make_user("member-person"))
    assert staff.get("/")["Location"] == "/admin/"
    assert member.get("/")["Location"] == "/connections/mine/"
    assert 'href="/connections/mine/"' in staff.get("/admin/").content.decode()  # the admin's "View site"


@pytest.mark.parametrize("typed", ["login.example.com/oauth/token", "/oauth/token", "https://"])
def test_a_url_that_is_not_one_is_called_so(typed):
    with pytest.raises(OutboundError, match="is not a URL: give the whole address"):
        check_url(typed)


def test_the_admin_says_not_a_url_for_a_token_url_without_https(manager_client):
    from providers.models import Provider

    form = {
        "name": "Typed without scheme",
        "provider": str(Provider.objects.get(slug="custom").pk),
        "grant_type": "client_credentials",
        "token_type": "shared",
        "client_id": "id",
        "client_secret": "secret",
        "token_url": "login.example.com/oauth/token",
        "extra_authorization_params": "{}",
        "tokens-TOTAL_FORMS": "0",
        "tokens-INITIAL_FORMS": "0",
    }
    response = manager_client.post("/admin/connections/connection/add/", form)
    errors = " ".join(response.context["adminform"].form.errors["token_url"])
    assert "is not a URL" in errors and "Refused to call ://" not in errors
