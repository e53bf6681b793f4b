"""Signed JWT assertions (RFC 7523) against the loopback server, which verifies each with the client's registered
public key, checks its audience and expiry, and takes each jti once: private_key_jwt client authentication for the
authorization code exchange, refresh, client credentials and revocation; the JWT bearer grant; and what a wrong or
unusable key gives."""

import base64
import logging
from datetime import UTC, datetime, timedelta
from io import StringIO

import jwt
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from django.core.management import CommandError, call_command

from connections import services
from connections.engine import refresh
from connections.errors import ProviderError
from connections.models import AuditEvent, Connection, TokenState
from connections.oauth import assertions
from tests.conftest import PROVIDER_USER, authorize_and_store_token, get_token, messages_of, shared_token

pytestmark = pytest.mark.django_db


def _pem(key) -> str:
    encoding, fmt = serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8
    return key.private_bytes(encoding, fmt, serialization.NoEncryption()).decode()


def _public_pem(key) -> str:
    encoding, fmt = serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    return key.public_key().public_bytes(encoding, fmt).decode()


KEYS = {
    "RS256": rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "ES256": ec.generate_private_key(ec.SECP256R1()),
}


def signing_connection(make_connection, algorithm: str, **fields) -> Connection:
    """A connection that authenticates with private_key_jwt, its client registered with the public key only."""
    key = KEYS[algorithm]
    fields.setdefault("client_auth_method", "private_key_jwt")
    return make_connection(
        public_key=_public_pem(key), key_id=f"key-{algorithm}", private_key=_pem(key),
        private_key_id=f"key-{algorithm}", client_secret="", **fields,
    )  # fmt: skip


@pytest.mark.parametrize("algorithm", KEYS)
def test_private_key_jwt_connects_refreshes_and_revokes(algorithm, make_connection, manager_client, authserver):
    connection = signing_connection(make_connection, algorithm)
    token = authorize_and_store_token(
        manager_client, connection, authserver
    )  # the code exchange, authenticated by an assertion
    assert authserver.whoami(token.access_token).status_code == 200
    refreshed = refresh.token_refresh(token=shared_token(connection), actor_label="test")
    refreshed = refresh.token_refresh(token=refreshed, actor_label="test")  # a fresh jti each time
    assert authserver.whoami(refreshed.access_token).status_code == 200
    assert authserver.stats()["token_requests"]["refresh_token"] == 2
    services.connection_disconnect(connection=connection, actor=None)
    assert authserver.stats()["revocations"] == 2
    assert authserver.whoami(refreshed.access_token).status_code == 401


@pytest.mark.parametrize("algorithm", KEYS)
def test_private_key_jwt_gets_client_credentials_tokens(algorithm, make_connection, bot):
    connection = signing_connection(make_connection, algorithm, grant_type="client_credentials")
    bot.invite(connection)
    answer = get_token(bot.raw_key, connection.slug)
    assert answer.status_code == 200, answer.content
    assert answer.json()["access_token"] == shared_token(connection).access_token


def test_the_server_takes_an_assertion_once(make_connection, authserver):
    # the loopback server is a real check: the same signed assertion presented twice is refused the second time
    key = KEYS["RS256"]
    connection = signing_connection(make_connection, "RS256", grant_type="client_credentials")
    assertion = assertions.assertion_sign(
        key_pem=_pem(key), key_id="key-RS256", issuer=connection.client_id, subject=connection.client_id,
        audience=authserver.token_url,
    )  # fmt: skip
    form = {
        "grant_type": "client_credentials",
        "client_id": connection.client_id,
        "client_assertion_type": assertions.CLIENT_ASSERTION_TYPE,
        "client_assertion": assertion,
    }
    assert requests.post(authserver.token_url, data=form, timeout=10).status_code == 200
    again = requests.post(authserver.token_url, data=form, timeout=10)
    assert again.status_code == 401 and "jti was used before" in again.text


def test_a_wrong_key_is_a_clear_permanent_failure_that_shows_no_key(make_connection, authserver, caplog):
    # given a connection whose key is not the one registered at the provider
    connection = signing_connection(make_connection, "RS256", grant_type="client_credentials")
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    Connection.objects.filter(pk=connection.pk).update(private_key=_pem(other))
    connection.refresh_from_db()
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ProviderError) as failure:
        refresh.app_token_obtain(connection=connection)
    assert failure.value.permanent and failure.value.error == "invalid_client"
    assert "signature does not verify" in failure.value.message
    secret_lines = _pem(other).splitlines()[1:-1]
    said = failure.value.message + caplog.text + " ".join(AuditEvent.objects.values_list("detail", flat=True))
    assert not any(line in said for line in secret_lines)


