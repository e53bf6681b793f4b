"""apply_config / export_config: the YAML of docs/operations.md's "Configuration as code", idempotent, all-or-nothing,
secrets by reference only."""

from io import StringIO
from pathlib import Path

import pytest
import yaml
from django.contrib.auth.models import Group, User
from django.core.management import CommandError, call_command
from django.utils import timezone

from connections.config.apply import config_apply, config_plan
from connections.models import AuditEvent, Connection

pytestmark = pytest.mark.django_db

EXAMPLE = """
users:
  - username: finance-bot
    email: finance-bot@example.com
roles:
  - name: Finance bots
    permissions: [view_connections]
    users: [finance-bot]
    connections: [salesforce-prod]
connections:
  - name: Salesforce prod
    slug: salesforce-prod
    description: Finance org
    provider: salesforce
    placeholders: {yourinstance: acme}
    grant_type: authorization_code_pkce
    token_type: shared
    client_id: 3MVG9-example
    client_secret_env: SF_CLIENT_SECRET
    scopes: api,refresh_token,offline_access
    extra_authorization_params: {prompt: consent}
  - name: Okta service
    provider: okta
    placeholders: {yourinstance: acme}
    grant_type: client_credentials
    client_id: okta-client
    client_secret_file: okta.secret
    scopes: [api]
"""


@pytest.fixture
def config(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("SF_CLIENT_SECRET", "sf-secret-from-env")
    (tmp_path / "okta.secret").write_text("okta-secret-from-file\n")

    def write(text: str = EXAMPLE) -> Path:
        path = tmp_path / "controlroom.yaml"
        path.write_text(text)
        return path

    return write


def apply(path: Path, *args: str) -> str:
    out = StringIO()
    call_command("apply_config", str(path), *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def _state() -> dict:
    return {
        "connections": list(Connection.objects.order_by("slug").values()),
        "roles": [
            (role.name, sorted(role.permissions.values_list("codename", flat=True)),
             sorted(role.user_set.values_list("username", flat=True)),
             sorted(role.connections.values_list("slug", flat=True)))
            for role in Group.objects.order_by("name")
        ],
        "users": list(User.objects.order_by("username").values_list("username", "email")),
    }  # fmt: skip


def test_apply_on_an_empty_database(config):
    output = apply(config())
    assert "Applied: 4 created, 0 updated." in output
    salesforce = Connection.objects.get(slug="salesforce-prod")
    assert salesforce.effective_token_url == "https://acme.salesforce.com/services/oauth2/token"
    assert salesforce.client_secret == "sf-secret-from-env"
    assert salesforce.extra_authorization_params == {"prompt": "consent"}
    okta = Connection.objects.get(slug="okta-service")
    assert okta.client_secret == "okta-secret-from-file" and okta.grant_type == "client_credentials"
    assert okta.scopes == "api"
    role = Group.objects.get(name="Finance bots")
    assert list(role.user_set.values_list("username", flat=True)) == ["finance-bot"]
    assert list(role.connections.all()) == [salesforce]
    assert list(role.permissions.values_list("codename", flat=True)) == ["view_connections"]
    bot = User.objects.get(username="finance-bot")
    assert bot.email == "finance-bot@example.com" and not bot.has_usable_password()
    assert AuditEvent.objects.filter(action="config_create").count() == 3  # a user and two connections
    role_event = AuditEvent.objects.get(action="role_update", actor_label="apply_config")
    assert role_event.detail == (
        "Role Finance bots created: permissions view_connections; members finance-bot; connections salesforce-prod."
    )


def test_a_role_the_file_changes_reads_as_changed_not_created(config):
    apply(config())
    apply(config(EXAMPLE.replace("users: [finance-bot]", "users: []")))
    latest = AuditEvent.objects.filter(action="role_update").latest("id")
    assert latest.detail == "Role Finance bots: members removed finance-bot."


def test_applying_twice_changes_nothing(config):
    path = config()
    apply(path)
    before = _state()
    events = AuditEvent.objects.count()
    output = apply(path)
    assert "Nothing to change." in output and output.count("unchanged") == 4
    assert _state() == before and AuditEvent.objects.count() == events


def test_an_edit_is_an_update(config, monkeypatch):
    apply(config())
    monkeypatch.setenv("SF_CLIENT_SECRET", "rotated-secret")
    output = apply(config(EXAMPLE.replace("description: Finance org", "description: Finance org (EU)")))
    assert "update    connection salesforce-prod (description, client secret)" in output
    salesforce = Connection.objects.get(slug="salesforce-prod")
    assert (salesforce.description, salesforce.client_secret) == ("Finance org (EU)", "rotated-secret")


def test_applying_keeps_what_the_engine_wrote_after_the_plan_was_made(config):
    # given a connection applied once, and the plan of a changed file, made (read) now
    path = config()
    apply(path)
    changed = config(EXAMPLE.replace("description: Finance org", "description: Finance org (EU)"))
    plan = config_plan(changed.read_text(), base_dir=changed.parent)
    # when, before the plan is written, bots get tokens and a Connect fails (the engine writes those fields)
    issued_at = timezone.now()
    Connection.objects.filter(slug="salesforce-prod").update(
        last_token_issued_at=issued_at, last_failure="Connect: access_denied", last_failure_at=issued_at,
        failures_in_a_row=2,
    )  # fmt: skip
    config_apply(plan)
    # then the file's change is stored, and what the engine wrote meanwhile is still there
    salesforce = Connection.objects.get(slug="salesforce-prod")
    assert salesforce.description == "Finance org (EU)"
    engine_wrote = (salesforce.last_token_issued_at, salesforce.last_failure, salesforce.failures_in_a_row)
    assert engine_wrote == (issued_at, "Connect: access_denied", 2)


def test_dry_run_prints_the_plan_and_writes_nothing(config):
    output = apply(config(), "--dry-run")
    assert "create    connection salesforce-prod" in output and "create    role Finance bots" in output
    assert "Dry run: nothing was written." in output
    assert not Connection.objects.exists() and not Group.objects.exists()
    assert not User.objects.filter(username="finance-bot").exists()


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (("provider: salesforce", "provider: salesfroce"), "provider 'salesfroce' is not a provider type"),
        (
            ("placeholders: {yourinstance: acme}\n    grant_type: authorization_code_pkce", "grant_type: implicit"),
            "grant_type: Value 'implicit' is not a valid choice",
        ),
        (("placeholders: {yourinstance: acme}\n    grant", "grant"), "placeholders.yourinstance: Salesforce needs"),
        (("users: [finance-bot]", "users: [finance-bot, ghost]"), "user 'ghost' is neither in the users section"),
        (
            ("grant_type: authorization_code_pkce", "grant_type: implicit"),
            "grant_type: Value 'implicit' is not a valid choice",
        ),
        (
            ("name: Okta service", "name: Okta service\n    slug: salesforce-prod"),
            "slug salesforce-prod is used by another",
        ),
        (("client_secret_env: SF_CLIENT_SECRET", "client_secret_env: MISSING_SECRET"),
         "the environment variable MISSING_SECRET (client_secret_env) is not set"),
        (("client_secret_file: okta.secret", "client_secret_file: nowhere.secret"), "cannot read client_secret_file"),
        (("client_secret_env: SF_CLIENT_SECRET", "client_secret: hunter2"), "client_secret is written inline"),
        (
            ("permissions: [view_connections]", "permissions: [admin_everything]"),
            "unknown permission 'admin_everything'",
        ),
        (("connections: [salesforce-prod]", "connections: [no-such]"), "connection 'no-such' is neither"),
        (("token_type: shared", "token_type: personal"), "token_type: Value 'personal' is not a valid choice"),
        (("description: Finance org", "descripton: Finance org"), "unknown key(s) descripton"),
    ],
)  # fmt: skip
def test_any_error_changes_nothing_and_names_its_place(config, edit, problem):
    # given a database already holding an earlier version, and a file with one mistake
    apply(config())
    before = _state()
    broken = config(EXAMPLE.replace(*edit))
    # when
    err = StringIO()
    with pytest.raises(CommandError, match="nothing was changed"):
        call_command("apply_config", str(broken), stdout=StringIO(), stderr=err)
    # then
    assert problem in err.getvalue(), err.getvalue()
    assert "line " in err.getvalue()
    assert _state() == before


