"""Outbound calls to providers: certificates verified, the forward proxy (with credentials, bypass list), https
only, and the block on private addresses (SSRF), on every call and every redirect hop.

Real servers on loopback: the OAuth server, an authenticating forward proxy, and a tiny token/redirect server
(plain http or TLS with a certificate made for the run). Names other than localhost come from a fake resolver.
"""

import base64
import datetime
import ipaddress
import itertools
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from unittest.mock import patch

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from django.db import transaction
from oauthlib.oauth2 import BackendApplicationClient

from connections import errors, services
from connections.engine import refresh
from connections.errors import OutboundError, ProviderError
from connections.models import AuditEvent, Connection, OAuthToken, TokenState
from connections.notify.managers import notify_managers
from connections.oauth import client as oauth_client
from connections.oauth.client_auth import ClientConfig
from connections.outbound import policy as outbound_policy
from tests.conftest import authorize_and_store_token, callback_after_consent, messages_of, shared_token
from tests.support.forward_proxy import ForwardProxy, Seen
from tests.support.waiting import wait_for

PROXY_USER = "egress"
PROXY_PASSWORD = "pa55@w0rd!-proxy"  # needs URL-encoding in OUTBOUND_PROXY_URL
PROXY_SECRETS = (
    PROXY_PASSWORD,
    "pa55%40w0rd%21-proxy",
    base64.b64encode(f"{PROXY_USER}:{PROXY_PASSWORD}".encode()).decode(),
)
PUBLIC_IP = "93.184.216.34"
TLS_NAMES = ("localhost", "auth.example", "rebind.example")


def _assert_no_proxy_secret(text: str) -> None:
    for secret in PROXY_SECRETS:
        assert secret not in text


# --- servers -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hit:
    method: str
    host: str
    path: str
    headers: dict[str, str]