def test_the_jwt_bearer_grant_obtains_and_renews_tokens_for_its_subject(make_connection, bot, authserver):
    # given a service-account-like connection: a signed assertion naming the user it acts as, no secret, no person
    connection = signing_connection(
        make_connection, "ES256", grant_type="jwt_bearer", client_auth_method="", jwt_subject=PROVIDER_USER[0]
    )
    bot.invite(connection)
    # when a bot asks, a token is obtained for that user
    answer = get_token(bot.raw_key, connection.slug)
    assert answer.status_code == 200, answer.content
    token = shared_token(connection)
    assert token.refresh_token == "" and token.scope == "read write"
    assert authserver.whoami(token.access_token).json()["username"] == PROVIDER_USER[0]
    # and before it expires the engine obtains a new one the same way (there is no refresh token)
    renewed = refresh.token_refresh(token=token, actor_label="test")
    assert renewed.access_token != token.access_token and renewed.state == TokenState.ACTIVE
    assert authserver.stats()["token_requests"]["jwt_bearer"] == 2


def test_a_jwt_bearer_subject_the_provider_does_not_know_is_refused(make_connection):
    connection = signing_connection(
        make_connection, "RS256", grant_type="jwt_bearer", client_auth_method="", jwt_subject="nobody@example.com"
    )
    with pytest.raises(ProviderError, match="invalid_grant") as failure:
        refresh.app_token_obtain(connection=connection)
    assert failure.value.permanent


def _certificate(key) -> x509.Certificate:
    """A self-signed certificate of the key (what an administrator uploads to Entra)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "control-room")])
    now = datetime.now(UTC)
    builder = x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
    builder = builder.serial_number(x509.random_serial_number()).not_valid_before(now)
    return builder.not_valid_after(now + timedelta(days=1)).sign(key, hashes.SHA256())


def _x5t(certificate: x509.Certificate) -> str:
    return base64.urlsafe_b64encode(certificate.fingerprint(hashes.SHA1())).rstrip(b"=").decode()  # noqa: S303


def _cert_pem(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def test_a_certificate_after_the_key_puts_its_thumbprint_in_x5t():
    key = KEYS["RS256"]
    certificate = _certificate(key)
    pem = _pem(key) + _cert_pem(certificate)
    signed = assertions.assertion_sign(key_pem=pem, key_id="", issuer="app", subject="app", audience="https://t")
    assert jwt.get_unverified_header(signed)["x5t"] == _x5t(certificate)
    claims = jwt.decode(signed, _public_pem(key), algorithms=["RS256"], audience="https://t")
    assert claims["iss"] == claims["sub"] == "app" and claims["exp"] - claims["iat"] == assertions.ASSERTION_LIFETIME


def test_the_keys_own_certificate_is_found_in_a_chain():
    key = KEYS["ES256"]
    own = _certificate(key)
    chain = _another_certificate() + _cert_pem(own)  # another certificate (an intermediate) first
    loaded = assertions.signing_key_load(_pem(key) + chain)
    assert (loaded.algorithm, loaded.thumbprint) == ("ES256", _x5t(own))


def test_a_jwt_bearer_request_with_a_secret_in_the_body_names_the_client():
    from connections.oauth.client import JwtBearerClient

    body = JwtBearerClient("app-id").prepare_request_body(
        assertion="signed", include_client_id=True, client_secret="s3cr3t", code=None, redirect_uri="https://x"
    )
    assert "client_id=app-id" in body and "client_secret=s3cr3t" in body and "redirect_uri" not in body


def _another_certificate() -> str:
    return _cert_pem(_certificate(ec.generate_private_key(ec.SECP256R1())))


UNUSABLE_KEYS = {
    "not PEM": ("hello", "No PEM private key found"),
    "with a passphrase": (
        KEYS["RS256"]
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
        .decode(),
        "protected by a passphrase",
    ),
    "a small RSA key": (_pem(rsa.generate_private_key(public_exponent=65537, key_size=1024)), "1024 bits"),  # noqa: S505
    "another curve": (_pem(ec.generate_private_key(ec.SECP384R1())), "P-256"),
    "someone else's certificate": (_pem(KEYS["RS256"]) + _another_certificate(), "is the private key's"),
}


@pytest.mark.parametrize("case", UNUSABLE_KEYS)
def test_an_unusable_key_is_refused_in_the_admin_and_never_shown_back(case, manager_client, make_connection):
    key_text, said = UNUSABLE_KEYS[case]
    connection = make_connection(client_auth_method="private_key_jwt", private_key=_pem(KEYS["ES256"]))
    page = f"/admin/connections/connection/{connection.pk}/change/"
    form = manager_client.get(page).context["adminform"].form
    data = {name: form[name].value() for name in form.fields if form[name].value() is not None}
    data.update(
        {
            "private_key": key_text,
            "roles": [],
            "extra_authorization_params": "{}",
            "tokens-TOTAL_FORMS": "0",
            "tokens-INITIAL_FORMS": "0",
        }
    )
    response = manager_client.post(page, {k: v for k, v in data.items() if v is not None})
    assert response.status_code == 200, messages_of(response)
    assert said in " ".join(response.context["adminform"].form.errors["private_key"])
    body = response.content.decode()
    assert all(line not in body for line in key_text.splitlines()[1:-1] if len(line) > 20)
    connection.refresh_from_db()
    assert connection.private_key == _pem(KEYS["ES256"])  # the stored key is kept


SIGNER_CONFIG = """
connections:
  - name: YAML signer
    provider: custom
    token_url: {token_url}
    grant_type: client_credentials
    client_id: yaml-signer
    client_auth_method: private_key_jwt
    {key_line}
    private_key_id: signer-1
