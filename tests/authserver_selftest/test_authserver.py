"""Self-tests of the loopback OAuth 2.0 server (tests/authserver) driven through
tests/support/authserver.py and requests-oauthlib, the client library Control Room uses.
No Django settings or test DB are needed: the server runs in its own process."""

import base64
import hashlib
import json
import os
import secrets
import socket
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from oauthlib.oauth2 import (
    BackendApplicationClient,
    InvalidClientError,
    InvalidGrantError,
    MissingTokenError,
    OAuth2Error,
)
from requests.auth import HTTPBasicAuth
from requests_oauthlib import OAuth2Session

from tests.support.authserver import AuthorizeError, AuthServer

# The loopback server speaks plain http; oauthlib refuses http:// token URLs without this.
os.environ["OAUTHLIB_INSECURE_TRANSPORT"] = "1"

REDIRECT = "http://127.0.0.1:9/callback"  # never contacted: the Location is returned unfollowed
OTHER_REDIRECT = "http://127.0.0.1:9/other"
USER, PASSWORD = "alice", "correct horse battery"


@pytest.fixture(scope="module")
def server() -> Iterator[AuthServer]:
    with AuthServer() as s:
        s.create_user(USER, PASSWORD)
        yield s


@pytest.fixture(autouse=True)
def _reset(server: AuthServer) -> None:
    server.reset()  # no fault, option or count leaks from one test into the next


def new_client(server: AuthServer, **kwargs) -> tuple[str, str]:
    client_id, secret = f"client-{uuid.uuid4().hex[:10]}", secrets.token_urlsafe(16)
    server.create_client(client_id, secret, [REDIRECT, OTHER_REDIRECT], **kwargs)
    return client_id, secret


def callback_after_consent(server: AuthServer, oauth: OAuth2Session, **params) -> str:
    url, _state = oauth.authorization_url(server.authorize_url, **params)
    return server.authorize_with_requests(url, USER, PASSWORD)


def code_flow(server: AuthServer, client_id: str, secret: str, pkce: str | None = None):
    oauth = OAuth2Session(client_id, redirect_uri=REDIRECT, scope=["read", "api"], pkce=pkce)
    location = callback_after_consent(server, oauth)
    token = oauth.fetch_token(server.token_url, authorization_response=location, client_secret=secret)
    return oauth, token


def cc_request(server: AuthServer, client_id: str, secret: str, timeout: float = 10):
    """A raw client-credentials token request, to look at exactly what the server answered."""
    return requests.post(
        server.token_url,
        data={"grant_type": "client_credentials", "scope": "api"},
        auth=(client_id, secret),
        timeout=timeout,
    )