class _TinyHandler(BaseHTTPRequestHandler):
    server: "_TinyServer"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        with self.server.lock:
            self.server.hits.append(Hit(self.command, self.headers.get("Host", ""), self.path, dict(self.headers)))
        if self.path in self.server.redirects:
            self.send_response(302)
            self.send_header("Location", self.server.redirects[self.path])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = json.dumps({"access_token": "tiny-access-token", "token_type": "Bearer", "expires_in": 3600}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer


class _TinyServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, tls: ssl.SSLContext | None) -> None:
        super().__init__(("127.0.0.1", 0), _TinyHandler)
        self.tls = tls
        self.lock = threading.Lock()
        self.hits: list[Hit] = []
        self.redirects: dict[str, str] = {}
        self.connections, self.drip_from, self.cut_off = 0, 1_000_000, 0  # counted and used by _KeepAliveHandler

    def get_request(self):
        sock, address = super().get_request()
        if self.tls is not None:
            sock = self.tls.wrap_socket(sock, server_side=True)
        return sock, address

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"{'https' if self.tls else 'http'}://{host}:{self.server_address[1]}{path}"

    def paths(self) -> list[str]:
        with self.lock:
            return [hit.path for hit in self.hits]


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate for localhost, 127.0.0.1 and the fake names; the tests trust it."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "controlroom-tests")])
    now = datetime.datetime.now(datetime.UTC)
    alt_names = [x509.DNSName(n) for n in TLS_NAMES] + [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory = tmp_path_factory.mktemp("tls")
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def _serve(tls: ssl.SSLContext | None, handler: type = _TinyHandler) -> Iterator[_TinyServer]:
    server = _TinyServer(tls)
    server.RequestHandlerClass = handler
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def plain_server() -> Iterator[_TinyServer]:
    yield from _serve(None)


def _server_context(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    cert_path, key_path = certificate
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    return context


@pytest.fixture
def untrusted_tls_server(certificate) -> Iterator[_TinyServer]:
    """The same TLS server, with provider sessions left as in production: they verify certificates against the
    default CA bundle, which does not hold this one (made for the run, signed by itself)."""
    yield from _serve(_server_context(certificate))


@pytest.fixture
def tls_server(certificate, monkeypatch) -> Iterator[_TinyServer]:
    """A TLS token/redirect server; provider sessions trust its certificate (and nothing else changes)."""
    cert_path, _ = certificate
    context = _server_context(certificate)
    original = oauth_client._session

    def session_trusting_the_test_certificate(*args, **kwargs):
        session = original(*args, **kwargs)
        session.verify = str(cert_path)
        return session

    monkeypatch.setattr(oauth_client, "_session", session_trusting_the_test_certificate)
    yield from _serve(context)


@pytest.fixture(scope="module")
def proxy_process() -> Iterator[ForwardProxy]:
    with ForwardProxy(PROXY_USER, PROXY_PASSWORD) as proxy:
        yield proxy


@pytest.fixture
def proxy(proxy_process: ForwardProxy, settings) -> ForwardProxy:
    """The forward proxy, in OUTBOUND_PROXY_URL with the right credentials, nothing bypassed."""
    proxy_process.reset()
    settings.OUTBOUND_PROXY_URL = proxy_process.url()
    settings.OUTBOUND_PROXY_BYPASS = []
    return proxy_process


@pytest.fixture
def fake_dns(monkeypatch) -> dict[str, object]:
    """Names to answer in place of the system resolver: name -> list of IPs, or a callable returning one."""
    answers: dict[str, object] = {}
    real = socket.getaddrinfo

    def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
        name = host.decode() if isinstance(host, bytes) else host
        if name not in answers:
            return real(host, port, family, type, proto, flags)
        ips = answers[name]() if callable(answers[name]) else answers[name]
        if not ips:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        results = []
        for ip in ips:
            v6 = ":" in ip
            if family not in (0, socket.AF_INET6 if v6 else socket.AF_INET):
                continue
            address = (ip, int(port), 0, 0) if v6 else (ip, int(port))
            results.append((socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_STREAM, 6, "", address))
        return results

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return answers


@pytest.fixture
def outbound(settings):
    """A clean outbound policy: no proxy, no plain-http host, no block (DEBUG would otherwise allow loopback)."""
    settings.OUTBOUND_PROXY_URL = ""
    settings.OUTBOUND_PROXY_BYPASS = []
    settings.OUTBOUND_HTTP_ALLOWED_HOSTS = []
    settings.OUTBOUND_BLOCK_PRIVATE_ADDRESSES = False
    return settings


def _config(token_url: str) -> ClientConfig:
    return ClientConfig(client_id="tiny-client", client_secret="tiny-secret", authorization_url="", token_url=token_url)


# --- certificates are verified as in production -------------------------------------------------------------------


def _verifies_like_production(token_url: str) -> None:
    """The session a provider call gets checks certificates against requests' own CA bundle (certifi), and
    ignores REQUESTS_CA_BUNDLE and the like from the environment: nothing here trusts the test certificate."""
    session = oauth_client._session(_config(token_url), BackendApplicationClient("tiny-client"))
    assert session.verify is True and session.trust_env is False


@pytest.mark.django_db
def test_a_provider_certificate_nobody_trusts_is_refused_and_nothing_is_stored(
    outbound, untrusted_tls_server, make_connection, manager_client, authserver
):
    # given a connection whose token URL presents a self-signed certificate, verified as production verifies
    outbound.OUTBOUND_HTTP_ALLOWED_HOSTS = ["127.0.0.1"]  # the loopback server's (plain http) authorization page
    token_url = untrusted_tls_server.url("/token", host="localhost")
    _verifies_like_production(token_url)
    connection = make_connection(token_url=token_url)

    # when the administrator clicks Connect and approves at the provider
    response = manager_client.get(callback_after_consent(manager_client, connection, authserver))

    # then the code exchange is refused with a message for the administrator (its wording: the test below),
    # the failure is audited, and nothing is stored
    event = AuditEvent.objects.get(connection=connection, action="authorize_callback")
    assert event.outcome == "failure" and "TLS certificate" in event.detail, event.detail
    assert messages_of(response) == [f"Could not connect {connection}: {event.detail} Nothing stored was changed."]
    assert not OAuthToken.objects.filter(connection=connection).exists()
    # and the handshake failed before a byte of the request was sent: the code and the secret never left
    assert untrusted_tls_server.hits == []


def test_the_refusal_of_an_untrusted_certificate_names_the_certificate(outbound, untrusted_tls_server):
    # given a token URL whose certificate nobody trusts, verified as in production
    token_url = untrusted_tls_server.url("/token", host="localhost")
    _verifies_like_production(token_url)

    # when a token is asked for
    with pytest.raises(ProviderError) as caught:
        oauth_client.client_credentials(_config(token_url))

    # then the sentence a person reads says what to fix
    assert caught.value.error == "tls_error" and "certificate" in caught.value.message
    assert untrusted_tls_server.hits == []


# --- the forward proxy -------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_whole_flow_goes_through_the_proxy_with_its_credentials(
    outbound, proxy, make_connection, manager_client, manager, authserver, caplog
):
    outbound.OUTBOUND_PROXY_URL = proxy.url()
    outbound.OUTBOUND_HTTP_ALLOWED_HOSTS = ["127.0.0.1"]
    caplog.set_level(logging.DEBUG)
    for name in ("urllib3", "requests_oauthlib", "oauthlib", "connections"):
        caplog.set_level(logging.DEBUG, logger=name)
    target = f"127.0.0.1:{authserver.port}"

    # Connect: the authorization code exchange.
    connection = make_connection()
    response = manager_client.get(callback_after_consent(manager_client, connection, authserver))
    assert any("is connected" in text for text in messages_of(response))
    token = shared_token(connection)
    assert token is not None
    # A refresh.
    refreshed = refresh.token_refresh(token=token, actor_label="test")
    assert refreshed.generation == token.generation + 1 and refreshed.access_token != token.access_token
    # Client credentials.
    machine = make_connection(grant_type="client_credentials")
    assert services.connection_test(connection=machine, actor=manager).startswith("Test passed")
    # Disconnect: revokes the refresh and the access token.
    response = manager_client.post(f"/admin/connections/connection/{connection.pk}/disconnect/")
    assert any("Tokens revoked at the provider and removed." in text for text in messages_of(response))
    assert shared_token(connection) is None

    assert proxy.rejected == []
    assert proxy.seen == [
        Seen("POST", target, "/o/token/"),
        Seen("POST", target, "/o/token/"),
        Seen("POST", target, "/o/token/"),
        Seen("POST", target, "/o/revoke_token/"),
        Seen("POST", target, "/o/revoke_token/"),
    ]
    stats = authserver.stats()
    assert stats["token_requests"] == {
        "authorization_code": 1,
        "refresh_token": 1,
        "client_credentials": 1,
        "jwt_bearer": 0,
        "device_code": 0,
        "other": 0,
    }
    assert stats["revocations"] == 2
    # The log was at DEBUG (urllib3 names the proxy it connects to) and holds no proxy credential.
    assert f"127.0.0.1:{proxy.port}" in caplog.text
    _assert_no_proxy_secret(caplog.text)
    _assert_no_proxy_secret(" ".join(AuditEvent.objects.values_list("detail", flat=True)))


@pytest.mark.django_db
def test_a_wrong_proxy_password_is_a_clear_error_and_changes_nothing(
    outbound, proxy, make_connection, manager_client, authserver, caplog
):
    caplog.set_level(logging.DEBUG)
    for name in ("urllib3", "requests_oauthlib", "oauthlib", "connections"):
        caplog.set_level(logging.DEBUG, logger=name)
    outbound.OUTBOUND_HTTP_ALLOWED_HOSTS = ["127.0.0.1"]
    outbound.OUTBOUND_PROXY_URL = proxy.url()
    connection = make_connection()
    before = authorize_and_store_token(manager_client, connection, authserver)
    authserver.reset()
    proxy.reset()
    outbound.OUTBOUND_PROXY_URL = proxy.url(password="wrong-" + PROXY_PASSWORD)

    # A refresh: a ProviderError that says the proxy refused authentication.
    with pytest.raises(ProviderError) as caught:
        refresh.token_refresh(token=before, actor_label="test")
    message = caught.value.message
    assert message == (
        f"The outbound proxy 127.0.0.1:{proxy.port} refused authentication (HTTP 407 Proxy Authentication "
        "Required): check the user and password in OUTBOUND_PROXY_URL."
    )
    assert caught.value.error == "proxy_authentication_failed" and not caught.value.permanent
    # Connect again (the code exchange): the same sentence, and nothing stored changed.
    response = manager_client.get(callback_after_consent(manager_client, connection, authserver))
    assert any(
        text.startswith(f"Could not connect {connection}: The outbound proxy") and "Nothing stored was changed" in text
        for text in messages_of(response)
    ), messages_of(response)

    after = shared_token(connection)
    assert (after.access_token, after.refresh_token, after.generation) == (
        before.access_token,
        before.refresh_token,
        before.generation,
    )
    assert after.state == TokenState.REFRESH_FAILING  # retried later: a proxy setting, not a grant, is wrong
    assert authserver.whoami(after.access_token).status_code == 200
    assert authserver.stats()["token_requests"]["refresh_token"] == 0
    assert authserver.stats()["token_requests"]["authorization_code"] == 0
    assert proxy.seen == [] and len(proxy.rejected) == 2
    everything = " ".join(
        [message, caplog.text, after.last_error, *AuditEvent.objects.values_list("detail", flat=True)]
    )
    assert "refused authentication" in everything
    _assert_no_proxy_secret(everything)
    assert "wrong-" not in everything


@pytest.mark.django_db
def test_https_goes_through_a_connect_tunnel_and_a_refused_one_is_clear(outbound, proxy, tls_server):
    outbound.OUTBOUND_PROXY_URL = proxy.url()
    token_url = tls_server.url("/token", host="localhost")

    assert oauth_client.client_credentials(_config(token_url)).access_token == "tiny-access-token"
    assert proxy.seen == [Seen("CONNECT", f"localhost:{tls_server.server_address[1]}", "")]
    assert tls_server.paths() == ["/token"]

    outbound.OUTBOUND_PROXY_URL = proxy.url(password="wrong")
    with pytest.raises(ProviderError) as caught:
        oauth_client.client_credentials(_config(token_url))
    assert caught.value.error == "proxy_authentication_failed"
    assert "refused authentication" in caught.value.message
    _assert_no_proxy_secret(caught.value.message)
    assert tls_server.paths() == ["/token"] and len(proxy.rejected) == 1


@pytest.mark.parametrize(
    ("bypass", "host", "proxied"),
    [
        (["127.0.0.1"], "127.0.0.1", False),
        (["127.0.0.0/8"], "127.0.0.1", False),
        ([".example"], "auth.example", False),
        (["other.example", "10.0.0.0/8", ""], "auth.example", True),
        (["other.example", "10.0.0.0/8"], "127.0.0.1", True),
    ],
)
def test_the_bypass_list_sends_matching_hosts_direct(outbound, proxy, plain_server, fake_dns, bypass, host, proxied):
    fake_dns["auth.example"] = ["127.0.0.1"]
    outbound.OUTBOUND_PROXY_URL = proxy.url()
    outbound.OUTBOUND_PROXY_BYPASS = bypass
    outbound.OUTBOUND_HTTP_ALLOWED_HOSTS = [host]

    token = oauth_client.client_credentials(_config(plain_server.url("/token", host=host)))

    assert token.access_token == "tiny-access-token"
    assert plain_server.paths() == ["/token"]
    assert proxy.count() == (1 if proxied else 0)


@pytest.mark.django_db
def test_a_bypassed_provider_gets_the_whole_flow_directly(outbound, proxy, make_connection, manager_client, authserver):
    outbound.OUTBOUND_PROXY_URL = proxy.url()
    outbound.OUTBOUND_PROXY_BYPASS = ["127.0.0.0/8"]
    outbound.OUTBOUND_HTTP_ALLOWED_HOSTS = ["127.0.0.1"]
    connection = make_connection()
    refresh.token_refresh(token=authorize_and_store_token(manager_client, connection, authserver), actor_label="test")
    response = manager_client.post(f"/admin/connections/connection/{connection.pk}/disconnect/")
    assert any("Tokens revoked at the provider and removed." in text for text in messages_of(response))
    assert authserver.stats()["token_requests"]["authorization_code"] == 1
    assert authserver.stats()["token_requests"]["refresh_token"] == 1
    assert authserver.stats()["revocations"] == 2
    assert proxy.count() == 0 and proxy.rejected == []


def test_a_redirect_of_the_token_url_is_not_followed(outbound, proxy, plain_server):
    # Following it would re-send the client credentials (and, with requests' rebuild_proxies, the proxy's)
    # to wherever it points; a token endpoint answers directly (RFC 6749 3.2).
    outbound.OUTBOUND_PROXY_URL = proxy.url()
    outbound.OUTBOUND_PROXY_BYPASS = ["localhost"]
    outbound.OUTBOUND_HTTP_ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
    plain_server.redirects["/moved"] = plain_server.url("/token", host="localhost")

    with pytest.raises(ProviderError) as caught:
        oauth_client.client_credentials(_config(plain_server.url("/moved")))

    assert caught.value.error == "invalid_response" and "answered HTTP 30" in caught.value.message
    assert proxy.seen == [Seen("POST", f"127.0.0.1:{plain_server.server_address[1]}", "/moved")]
    assert [hit for hit in plain_server.hits if hit.path == "/token"] == []


# --- https only, and the block on private addresses -----------------------------------------------------------


def test_an_http_url_to_a_host_not_allowed_is_refused(outbound, plain_server):
    outbound.OUTBOUND_HTTP_ALLOWED_HOSTS = ["localhost"]
    with pytest.raises(ProviderError) as caught:
        oauth_client.client_credentials(_config(plain_server.url("/token")))
    assert caught.value.error == "insecure_url" and caught.value.permanent
    assert caught.value.message.startswith("Refused to call http://127.0.0.1: provider URLs must use https")
    assert plain_server.hits == []


def test_a_redirect_from_https_to_http_goes_nowhere(outbound, tls_server, plain_server):
    outbound.OUTBOUND_HTTP_ALLOWED_HOSTS = ["localhost"]
    tls_server.redirects["/moved"] = plain_server.url("/token")

    with pytest.raises(ProviderError) as caught:
        oauth_client.client_credentials(_config(tls_server.url("/moved", host="localhost")))

    assert caught.value.error == "invalid_response" and "answered HTTP 30" in caught.value.message
    assert tls_server.paths() == ["/moved"]
    assert plain_server.hits == []


@pytest.mark.parametrize(
    ("host", "kind"), [("127.0.0.1", "loopback"), ("localhost", "loopback"), ("[::1]", "loopback")]
)
def test_block_private_refuses_a_loopback_provider(outbound, tls_server, host, kind):
    outbound.OUTBOUND_BLOCK_PRIVATE_ADDRESSES = True
    with pytest.raises(ProviderError) as caught:
        oauth_client.client_credentials(_config(tls_server.url("/token", host=host)))
    assert caught.value.error == "blocked_address" and caught.value.permanent
    assert caught.value.message == (
        f"Refused to call https://{host.strip('[]')}: it resolves to a {kind} address, which Control Room does not "
        "call (OUTBOUND_BLOCK_PRIVATE_ADDRESSES; an operator allows an internal host by listing its name or network "
        "in OUTBOUND_ALLOWED_PRIVATE)."
    )
    assert tls_server.hits == []


@pytest.mark.django_db
def test_block_private_refuses_the_code_exchange_and_stores_nothing(
    outbound, make_connection, manager_client, authserver
):
    # The browser goes to the authorization URL on localhost (allowed); our call goes to 127.0.0.1 (not allowed).
    outbound.OUTBOUND_BLOCK_PRIVATE_ADDRESSES = True
    outbound.OUTBOUND_HTTP_ALLOWED_HOSTS = ["localhost"]
    connection = make_connection(
        authorization_url=authserver.authorize_url.replace("127.0.0.1", "localhost"),
        token_url=f"https://127.0.0.1:{authserver.port}/o/token/",
    )
    response = manager_client.get(callback_after_consent(manager_client, connection, authserver))
    assert messages_of(response) == [
        f"Could not connect {connection}: Refused to call https://127.0.0.1: it resolves to a loopback address, "
        "which Control Room does not call (OUTBOUND_BLOCK_PRIVATE_ADDRESSES; an operator allows an internal host by "
        "listing its name or network in OUTBOUND_ALLOWED_PRIVATE). Nothing stored was changed."
    ]
    assert not OAuthToken.objects.filter(connection=connection).exists()
    assert authserver.stats()["token_requests"]["authorization_code"] == 0
    event = AuditEvent.objects.get(connection=connection, action="authorize_callback")
    assert event.outcome == "failure" and "OUTBOUND_BLOCK_PRIVATE_ADDRESSES" in event.detail


@pytest.mark.django_db
def test_block_private_lets_hosts_the_operator_allowed_through(outbound, make_connection, manager_client, authserver):
    outbound.OUTBOUND_BLOCK_PRIVATE_ADDRESSES = True
    outbound.OUTBOUND_HTTP_ALLOWED_HOSTS = ["127.0.0.1"]
    connection = make_connection()
    authorize_and_store_token(manager_client, connection, authserver)
    assert shared_token(connection) is not None
    assert authserver.stats()["token_requests"]["authorization_code"] == 1


def test_block_private_a_redirect_to_a_private_address_goes_nowhere(outbound, tls_server):
    outbound.OUTBOUND_BLOCK_PRIVATE_ADDRESSES = True
    outbound.OUTBOUND_HTTP_ALLOWED_HOSTS = ["localhost"]  # the first hop is allowed; the redirect target is not
    tls_server.redirects["/moved"] = tls_server.url("/token", host="127.0.0.1")

    with pytest.raises(ProviderError) as caught:
        oauth_client.client_credentials(_config(tls_server.url("/moved", host="localhost")))

    assert caught.value.error == "invalid_response" and "answered HTTP 30" in caught.value.message
    assert tls_server.paths() == ["/moved"]


# Redirects are followed only by GET calls (discovery's): token and revocation calls are POSTs, which never follow
# one (the tests above). These make the policy's per-hop checks the only thing between a redirect and its target.


@pytest.fixture
def discovery_trusting_the_test_certificate(certificate, monkeypatch) -> None:
    original = oauth_client.policy_session

    def session(*args, **kwargs):
        made = original(*args, **kwargs)
        made.verify = str(certificate[0])
        return made

    monkeypatch.setattr(oauth_client, "policy_session", session)


def _discovery_moved_to(tls_server: _TinyServer, target: str) -> str:
    """An issuer at the TLS server (by the name localhost) whose discovery document has moved to `target`."""
    tls_server.redirects["/issuer/.well-known/openid-configuration"] = target
    return tls_server.url("/issuer", host="localhost")


def test_a_discovery_redirect_is_followed_where_the_policy_allows(
    outbound, tls_server, discovery_trusting_the_test_certificate
):
    outbound.OUTBOUND_HTTP_ALLOWED_HOSTS = ["localhost"]
    issuer = _discovery_moved_to(tls_server, tls_server.url("/moved-document", host="localhost"))
    assert oauth_client.discovery_document(issuer)["access_token"] == "tiny-access-token"  # the tiny server's JSON
    assert tls_server.paths() == ["/issuer/.well-known/openid-configuration", "/moved-document"]


def test_a_discovery_redirect_from_https_to_http_goes_nowhere(
    outbound, tls_server, plain_server, discovery_trusting_the_test_certificate
):
    outbound.OUTBOUND_HTTP_ALLOWED_HOSTS = ["localhost"]  # plain http to 127.0.0.1 is not allowed
    issuer = _discovery_moved_to(tls_server, plain_server.url("/.well-known/openid-configuration"))
    with pytest.raises(ProviderError) as caught:
        oauth_client.discovery_document(issuer)
    assert caught.value.error == "insecure_url", caught.value.message
    assert tls_server.paths() == ["/issuer/.well-known/openid-configuration"]
    assert plain_server.hits == []


def test_block_private_a_discovery_redirect_to_a_private_address_goes_nowhere(
    outbound, tls_server, discovery_trusting_the_test_certificate
):
    outbound.OUTBOUND_BLOCK_PRIVATE_ADDRESSES = True
    outbound.OUTBOUND_ALLOWED_PRIVATE = ["localhost"]  # the first hop is allowed by name; the redirect target is not
    issuer = _discovery_moved_to(tls_server, tls_server.url("/moved-document", host="127.0.0.1"))
    with pytest.raises(ProviderError) as caught:
        oauth_client.discovery_document(issuer)
    assert caught.value.error == "blocked_address", caught.value.message
    assert tls_server.paths() == ["/issuer/.well-known/openid-configuration"]


def test_block_private_refuses_a_host_if_any_of_its_addresses_is_private(outbound, tls_server, fake_dns):
    outbound.OUTBOUND_BLOCK_PRIVATE_ADDRESSES = True
    fake_dns["auth.example"] = [PUBLIC_IP, "10.1.2.3"]
    fake_dns["public.example"] = [PUBLIC_IP, "2606:2800:220:1:248:1893:25c8:1946"]

    with pytest.raises(ProviderError) as caught:
        oauth_client.client_credentials(_config(tls_server.url("/token", host="auth.example")))
    assert caught.value.error == "blocked_address"
    assert "resolves to a private address" in caught.value.message
    outbound_policy.check_destination("https://public.example/token")  # all public: allowed
    assert tls_server.hits == []


def test_block_private_checks_the_address_actually_connected_to(outbound, tls_server, fake_dns):
    # DNS rebinding: the name resolves to a public address for the check, then to loopback for the connection.
    outbound.OUTBOUND_BLOCK_PRIVATE_ADDRESSES = True
    calls = itertools.count()
    fake_dns["rebind.example"] = lambda: [PUBLIC_IP] if next(calls) == 0 else ["127.0.0.1"]

    with pytest.raises(ProviderError) as caught:
        oauth_client.client_credentials(_config(tls_server.url("/token", host="rebind.example")))

    assert caught.value.error == "blocked_address"
    assert caught.value.message.startswith("Refused to call https://rebind.example: it resolves to a loopback")
    assert next(calls) >= 2  # resolved twice: by the check and by the connection
    assert tls_server.hits == []


def test_block_private_applies_through_the_proxy_too(outbound, proxy, tls_server):
    outbound.OUTBOUND_PROXY_URL = proxy.url()
    outbound.OUTBOUND_BLOCK_PRIVATE_ADDRESSES = True
    with pytest.raises(ProviderError) as caught:
        oauth_client.client_credentials(_config(tls_server.url("/token", host="localhost")))
    assert caught.value.error == "blocked_address"
    assert proxy.count() == 0 and proxy.rejected == [] and tls_server.hits == []


def test_block_private_does_not_apply_to_the_proxy_itself(outbound, proxy, tls_server, fake_dns):
    # The operator's proxy may live on a private network. Our check sees a public address; the proxy resolves the
    # name itself (here to loopback: rebinding through a proxy is the proxy's to refuse) and the call works.
    outbound.OUTBOUND_PROXY_URL = proxy.url()
    outbound.OUTBOUND_BLOCK_PRIVATE_ADDRESSES = True
    calls = itertools.count()
    fake_dns["auth.example"] = lambda: [PUBLIC_IP] if next(calls) == 0 else ["127.0.0.1"]

    token = oauth_client.client_credentials(_config(tls_server.url("/token", host="auth.example")))

    assert token.access_token == "tiny-access-token"
    assert proxy.seen == [Seen("CONNECT", f"auth.example:{tls_server.server_address[1]}", "")]
    assert tls_server.paths() == ["/token"]


def test_block_private_refuses_a_host_it_cannot_resolve(outbound, fake_dns):
    outbound.OUTBOUND_BLOCK_PRIVATE_ADDRESSES = True
    fake_dns["gone.example"] = []
    with pytest.raises(ProviderError) as caught:
        oauth_client.client_credentials(_config("https://gone.example/token"))
    assert caught.value.error == "dns_failure" and not caught.value.permanent
    assert (
        caught.value.message == "Could not resolve gone.example to check it against OUTBOUND_BLOCK_PRIVATE_ADDRESSES."
    )


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "a loopback"),
        ("::1", "a loopback"),
        ("::ffff:127.0.0.1", "a loopback"),
        ("10.0.0.1", "a private"),
        ("172.16.5.4", "a private"),
        ("192.168.1.1", "a private"),
        ("fd00::1", "a private"),
        ("169.254.169.254", "a link-local"),
        ("fe80::1", "a link-local"),
        ("224.0.0.1", "a multicast"),
        ("ff02::1", "a multicast"),
        ("0.0.0.0", "an unspecified"),  # noqa: S104 - an address under test, not a bind
        ("::", "an unspecified"),
        ("100.64.0.1", "a non-public"),
        ("fec0::1", "a site-local"),  # deprecated, but still routed inside some networks (RFC 3879)
        ("2002:7f00:1::1", "a loopback"),  # 6to4 carrying 127.0.0.1 (RFC 3056)
        ("2002:a00:1::1", "a private"),  # 6to4 carrying 10.0.0.1
        ("64:ff9b::7f00:1", "a loopback"),  # NAT64 carrying 127.0.0.1 (RFC 6052)
        ("2002:5db8:d822::1", ""),  # 6to4 carrying the public address
        (PUBLIC_IP, ""),
        ("2606:2800:220:1:248:1893:25c8:1946", ""),
    ],
)
def test_blocked_kind(address, kind):
    assert outbound_policy.blocked_kind(address) == kind