"""


def test_apply_config_takes_the_key_by_reference_only_and_export_writes_the_reference(tmp_path, authserver, settings):
    key = KEYS["ES256"]
    authserver.create_client(
        "yaml-signer", "unused-secret", [], grant_type="client-credentials", public_key=_public_pem(key)
    )
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "signer.pem").write_text(_pem(key))
    path = tmp_path / "controlroom.yaml"
    path.write_text(SIGNER_CONFIG.format(token_url=authserver.token_url, key_line="private_key_file: keys/signer.pem"))
    call_command("apply_config", str(path), stdout=StringIO(), stderr=StringIO())
    connection = Connection.objects.get(slug="yaml-signer")
    assert (connection.private_key.strip(), connection.private_key_id) == (_pem(key).strip(), "signer-1")
    assert authserver.whoami(refresh.app_token_obtain(connection=connection).access_token).status_code == 200

    exported = StringIO()
    call_command("export_config", stdout=exported)
    assert "private_key_env: YAML_SIGNER_PRIVATE_KEY" in exported.getvalue()
    assert "private_key_id: signer-1" in exported.getvalue()
    assert not any(line in exported.getvalue() for line in _pem(key).splitlines()[1:-1])

    path.write_text(SIGNER_CONFIG.format(token_url=authserver.token_url, key_line="private_key: inline"))
    errors = StringIO()
    with pytest.raises(CommandError):
        call_command("apply_config", str(path), stdout=StringIO(), stderr=errors)
    assert "private_key is written inline" in errors.getvalue()


def service_account_form(client_id: str, key_file: str) -> dict[str, str]:
    from providers.models import Provider

    return {
        "name": "Drive robot",
        "slug": "",
        "provider": str(Provider.objects.get(slug="google-service-account").pk),
        "grant_type": "jwt_bearer",
        "token_type": "shared",
        "client_id": client_id,
        "client_secret": "",
        "client_auth_method": "",
        "private_key": key_file,
        "private_key_id": "",
        "jwt_subject": "someone@acme.example",
        "scopes": "https://www.googleapis.com/auth/drive.readonly",
        "extra_authorization_params": "{}",
        "is_enabled": "on",
        "tokens-TOTAL_FORMS": "0",
        "tokens-INITIAL_FORMS": "0",
    }


def test_a_service_accounts_json_key_file_can_be_pasted_whole(manager_client):
    import json

    email = "robot@acme-project.iam.gserviceaccount.com"
    key_file = json.dumps(
        {"type": "service_account", "client_email": email, "private_key_id": "4f2a", "private_key": _pem(KEYS["RS256"])}
    )
    refused = manager_client.post(
        "/admin/connections/connection/add/", service_account_form("other@x.example", key_file)
    )
    assert refused.status_code == 200
    assert f"The key file is {email}'s" in " ".join(refused.context["adminform"].form.errors["private_key"])

    response = manager_client.post("/admin/connections/connection/add/", service_account_form(email, key_file))
    assert response.status_code == 302, response.context["adminform"].form.errors
    connection = Connection.objects.get(slug="drive-robot")
    assert connection.private_key == _pem(KEYS["RS256"]).strip() and connection.private_key_id == "4f2a"
    assert connection.effective_assertion_audience == "https://oauth2.googleapis.com/token"
    assert connection.scope_list == ["https://www.googleapis.com/auth/drive.readonly"]