def query(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


# --- authorization code -----------------------------------------------------------------------


def test_authorization_code_flow_end_to_end(server: AuthServer) -> None:
    client_id, secret = new_client(server)
    oauth = OAuth2Session(client_id, redirect_uri=REDIRECT, scope=["read", "api"])
    url, state = oauth.authorization_url(server.authorize_url)
    location = server.authorize_with_requests(url, USER, PASSWORD)

    assert location.startswith(REDIRECT + "?")
    assert query(location)["state"] == state and query(location)["code"]
    token = oauth.fetch_token(server.token_url, authorization_response=location, client_secret=secret)
    assert token["access_token"] and token["refresh_token"]
    assert token["token_type"] == "Bearer" and token["expires_in"] == 3600
    assert token["scope"] == ["read", "api"]  # the granted scope is echoed back
    me = server.whoami(token["access_token"])
    assert me.status_code == 200 and me.json() == {
        "username": USER,
        "scope": "read api",
    }
    assert server.stats()["token_requests"]["authorization_code"] == 1


def test_arbitrary_scopes_are_granted(server: AuthServer) -> None:
    client_id, secret = new_client(server)
    scope = ["openid", "offline_access", "refresh_token", "write"]
    oauth = OAuth2Session(client_id, redirect_uri=REDIRECT, scope=scope)
    location = callback_after_consent(server, oauth)
    token = oauth.fetch_token(server.token_url, authorization_response=location, client_secret=secret)
    assert token["scope"] == scope
    assert server.whoami(token["access_token"]).json()["scope"] == " ".join(scope)


def test_cancel_on_consent_page_redirects_with_access_denied(
    server: AuthServer,
) -> None:
    client_id, _ = new_client(server)
    oauth = OAuth2Session(client_id, redirect_uri=REDIRECT, scope=["read"])
    url, state = oauth.authorization_url(server.authorize_url)
    location = server.authorize_with_requests(url, USER, PASSWORD, approve=False)
    assert location.startswith(REDIRECT)
    assert query(location)["error"] == "access_denied" and query(location)["state"] == state
    assert "code" not in query(location)


def test_wrong_password_does_not_get_past_login(server: AuthServer) -> None:
    client_id, _ = new_client(server)
    url, _ = OAuth2Session(client_id, redirect_uri=REDIRECT).authorization_url(server.authorize_url)
    with pytest.raises(AuthorizeError, match="login failed"):
        server.authorize_with_requests(url, USER, "wrong password")


def test_wrong_client_secret_is_invalid_client(server: AuthServer) -> None:
    client_id, _secret = new_client(server)
    oauth = OAuth2Session(client_id, redirect_uri=REDIRECT, scope=["read"])
    location = callback_after_consent(server, oauth)
    with pytest.raises(InvalidClientError):
        oauth.fetch_token(server.token_url, authorization_response=location, client_secret="nope")
    raw = cc_request(server, client_id, "nope")
    assert raw.status_code == 401 and raw.json()["error"] == "invalid_client"


def test_unregistered_redirect_uri_is_refused(server: AuthServer) -> None:
    client_id, _ = new_client(server)
    oauth = OAuth2Session(client_id, redirect_uri="http://127.0.0.1:9/evil", scope=["read"])
    url, _ = oauth.authorization_url(server.authorize_url)
    with pytest.raises(AuthorizeError) as excinfo:  # DOT shows its error page, no redirect
        server.authorize_with_requests(url, USER, PASSWORD)
    assert excinfo.value.status_code == 400 and "invalid_request" in excinfo.value.body


def test_token_request_must_repeat_the_authorize_redirect_uri(
    server: AuthServer,
) -> None:
    client_id, secret = new_client(server)
    location = callback_after_consent(server, OAuth2Session(client_id, redirect_uri=REDIRECT, scope=["read"]))
    other = OAuth2Session(client_id, redirect_uri=OTHER_REDIRECT, scope=["read"])
    with pytest.raises(OAuth2Error) as excinfo:
        other.fetch_token(server.token_url, code=query(location)["code"], client_secret=secret)
    assert excinfo.value.error in ("invalid_request", "invalid_grant")


def test_code_cannot_be_used_twice(server: AuthServer) -> None:
    client_id, secret = new_client(server)
    oauth = OAuth2Session(client_id, redirect_uri=REDIRECT, scope=["read"])
    location = callback_after_consent(server, oauth)
    assert oauth.fetch_token(server.token_url, authorization_response=location, client_secret=secret)
    with pytest.raises(InvalidGrantError):
        oauth.fetch_token(server.token_url, authorization_response=location, client_secret=secret)


# --- PKCE -------------------------------------------------------------------------------------


def test_pkce_required_client_refuses_flow_without_challenge(
    server: AuthServer,
) -> None:
    client_id, _ = new_client(server, pkce_required=True)
    location = callback_after_consent(server, OAuth2Session(client_id, redirect_uri=REDIRECT, scope=["read"]))
    assert query(location)["error"] == "invalid_request" and "code" not in query(location)


def test_pkce_required_client_accepts_the_right_verifier(server: AuthServer) -> None:
    client_id, secret = new_client(server, pkce_required=True)
    _oauth, token = code_flow(server, client_id, secret, pkce="S256")
    assert server.whoami(token["access_token"]).status_code == 200


@pytest.mark.parametrize("pkce_required", [True, False])
def test_pkce_wrong_or_missing_verifier_is_refused(server: AuthServer, pkce_required: bool) -> None:
    # A challenge sent at authorize binds the code, whether or not the client must use PKCE.
    client_id, secret = new_client(server, pkce_required=pkce_required)
    verifier = secrets.token_urlsafe(48)
    oauth = OAuth2Session(client_id, redirect_uri=REDIRECT, scope=["read"])
    location = callback_after_consent(server, oauth, code_challenge=s256(verifier), code_challenge_method="S256")
    code = query(location)["code"]
    with pytest.raises(InvalidGrantError):
        oauth.fetch_token(
            server.token_url,
            code=code,
            client_secret=secret,
            code_verifier=secrets.token_urlsafe(48),
        )
    with pytest.raises(OAuth2Error) as excinfo:
        oauth.fetch_token(server.token_url, code=code, client_secret=secret)
    assert excinfo.value.error in ("invalid_request", "invalid_grant")


# --- client credentials, refresh, revocation ----------------------------------------------------


def test_client_credentials_returns_a_token(server: AuthServer) -> None:
    client_id, secret = new_client(server, grant_type="client-credentials")
    oauth = OAuth2Session(client=BackendApplicationClient(client_id=client_id), scope=["api"])
    token = oauth.fetch_token(server.token_url, client_id=client_id, client_secret=secret, scope=["api"])
    assert token["access_token"] and "refresh_token" not in token
    assert server.whoami(token["access_token"]).json() == {
        "username": "",
        "scope": "api",
    }
    assert server.stats()["token_requests"]["client_credentials"] == 1


def test_refresh_rotates_and_a_reused_refresh_token_is_invalid_grant(
    server: AuthServer,
) -> None:
    client_id, secret = new_client(server)
    oauth, first = code_flow(server, client_id, secret)
    auth = HTTPBasicAuth(client_id, secret)

    second = dict(oauth.refresh_token(server.token_url, auth=auth))
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    assert server.whoami(second["access_token"]).status_code == 200
    with pytest.raises(InvalidGrantError):
        oauth.refresh_token(server.token_url, refresh_token=first["refresh_token"], auth=auth)
    # Reuse protection: replaying the old token revoked its whole family, the new one too.
    with pytest.raises(InvalidGrantError):
        oauth.refresh_token(server.token_url, refresh_token=second["refresh_token"], auth=auth)
    assert server.stats()["token_requests"]["refresh_token"] == 3


def test_api_me_refuses_revoked_missing_and_bogus_tokens(server: AuthServer) -> None:
    client_id, secret = new_client(server)
    _oauth, token = code_flow(server, client_id, secret)
    introspect = {"token": token["access_token"]}
    active = requests.post(server.introspect_url, data=introspect, auth=(client_id, secret), timeout=10)
    assert active.json()["active"] is True and active.json()["username"] == USER
    assert server.whoami(token["access_token"]).status_code == 200

    revoked = requests.post(
        server.revoke_url,
        data={"token": token["access_token"]},
        auth=(client_id, secret),
        timeout=10,
    )
    assert revoked.status_code == 200
    assert server.whoami(token["access_token"]).status_code == 401
    assert server.whoami("bogus").status_code == 401
    assert requests.get(server.userinfo_url, timeout=10).status_code == 401
    after = requests.post(server.introspect_url, data=introspect, auth=(client_id, secret), timeout=10)
    assert after.json()["active"] is False
    assert server.stats()["revocations"] == 1 and server.stats()["introspections"] == 2


@pytest.mark.parametrize("whole_grant", [False, True])
def test_revoke_whole_grant_ends_every_token_of_the_person_for_that_client(
    server: AuthServer, whole_grant: bool
) -> None:
    # given two grants of one person to one client (authorized twice), and their grant to another client
    client_id, secret = new_client(server)
    _oauth, old = code_flow(server, client_id, secret)
    _oauth, new = code_flow(server, client_id, secret)
    other_id, other_secret = new_client(server)
    _oauth, other = code_flow(server, other_id, other_secret)
    server.set_token_options(revoke_whole_grant=whole_grant)
    # when the client revokes the old grant's refresh token
    revoked = requests.post(
        server.revoke_url,
        data={"token": old["refresh_token"], "token_type_hint": "refresh_token"},
        auth=(client_id, secret),
        timeout=10,
    )
    # then that grant is ended either way; the newer one too only when the server ends whole grants
    assert revoked.status_code == 200
    assert server.whoami(old["access_token"]).status_code == 401
    assert server.whoami(new["access_token"]).status_code == (401 if whole_grant else 200)
    assert server.live_grants(client_id) == (
        {"refresh_tokens": 0, "access_tokens": 0} if whole_grant else {"refresh_tokens": 1, "access_tokens": 1}
    )
    # and never the person's grant to another client
    assert server.whoami(other["access_token"]).status_code == 200
    assert server.live_grants(other_id) == {"refresh_tokens": 1, "access_tokens": 1}


def test_revoke_whole_grant_leaves_a_token_another_client_names(server: AuthServer) -> None:
    # given a grant, and a second client that tries to revoke its refresh token
    client_id, secret = new_client(server)
    _oauth, token = code_flow(server, client_id, secret)
    stranger_id, stranger_secret = new_client(server)
    server.set_token_options(revoke_whole_grant=True)
    # when
    refused = requests.post(
        server.revoke_url, data={"token": token["refresh_token"]}, auth=(stranger_id, stranger_secret), timeout=10
    )
    # then it is answered as RFC 7009 2.2 says, and nothing of the grant is ended
    assert refused.status_code == 200
    assert server.whoami(token["access_token"]).status_code == 200
    assert server.live_grants(client_id) == {"refresh_tokens": 1, "access_tokens": 1}


# --- faults -----------------------------------------------------------------------------------


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


FAULT_CHECKS = {
    "status_500": lambda r: r.status_code == 500,
    "html": lambda r: r.status_code == 200 and r.headers["Content-Type"].startswith("text/html") and "<html" in r.text,
    "status_429": lambda r: r.status_code == 429 and r.headers["Retry-After"] == "1",
    "invalid_grant": lambda r: r.status_code == 400 and r.json()["error"] == "invalid_grant",
    "not_json_200": lambda r: (
        r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain") and not _is_json(r.text)
    ),
    "no_access_token": lambda r: (
        r.status_code == 200 and r.json()["token_type"] == "Bearer" and "access_token" not in r.json()
    ),
}


@pytest.mark.parametrize("mode", sorted(FAULT_CHECKS))
def test_fault_applies_to_count_requests_then_clears(server: AuthServer, mode: str) -> None:
    client_id, secret = new_client(server, grant_type="client-credentials")
    server.set_fault(mode, count=2)
    for _ in range(2):
        assert FAULT_CHECKS[mode](cc_request(server, client_id, secret))
    assert "access_token" in cc_request(server, client_id, secret).json()
    assert server.stats()["token_requests"]["client_credentials"] == 3  # faulted ones count too


def test_fault_without_count_lasts_until_cleared(server: AuthServer) -> None:
    client_id, secret = new_client(server, grant_type="client-credentials")
    server.set_fault("status_500")
    assert [cc_request(server, client_id, secret).status_code for _ in range(3)] == [500] * 3
    server.clear_fault()
    assert cc_request(server, client_id, secret).status_code == 200


def test_fault_only_hits_the_listed_grant_types(server: AuthServer) -> None:
    client_id, secret = new_client(server)
    oauth, _ = code_flow(server, client_id, secret)  # authorization_code: not faulted
    server.set_fault("invalid_grant", grant_types=["refresh_token"])
    with pytest.raises(InvalidGrantError):
        oauth.refresh_token(server.token_url, auth=HTTPBasicAuth(client_id, secret))
    server.clear_fault()
    # The faulted request never reached DOT, so the refresh token was not used up.
    assert oauth.refresh_token(server.token_url, auth=HTTPBasicAuth(client_id, secret))


def test_no_access_token_fault_makes_oauthlib_raise(server: AuthServer) -> None:
    client_id, secret = new_client(server, grant_type="client-credentials")
    server.set_fault("no_access_token", count=1)
    oauth = OAuth2Session(client=BackendApplicationClient(client_id=client_id))
    with pytest.raises(MissingTokenError):
        oauth.fetch_token(server.token_url, client_id=client_id, client_secret=secret)


def test_timeout_fault_delays_then_answers_normally(server: AuthServer) -> None:
    client_id, secret = new_client(server, grant_type="client-credentials")
    server.set_fault("timeout", count=1, delay=3)
    with pytest.raises(requests.Timeout):
        cc_request(server, client_id, secret, timeout=0.5)
    server.set_fault("timeout", count=1, delay=0.5)
    started = time.monotonic()
    response = cc_request(server, client_id, secret)
    assert time.monotonic() - started >= 0.5 and "access_token" in response.json()
    assert server.stats()["token_requests"]["client_credentials"] == 2


def test_close_fault_drops_the_connection_without_a_response(
    server: AuthServer,
) -> None:
    client_id, secret = new_client(server, grant_type="client-credentials")
    server.set_fault("close", count=2)
    with pytest.raises(requests.ConnectionError):
        cc_request(server, client_id, secret)
    # At the socket level: the server closes the connection and not one byte comes back.
    body = f"grant_type=client_credentials&client_id={client_id}&client_secret={secret}"
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(
            (
                f"POST /o/token/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Content-Type: application/x-www-form-urlencoded\r\n"
                f"Content-Length: {len(body)}\r\n\r\n{body}"
            ).encode()
        )
        assert sock.recv(65536) == b""
    assert cc_request(server, client_id, secret).status_code == 200  # the server lives on
    assert server.stats()["token_requests"]["client_credentials"] == 3


def test_concurrent_requests_are_counted_and_faulted_exactly(
    server: AuthServer,
) -> None:
    client_id, secret = new_client(server, grant_type="client-credentials")
    server.set_fault("status_500", count=5)
    with ThreadPoolExecutor(max_workers=8) as pool:
        codes = list(pool.map(lambda _: cc_request(server, client_id, secret).status_code, range(20)))
    assert sorted(codes) == [200] * 15 + [500] * 5
    assert server.stats()["token_requests"]["client_credentials"] == 20


# --- token response options -------------------------------------------------------------------


def test_token_extra_is_merged_into_token_responses(server: AuthServer) -> None:
    client_id, secret = new_client(server)
    server.set_token_extra({"instance_url": "https://acme.example", "id": "https://id/005"})
    oauth, token = code_flow(server, client_id, secret)
    assert token["instance_url"] == "https://acme.example" and token["id"] == "https://id/005"
    refreshed = oauth.refresh_token(server.token_url, auth=HTTPBasicAuth(client_id, secret))
    assert refreshed["instance_url"] == "https://acme.example"
    server.set_token_extra({})
    cc_id, cc_secret = new_client(server, grant_type="client-credentials")
    assert "instance_url" not in cc_request(server, cc_id, cc_secret).json()


def test_omit_expires_in(server: AuthServer) -> None:
    client_id, secret = new_client(server, grant_type="client-credentials")
    server.set_token_options(omit_expires_in=True)
    data = cc_request(server, client_id, secret).json()
    assert data["access_token"] and "expires_in" not in data
    server.set_token_options(omit_expires_in=False)
    assert cc_request(server, client_id, secret).json()["expires_in"] == 3600


def test_omit_refresh_token_on_refresh_keeps_the_old_one_valid(
    server: AuthServer,
) -> None:
    client_id, secret = new_client(server)
    _oauth, token = code_flow(server, client_id, secret)
    server.set_token_options(omit_refresh_token_on_refresh=True)
    for _ in range(2):  # no rotation: the same refresh token works again and again
        response = requests.post(
            server.token_url,
            auth=(client_id, secret),
            timeout=10,
            data={
                "grant_type": "refresh_token",
                "refresh_token": token["refresh_token"],
            },
        )
        assert response.status_code == 200, response.text
        assert response.json()["access_token"] and "refresh_token" not in response.json()


def test_latency_slows_every_token_request(server: AuthServer) -> None:
    client_id, secret = new_client(server, grant_type="client-credentials")
    server.set_token_options(latency=0.6)
    started = time.monotonic()
    assert cc_request(server, client_id, secret).status_code == 200
    assert time.monotonic() - started >= 0.6


# --- control API ------------------------------------------------------------------------------


def test_control_api_requires_the_key(server: AuthServer) -> None:
    assert requests.get(f"{server.url}/_control/stats", timeout=10).status_code == 403
    wrong = {"X-Control-Key": "wrong"}
    assert requests.post(f"{server.url}/_control/reset", headers=wrong, timeout=10).status_code == 403


def test_reset_clears_faults_options_and_counters(server: AuthServer) -> None:
    client_id, secret = new_client(server, grant_type="client-credentials")
    server.set_fault("status_500")
    server.set_token_options(omit_expires_in=True)
    assert cc_request(server, client_id, secret).status_code == 500
    server.reset()
    assert server.stats()["token_requests"]["client_credentials"] == 0
    data = cc_request(server, client_id, secret).json()
    assert data["access_token"] and data["expires_in"] == 3600
