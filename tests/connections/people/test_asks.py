"""Asking a role's members to authorize a user-specific connection: e-mails (Django's outbox) with the link to its
Authorize button, the webhook event authorization.requested, at most one a day per member, the audit event, and
the connection page's list of who has authorized and who has not."""

import json
from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group, User

from connections.models import AuditEvent, AuthorizationAsk, BotAccount, OAuthToken
from tests.support.receiver import WebhookReceiver

pytestmark = pytest.mark.django_db


@pytest.fixture
def hook(settings, celery_eager) -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver(204).start()
    settings.NOTIFY_WEBHOOK_URL, settings.NOTIFY_WEBHOOK_SECRET = receiver.url, ""
    yield receiver
    receiver.stop()


@pytest.fixture
def crm(make_connection):
    """A user-specific connection invited to the role Support, whose members are ann (authorized already), ben
    and cy (not), a deactivated member and a bot account."""
    support = Group.objects.create(name="Support")
    connection = make_connection(token_type="user_specific", register=False, name="Helpdesk CRM", slug="helpdesk-crm")
    connection.roles.add(support)
    for name in ("ann", "ben", "cy"):
        User.objects.create_user(name, email=f"{name}@corp.example").groups.add(support)
    User.objects.create_user("gone", email="gone@corp.example", is_active=False).groups.add(support)
    bot = User.objects.create_user("support-bot", email="bot@corp.example")
    bot.groups.add(support)
    BotAccount.objects.create(user=bot)
    OAuthToken.objects.create(connection=connection, user=User.objects.get(username="ann"), access_token="a")
    return connection


def ask(client, connection, role_name="Support"):
    role = Group.objects.get(name=role_name)
    return client.post(f"/admin/connections/connection/{connection.pk}/ask/", {"role": role.pk}, follow=True)


def test_members_without_a_token_are_emailed_a_link_to_the_authorize_button(
    crm, manager_client, mailoutbox, hook, settings, django_capture_on_commit_callbacks
):
    # when a manager asks the Support role's members
    with django_capture_on_commit_callbacks(execute=True):
        page = ask(manager_client, crm)

    # then ben and cy (no token, people, active) are e-mailed the link to the connection on My connections
    assert sorted(mail.to[0] for mail in mailoutbox) == ["ben@corp.example", "cy@corp.example"]
    link = f"{settings.PUBLIC_URL}/connections/mine/?connection=helpdesk-crm"
    assert all(
        link in mail.body and mail.subject == "[Control Room] Please authorize Helpdesk CRM" for mail in mailoutbox
    )
    assert "Asked 2 member(s) of Support to authorize: ben, cy." in page.content.decode()
    # and the webhook gets authorization.requested for each
    events = [json.loads(body) for _, body in hook.received]
    assert [(event["event"], event["connection"]) for event in events] == [
        ("authorization.requested", "helpdesk-crm")
    ] * 2
    # and the ask is audited
    audited = AuditEvent.objects.get(action="authorization_ask")
    assert audited.actor.username == "manager" and audited.connection == crm
    assert "asked to authorize: ben, cy" in audited.detail and "already authorized: 1" in audited.detail


def test_a_member_is_reminded_at_most_once_a_day(crm, manager, manager_client, mailoutbox, time_machine):
    ask(manager_client, crm)
    mailoutbox.clear()

    # when the manager asks again within the day
    page = ask(manager_client, crm)

    # then nobody is e-mailed again, and the manager is told why
    assert mailoutbox == []
    assert "Not asked again yet (asked less than a day ago): ben, cy." in page.content.decode()

    # when a day has passed and ben has authorized meanwhile
    OAuthToken.objects.create(connection=crm, user=User.objects.get(username="ben"), access_token="b")
    time_machine.move_to(timedelta(days=1, minutes=1), tick=True)
    manager_client.force_login(manager)  # the next day's session (SESSION_MAX_HOURS ended the first)
    ask(manager_client, crm)

    # then only cy is reminded, the second time
    assert [mail.to for mail in mailoutbox] == [["cy@corp.example"]]
    assert AuthorizationAsk.objects.get(user__username="cy").times_asked == 2


def test_the_connection_page_lists_who_has_authorized_and_who_has_not(crm, manager_client):
    ask(manager_client, crm)

    page = manager_client.get(f"/admin/connections/connection/{crm.pk}/change/").content.decode()

    assert page.count('class="member-authorization has-authorized"') == 1
    assert page.count('class="member-authorization has-not-authorized"') == 2
    assert 'data-username="ann"' in page and 'data-username="support-bot"' not in page
    assert 'id="ask-members"' in page


@pytest.mark.parametrize(
    ("change", "said"),
    [("shared", "one shared token"), ("not invited", "is not invited to use")],
)
def test_an_ask_that_cannot_be_made_is_refused_with_the_reason(crm, manager_client, mailoutbox, change, said):
    if change == "shared":
        crm.token_type = "shared"
        crm.save()
    else:
        crm.roles.clear()
    page = ask(manager_client, crm).content.decode()
    assert said in page and mailoutbox == []
    assert not AuditEvent.objects.filter(action="authorization_ask").exists()


def test_only_a_manager_may_ask(crm, make_user, client, mailoutbox):
    client.force_login(make_user("viewer", perms=("view_connections",), staff=True))
    assert client.post(f"/admin/connections/connection/{crm.pk}/ask/", {"role": 1}).status_code == 403
    assert mailoutbox == []
