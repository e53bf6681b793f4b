"""Credentials that expire: known (a client secret's date, a signing certificate's notAfter, a refresh token's
absolute lifetime from its grant's authorization), shown (the connection page, the list's filter, the dashboard,
/metrics) and warned about at 30, 7 and 1 day(s) before, once each, on a simulated clock."""

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from django.utils import timezone

from connections import selectors, tasks
from connections.models import AuditEvent, BeatHeartbeat, Connection, CredentialWarning, OAuthToken
from connections.notify import expiry, webhooks
from providers.models import Provider
from tests.controlroom.test_metrics import METRICS_TOKEN, samples, scrape

pytestmark = pytest.mark.django_db

EXPIRES = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def told(monkeypatch) -> list[tuple[str, str]]:
    """The webhook events emitted, as (event, connection slug)."""
    emitted: list[tuple[str, str]] = []
    real = webhooks.event_emit

    def record(event: str, connection: Connection | None, message: str, **kwargs: object) -> int:
        emitted.append((event, connection.slug if connection else ""))
        return real(event, connection, message, **kwargs)

    monkeypatch.setattr(webhooks, "event_emit", record)
    return emitted


@pytest.fixture
def managers(make_user):
    return make_user("keeper", perms=("manage_connections",), staff=True)


def test_a_client_secret_is_warned_about_at_30_7_and_1_days_once_each(
    make_connection, managers, mailoutbox, told, time_machine
):
    # given a connection whose client secret expires on 1 March, and managers with an email address
    managers.email = "keeper@example.com"
    managers.save()
    connection = make_connection(register=False, client_secret_expires_at=EXPIRES)

    # when the hourly check runs at these moments before the expiry (twice at each, as two workers might)
    sent_at = {}
    for before in (timedelta(days=40), timedelta(days=29, hours=23), timedelta(days=20), timedelta(days=6, hours=23),
                   timedelta(days=6), timedelta(hours=23), timedelta(hours=1), -timedelta(days=1)):  # fmt: skip
        time_machine.move_to(EXPIRES - before, tick=False)
        sent_at[before] = expiry.credential_expiry_warnings_send() + expiry.credential_expiry_warnings_send()

    # then one warning at each mark, the first time the check saw it, and none after the expiry
    assert [count for count in sent_at.values()] == [0, 1, 0, 1, 0, 1, 0, 0]
    subjects = [message.subject for message in mailoutbox]
    assert subjects == [
        f"[Control Room] Client secret of {connection} expires in 30 days",
        f"[Control Room] Client secret of {connection} expires in 7 days",
        f"[Control Room] Client secret of {connection} expires in 1 day",
    ]
    assert mailoutbox[0].to == ["keeper@example.com"]
    assert "next client secret" in mailoutbox[0].body and "2027-03-01 12:00 UTC" in mailoutbox[0].body
    assert told == [("credential.expiring", connection.slug)] * 3
    assert AuditEvent.objects.filter(action=AuditEvent.Action.CREDENTIAL_EXPIRING).count() == 3


def test_a_check_that_first_sees_a_credential_late_sends_the_mark_it_is_within_only(
    make_connection, managers, mailoutbox, time_machine
):
    managers.email = "keeper@example.com"
    managers.save()
    make_connection(register=False, client_secret_expires_at=EXPIRES)
    time_machine.move_to(EXPIRES - timedelta(days=5), tick=False)
    assert expiry.credential_expiry_warnings_send() == 1
    assert "expires in 7 days" in mailoutbox[0].subject
    # a renewed secret (a new date) gets warnings of its own
    Connection.objects.update(client_secret_expires_at=EXPIRES + timedelta(days=3))
    assert expiry.credential_expiry_warnings_send() == 1
    assert CredentialWarning.objects.count() == 2