# --- no provider call inside a database transaction ---------------------------------------------------------------


@pytest.mark.django_db
def test_a_provider_call_inside_a_transaction_is_refused(outbound, plain_server):
    # A provider call holds whatever the transaction locked for as long as the provider takes, and a rotated
    # refresh token is lost if the transaction then rolls back: in tests and DEBUG it is a programming error.
    outbound.OUTBOUND_HTTP_ALLOWED_HOSTS = ["127.0.0.1"]
    with pytest.raises(errors.CallInTransaction), transaction.atomic():
        oauth_client.client_credentials(_config(plain_server.url("/token")))
    assert plain_server.hits == []
    # Outside a transaction (the test's own does not count) the same call goes out.
    assert oauth_client.client_credentials(_config(plain_server.url("/token"))).access_token == "tiny-access-token"


@pytest.mark.django_db
def test_in_production_a_provider_call_inside_a_transaction_is_logged_as_an_error(outbound, plain_server, caplog):
    outbound.OUTBOUND_RAISE_IN_TRANSACTION = False  # as with DEBUG off
    outbound.OUTBOUND_HTTP_ALLOWED_HOSTS = ["127.0.0.1"]
    with transaction.atomic():
        assert oauth_client.client_credentials(_config(plain_server.url("/token"))).access_token
    assert [record.levelname for record in caplog.records if "transaction" in record.getMessage()] == ["ERROR"]