def test_every_problem_is_listed_at_once(config):
    broken = EXAMPLE.replace("provider: okta", "provider: nope").replace("users: [finance-bot]", "users: [ghost]")
    err = StringIO()
    with pytest.raises(CommandError, match="2 problem"):
        call_command("apply_config", str(config(broken)), stdout=StringIO(), stderr=err)
    assert "connections[1] (Okta service)" in err.getvalue() and "roles[0] (Finance bots)" in err.getvalue()


def test_export_then_apply_on_a_fresh_database_reproduces_the_setup(config, tmp_path, monkeypatch, django_db_blocker):
    apply(config())
    before = _state()
    out = StringIO()
    call_command("export_config", stdout=out)
    exported = out.getvalue()
    assert "sf-secret-from-env" not in exported and "okta-secret-from-file" not in exported
    document = yaml.safe_load(exported)
    assert {item["client_secret_env"] for item in document["connections"]} == {
        "SALESFORCE_PROD_CLIENT_SECRET",
        "OKTA_SERVICE_CLIENT_SECRET",
    }

    # a fresh database: nothing of the above left
    Connection.objects.all().delete()
    Group.objects.all().delete()
    User.objects.all().delete()
    monkeypatch.setenv("SALESFORCE_PROD_CLIENT_SECRET", "sf-secret-from-env")
    monkeypatch.setenv("OKTA_SERVICE_CLIENT_SECRET", "okta-secret-from-file")
    exported_path = tmp_path / "exported.yaml"
    exported_path.write_text(exported)
    apply(exported_path)

    after = _state()
    strip = lambda rows: [{k: v for k, v in row.items() if k not in ("id", "created_at", "updated_at")} for row in rows]  # noqa: E731
    assert strip(after["connections"]) == strip(before["connections"])
    assert after["roles"] == before["roles"] and after["users"] == before["users"]
    assert apply(exported_path).count("unchanged") == 4