def test_a_refresh_tokens_absolute_lifetime_runs_from_its_grants_authorization(make_connection, time_machine):
    # given a provider type whose refresh tokens live 365 days however used, and a grant authorized on 1 March 2026
    provider = Provider.objects.create(
        slug="yearly", name="Yearly", token_url="https://yearly.example/token", refresh_token_max_lifetime=365 * 86400
    )
    connection = make_connection(register=False, provider=provider)
    authorized = datetime(2026, 3, 1, tzinfo=UTC)
    OAuthToken.objects.create(connection=connection, access_token="a", refresh_token="r", authorized_at=authorized)
    app = make_connection(register=False, provider=provider, grant_type="client_credentials")
    OAuthToken.objects.create(connection=app, access_token="a", authorized_at=authorized)  # no refresh token

    # then its expiry is known a year after the authorization, and refreshes do not move it
    (found,) = selectors.credential_expiries()
    assert (found.connection, found.credential, found.expires_at) == (connection, "refresh_token", EXPIRES.replace(
        hour=0))  # fmt: skip
    OAuthToken.objects.filter(connection=connection).update(refreshed_at=timezone.now(), generation=5)
    assert selectors.credential_expiries()[0].expires_at == found.expires_at
    assert selectors.earliest_credential_expiry_by_connection() == {connection.slug: found.expires_at}  # /metrics
    # and it is in the list's filter from 30 days before, not earlier
    expiring = selectors.connections_with_credentials_expiring
    assert list(expiring(Connection.objects.all(), found.expires_at - timedelta(days=31))) == []
    assert list(expiring(Connection.objects.all(), found.expires_at + timedelta(seconds=1))) == [connection]
    # and a new authorization starts a new lifetime
    OAuthToken.objects.filter(connection=connection).update(authorized_at=authorized + timedelta(days=200))
    assert selectors.credential_expiries()[0].expires_at == found.expires_at + timedelta(days=200)


def _key_with_certificate(not_after: datetime) -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "control-room")])
    builder = x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
    builder = builder.serial_number(x509.random_serial_number()).not_valid_before(not_after - timedelta(days=365))
    certificate = builder.not_valid_after(not_after).sign(key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return key_pem + certificate.public_bytes(serialization.Encoding.PEM).decode()


def test_the_signing_certificates_expiry_is_read_from_the_certificate(make_connection):
    connection = make_connection(register=False, client_auth_method="private_key_jwt")
    connection.private_key = _key_with_certificate(EXPIRES)
    connection.save()
    assert Connection.objects.get(pk=connection.pk).signing_certificate_expires_at == EXPIRES
    # a key without a certificate has no known expiry
    connection.private_key = connection.private_key.split("-----BEGIN CERTIFICATE-----")[0]
    connection.save(update_fields=["private_key"])
    assert Connection.objects.get(pk=connection.pk).signing_certificate_expires_at is None


def test_what_expires_next_is_on_the_page_in_the_list_filter_on_the_dashboard_and_in_metrics(
    manager_client, make_connection, settings
):
    # given one connection whose secret expires in 10 days and one in 90
    soon = make_connection(register=False, client_secret_expires_at=timezone.now() + timedelta(days=10))
    later = make_connection(register=False, client_secret_expires_at=timezone.now() + timedelta(days=90))

    page = manager_client.get(f"/admin/connections/connection/{soon.pk}/change/").content.decode()
    assert "Credentials expire" in page and "Client secret: " in page
    listed = manager_client.get("/admin/connections/connection/?credentials=expiring").content.decode()
    assert soon.name in listed and later.name not in listed
    dashboard = manager_client.get("/admin/connections/connection/dashboard/").content.decode()
    assert "Credentials expiring within 30 days" in dashboard and soon.name in dashboard
    assert later.name not in dashboard.split("credentials-expiring")[1]

    settings.METRICS_TOKEN = METRICS_TOKEN
    found = samples(scrape().content.decode())
    seconds = found[("controlroom_credential_expiry_seconds", (("connection", soon.slug),))]
    assert 9 * 86400 < seconds <= 10 * 86400
    assert found[("controlroom_credential_expiry_seconds", (("connection", later.slug),))] > 89 * 86400


def test_the_check_runs_once_an_hour_however_many_beats_queue_it(make_connection, mailoutbox, time_machine):
    time_machine.move_to(datetime(2027, 2, 27, 10, 5, tzinfo=UTC), tick=False)
    make_connection(register=False, client_secret_expires_at=EXPIRES)
    assert tasks.credential_expiry_warn() == 1
    assert tasks.credential_expiry_warn() is None  # this hour's check was run
    assert BeatHeartbeat.objects.get(name="credential-expiry").period_start == datetime(2027, 2, 27, 10, tzinfo=UTC)