# --- kept-alive connections: reused, and still under the call's deadline -----------------------------------------


class _KeepAliveHandler(_TinyHandler):
    """HTTP/1.1 with keep-alive. From the request numbered `drip_from` on, the answer never ends: it announces a
    megabyte and sends a byte every 0.2 s, each within any read timeout, until the client goes away (counted in
    `cut_off`). Only the call's deadline can end such a call."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def setup(self) -> None:
        super().setup()
        with self.server.lock:
            self.server.connections += 1

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with self.server.lock:
            self.server.hits.append(Hit(self.command, self.headers.get("Host", ""), self.path, dict(self.headers)))
            drip = len(self.server.hits) >= self.server.drip_from
        body = json.dumps({"access_token": "kept-alive", "token_type": "Bearer", "expires_in": 3600}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(1_000_000 if drip else len(body)))
        self.end_headers()
        if not drip:
            self.wfile.write(body)
            return
        while True:
            try:
                self.wfile.write(b" ")
                self.wfile.flush()
            except OSError:
                with self.server.lock:
                    self.server.cut_off += 1  # the client gave up, as it should
                return
            time.sleep(0.2)

    do_POST = _answer


def _keep_alive(tls: ssl.SSLContext | None) -> Iterator[_TinyServer]:
    yield from _serve(tls, _KeepAliveHandler)


@pytest.fixture
def keep_alive_server() -> Iterator[_TinyServer]:
    yield from _keep_alive(None)


@pytest.fixture(params=["http", "https"])
def any_keep_alive_server(request, certificate, monkeypatch) -> Iterator[_TinyServer]:
    """The keep-alive server in plain http, and in TLS with provider sessions trusting its certificate."""
    if request.param == "http":
        yield from _keep_alive(None)
        return
    original = oauth_client._session

    def session_trusting_the_test_certificate(*args, **kwargs):
        session = original(*args, **kwargs)
        session.verify = str(certificate[0])
        return session

    monkeypatch.setattr(oauth_client, "_session", session_trusting_the_test_certificate)
    yield from _keep_alive(_server_context(certificate))


def test_calls_to_one_provider_reuse_a_kept_alive_connection(outbound, keep_alive_server):
    outbound.OUTBOUND_HTTP_ALLOWED_HOSTS = ["127.0.0.1"]
    config = _config(keep_alive_server.url("/token"))
    answers = [oauth_client.client_credentials(config).access_token for _ in range(5)]
    assert answers == ["kept-alive"] * 5
    assert (len(keep_alive_server.hits), keep_alive_server.connections) == (5, 1)


def test_a_connection_idle_for_long_is_not_reused(outbound, keep_alive_server, monkeypatch):
    # A server closes idle connections when it likes; a refresh sent on one just as it does would be lost.
    # The idle time is read from a clock the test moves, so no call's own duration counts.
    outbound.OUTBOUND_HTTP_ALLOWED_HOSTS = ["127.0.0.1"]
    now = [1000.0]
    monkeypatch.setattr(outbound_policy, "idle_clock", lambda: now[0])
    config = _config(keep_alive_server.url("/token"))
    oauth_client.client_credentials(config)
    oauth_client.client_credentials(config)  # idle for no time: the same connection
    now[0] += outbound_policy.KEEP_ALIVE_IDLE  # idle for exactly the limit: still the same
    oauth_client.client_credentials(config)
    assert keep_alive_server.connections == 1
    now[0] += outbound_policy.KEEP_ALIVE_IDLE + 0.001  # idle for longer: a new one
    oauth_client.client_credentials(config)
    assert (len(keep_alive_server.hits), keep_alive_server.connections) == (4, 2)


def _failure_of(call) -> ProviderError:
    """The ProviderError `call` raises, run in another thread: a call its deadline fails to end is a failure of
    this test after a minute, not a hang of the run."""
    with ThreadPoolExecutor(1) as pool:
        raised = pool.submit(call).exception(timeout=60)
    assert isinstance(raised, ProviderError), raised
    return raised


def test_a_call_on_a_new_connection_is_cut_at_its_deadline(outbound, any_keep_alive_server):
    # given a provider that answers a byte at a time, each within any read timeout (over TLS too, which takes
    # the socket over once connected)
    server = any_keep_alive_server
    outbound.OUTBOUND_HTTP_ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
    outbound.OUTBOUND_TIMEOUT = 1
    server.drip_from = 1
    # when a call goes out, then its deadline cuts it (the answer would never end)
    failure = _failure_of(lambda: oauth_client.client_credentials(_config(server.url("/token", host="localhost"))))
    assert failure.error == "timeout", failure.message
    wait_for(lambda: server.cut_off == 1, 30, "the server to see the client go")


def test_a_call_on_a_reused_connection_is_cut_at_its_deadline(outbound, any_keep_alive_server):
    # given a connection kept alive by a first call, and a provider that then answers a byte at a time
    keep_alive_server = any_keep_alive_server
    outbound.OUTBOUND_HTTP_ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
    outbound.OUTBOUND_TIMEOUT = 1
    config = _config(keep_alive_server.url("/token", host="localhost"))
    assert oauth_client.client_credentials(config).access_token == "kept-alive"
    keep_alive_server.drip_from = 2

    # when the next call goes out on that connection (its answer would never end)
    failure = _failure_of(lambda: oauth_client.client_credentials(config))

    # then the deadline cut it, although no new socket was made for it
    assert keep_alive_server.connections == 1
    assert failure.error == "timeout", failure.message
    wait_for(lambda: keep_alive_server.cut_off == 1, 30, "the server to see the client go")
    # and the connection it broke is not reused: the next call opens a new one and gets its answer
    keep_alive_server.drip_from = 1_000_000
    assert oauth_client.client_credentials(config).access_token == "kept-alive"
    assert keep_alive_server.connections == 2


# --- the notification webhook is an outbound call like the others -------------------------------------------------


@pytest.mark.django_db
def test_the_webhook_goes_through_the_proxy(
    outbound, proxy, plain_server, celery_eager, django_capture_on_commit_callbacks
):
    outbound.OUTBOUND_PROXY_URL = proxy.url()
    outbound.OUTBOUND_HTTP_ALLOWED_HOSTS = ["127.0.0.1"]
    outbound.NOTIFY_WEBHOOK_URL = plain_server.url("/hook")
    with django_capture_on_commit_callbacks(execute=True):
        notify_managers_by_webhook_only()
    assert proxy.seen == [Seen("POST", f"127.0.0.1:{plain_server.server_address[1]}", "/hook")]
    assert plain_server.paths() == ["/hook"]


@pytest.mark.django_db
def test_the_webhook_obeys_the_url_policy(
    outbound, plain_server, caplog, celery_eager, django_capture_on_commit_callbacks
):
    outbound.NOTIFY_WEBHOOK_URL = plain_server.url("/hook")  # plain http to a host nobody allowed
    with django_capture_on_commit_callbacks(execute=True):
        notify_managers_by_webhook_only()
    assert plain_server.hits == []
    assert any("must use https" in record.getMessage() for record in caplog.records)


def notify_managers_by_webhook_only() -> None:
    with patch("connections.notify.managers.manager_emails", return_value=[]):
        notify_managers(event="token.refresh_failing", connection=Connection(slug="hooked"), subject="s", message="m")


def test_private_addresses_are_refused_by_default_without_debug_but_for_those_listed(monkeypatch):
    import importlib

    import controlroom.outbound_settings as real_outbound
    import controlroom.settings as real_settings

    # given the settings as production reads them: DEBUG off
    monkeypatch.setenv("DEBUG", "false")
    monkeypatch.setenv("SECRET_KEY", "x" * 50)
    monkeypatch.setenv("CRYPTOGRAPHY_KEY", "y" * 50)
    monkeypatch.delenv("OUTBOUND_BLOCK_PRIVATE_ADDRESSES", raising=False)
    monkeypatch.setenv("OUTBOUND_ALLOWED_PRIVATE", "idp.corp.example, 10.20.0.0/16")
    try:
        importlib.reload(real_outbound)  # read by controlroom.settings, once, from the environment
        production = importlib.reload(real_settings)
        assert production.OUTBOUND_BLOCK_PRIVATE_ADDRESSES is True
        assert production.OUTBOUND_ALLOWED_PRIVATE == ["idp.corp.example", "10.20.0.0/16"]
    finally:
        monkeypatch.undo()
        importlib.reload(real_outbound)
        importlib.reload(real_settings)


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://10.20.3.4/token", True),  # in a listed network
        ("https://10.21.0.1/token", False),  # a private address nobody listed
        ("https://127.0.0.1:9/token", False),
        ("https://169.254.169.254/latest/meta-data/", False),  # a cloud's metadata service
    ],
)
def test_a_listed_network_may_be_called_and_nothing_else_private(settings, url, allowed):
    settings.OUTBOUND_BLOCK_PRIVATE_ADDRESSES = True
    settings.OUTBOUND_HTTP_ALLOWED_HOSTS = []
    settings.OUTBOUND_ALLOWED_PRIVATE = ["idp.corp.example", "10.20.0.0/16"]
    if allowed:
        outbound_policy.check_destination(url)
    else:
        with pytest.raises(OutboundError, match="OUTBOUND_ALLOWED_PRIVATE"):
            outbound_policy.check_destination(url)
