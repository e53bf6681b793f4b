"""The audit list: actions in words, a readable detail column, and refused token requests found by the connection
they asked for (its label), in the list, its filter, its search and the CSV export."""

import csv
import io
import re
from pathlib import Path

import pytest
from django.contrib.staticfiles import finders

from connections.audit.events import Action, Outcome, audit_record
from connections.cache import token_cache
from connections.models import AuditEvent
from tests.conftest import get_token

pytestmark = pytest.mark.django_db


def _listed_ids(page: str) -> set[int]:
    return {int(pk) for pk in re.findall(r'href="/admin/connections/auditevent/(\d+)/change/', page)}


def test_actions_are_shown_in_words(admin_client):
    event = audit_record(action=Action.TOKEN_REFRESH, outcome=Outcome.SUCCESS, detail="Refreshed.")
    page = admin_client.get("/admin/connections/auditevent/").content.decode()
    assert '<td class="field-what">Token refreshed<br><span class="audit-outcome audit-success">Success</span>' in page
    assert '<a href="?action__exact=token_refresh">Token refreshed</a>' in page  # the filter
    detail = admin_client.get(f"/admin/connections/auditevent/{event.pk}/change/").content.decode()
    assert "Token refreshed (Success)" in detail and "token_refresh success" not in detail


def test_the_detail_column_wraps(admin_client):
    audit_record(action=Action.TOKEN_REFRESH, outcome=Outcome.SUCCESS, detail="word " * 200)
    page = admin_client.get("/admin/connections/auditevent/").content.decode()
    assert "connections/audit_list.css" in page
    rules = Path(finders.find("connections/audit_list.css")).read_text()
    assert re.search(r"td\.field-detail \{[^}]*white-space: normal;[^}]*max-width: \d+em", rules)


def test_a_refused_request_for_an_unknown_slug_keeps_it_as_its_connection(admin_client, bot, make_connection):
    # given a connection the bot may use, and one it may not
    allowed = make_connection(register=False)
    bot.invite(allowed)
    forbidden = make_connection(register=False)

    # when the bot asks for a slug no connection has, and for one it is not invited to
    assert get_token(bot.raw_key, "no-such-connection").status_code == 404
    assert get_token(bot.raw_key, forbidden.slug).status_code == 403

    # then each event names the slug asked for as its connection; the unknown one links no connection
    unknown = AuditEvent.objects.get(connection_label="no-such-connection")
    assert unknown.connection is None and unknown.outcome == "failure" and "[" not in unknown.detail
    refused = AuditEvent.objects.get(connection_label=forbidden.slug)
    assert refused.connection is None and "403 forbidden" in refused.detail

    # and the list's connection filter finds them, and only them
    listing = admin_client.get("/admin/connections/auditevent/", {"connection_label": "no-such-connection"})
    assert _listed_ids(listing.content.decode()) == {unknown.pk}
    page = admin_client.get("/admin/connections/auditevent/", {"connection_label": forbidden.slug}).content.decode()
    assert _listed_ids(page) == {refused.pk}
    assert f"{forbidden.name} ({forbidden.slug})" in page  # the filter offers the connections by name
    nowhere = admin_client.get("/admin/connections/auditevent/", {"connection_label": "~none"}).content.decode()
    assert _listed_ids(nowhere) == {unknown.pk}
    # the label links to that filter
    everything = admin_client.get("/admin/connections/auditevent/").content.decode()
    assert '<a href="?connection_label=no-such-connection"' in everything
    # and search finds it too
    found = admin_client.get("/admin/connections/auditevent/", {"q": "no-such"}).content.decode()
    assert _listed_ids(found) == {unknown.pk}

    # and the CSV export follows the filter
    export = admin_client.get("/admin/connections/auditevent/export.csv", {"connection_label": "no-such-connection"})
    rows = list(csv.reader(io.StringIO(b"".join(export.streaming_content).decode())))
    assert [row[2] for row in rows] == ["connection_label", "no-such-connection"]


def test_what_is_not_a_slug_never_becomes_a_label(bot):
    # too long for a slug (and the column), and not a slug's shape: quoted, cut short, in the detail only
    for asked in ("x" * 121, "bad slug", "semi;colon"):
        assert get_token(bot.raw_key, asked).status_code == 404
    events = list(AuditEvent.objects.filter(action="token_request").order_by("id"))
    assert [event.connection_label for event in events] == ["", "", ""]
    assert events[0].detail.endswith(f"[{'x' * 60!r}]") and "'bad slug'" in events[1].detail
    # the longest slug fits its column
    assert get_token(bot.raw_key, "y" * 120).status_code == 404
    assert AuditEvent.objects.latest("id").connection_label == "y" * 120


def test_an_unknown_key_asking_for_a_slug_is_labelled_too(bot):
    assert get_token("crk_000000000000_wrong", "some-connection").status_code == 401
    event = AuditEvent.objects.get(action="token_request")
    assert (event.actor_label, event.connection_label, event.connection) == ("unknown key", "some-connection", None)


def test_rolled_up_answers_say_which_key_got_which_token_when_and_how_often(admin_client, bot_connection, bot):
    # given a bot answered four times (once through the database, three times from memory), reported
    for _ in range(4):
        assert get_token(bot.raw_key, bot_connection.slug).status_code == 200
    assert token_cache.report()
    # then the list says how many each row accounts for, and how they were given
    page = admin_client.get("/admin/connections/auditevent/", {"kind": "memory"}).content.decode()
    assert "Token requested by a bot, 3 times (Token answers from memory)" in page
    # and the CSV export has the key, the connection, the first and last time and the count of each row
    export = admin_client.get("/admin/connections/auditevent/export.csv", {"action__exact": "token_request"})
    rows = list(csv.DictReader(io.StringIO(b"".join(export.streaming_content).decode())))
    assert sorted((row["actor_label"], row["connection_label"], row["kind"], row["count"]) for row in rows) == [
        (f"finance-bot (key {bot.key.key_id})", bot_connection.slug, "full", "1"),
        (f"finance-bot (key {bot.key.key_id})", bot_connection.slug, "memory", "3"),
    ]
    memory = next(row for row in rows if row["kind"] == "memory")
    assert memory["created_at"] < memory["last_at"]
