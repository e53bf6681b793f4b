"""Bot accounts: a key acts as its user, so a person's key is created by that person or a superuser, and the
managers create keys only for bot accounts (users that are bots: no usable password, no sign-in). Existing keys
keep working."""

import pytest
from django.contrib.auth.models import User
from django.test import Client

from connections.endpoint.bot_keys import bot_account_create, bot_key_create
from connections.errors import ConnectionActionError
from connections.models import AuditEvent, BotAccount, BotKey
from tests.conftest import get_token

pytestmark = pytest.mark.django_db


def test_a_manager_cannot_make_a_key_for_a_person_but_for_a_bot_account(manager, make_user):
    # given a person, a superuser and a bot account
    person, boss = make_user("alice"), User.objects.create_superuser("boss", "boss@example.com", "pw")
    robot = bot_account_create(username="finance-bot", created_by=manager)
    # then a manager may create the bot account's key, and their own, but not a person's nor a superuser's
    assert bot_key_create(user=robot, name="runner", created_by=manager)[0].user == robot
    assert bot_key_create(user=manager, name="mine", created_by=manager)[0].user == manager
    for other in (person, boss):
        with pytest.raises(ConnectionActionError, match="A key acts as its user"):
            bot_key_create(user=other, name="impersonation", created_by=manager)
    # and a person and a superuser may make a person's key, as may the operator's command line (no creator)
    assert bot_key_create(user=person, name="own", created_by=person)[0].user == person
    assert bot_key_create(user=person, name="by boss", created_by=boss)[0].user == person
    assert bot_key_create(user=person, name="cli")[0].user == person


def test_the_add_form_offers_a_manager_only_bot_accounts_and_themself(manager, manager_client, make_user):
    person = make_user("alice")
    robot = bot_account_create(username="finance-bot", created_by=manager)
    page = manager_client.get("/admin/connections/botkey/add/")
    offered = {user.pk for user in page.context["adminform"].form.fields["user"].queryset}
    assert offered == {robot.pk, manager.pk}
    # and a forged choice is refused, with no key made
    form = page.context["adminform"].form
    data = {"user": person.pk, "name": "forged", "submission": form["submission"].value()}
    response = manager_client.post("/admin/connections/botkey/add/", data)
    assert response.status_code == 200 and "Select a valid choice" in response.content.decode()
    assert not BotKey.objects.filter(user=person).exists()


def test_a_bot_account_never_signs_in_even_with_a_password(manager_client):
    response = manager_client.post("/admin/connections/botaccount/add/", {"username": "ops-bot", "email": ""})
    assert response.status_code == 302
    robot = User.objects.get(username="ops-bot")
    assert BotAccount.objects.filter(user=robot).exists() and not robot.has_usable_password()
    assert AuditEvent.objects.filter(action="bot_account_create", detail__contains="ops-bot").exists()
    robot.set_password("a-password-set-later")
    robot.save()
    response = Client().post("/accounts/login/", {"username": "ops-bot", "password": "a-password-set-later"})
    assert response.status_code == 200 and "_auth_user_id" not in response.wsgi_request.session


def test_a_persons_key_made_before_keeps_working(bot_connection, bot, make_user):
    # given a person's key made before the rule (say, by a manager), the person in a role invited to the connection
    person = make_user("legacy-person", roles=(bot.role,))
    _, raw = bot_key_create(user=person, name="legacy")
    BotKey.objects.filter(user=person).update(created_by=bot.user)
    # then it still gets the connection's token
    response = get_token(raw, bot_connection.slug)
    assert response.status_code == 200, response.content
