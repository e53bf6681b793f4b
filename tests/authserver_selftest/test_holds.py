"""Self-tests of the loopback server's hold-until-released switch (tests/authserver/holds.py): a held token request
waits until the test releases it, at arrival (nothing processed) or at its answer (processed already)."""

import secrets
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.support.authserver import AuthServer


@pytest.fixture(scope="module")
def server() -> Iterator[AuthServer]:
    with AuthServer() as started:
        yield started


@pytest.fixture(autouse=True)
def _reset(server: AuthServer) -> None:
    server.reset()


def client_credentials(server: AuthServer) -> tuple[str, str]:
    client_id, secret = f"client-{uuid.uuid4().hex[:10]}", secrets.token_urlsafe(16)
    server.create_client(client_id, secret, [], grant_type="client-credentials")
    return client_id, secret


def token_request(server: AuthServer, client: tuple[str, str]) -> requests.Response:
    return requests.post(server.token_url, data={"grant_type": "client_credentials"}, auth=client, timeout=60)


def test_held_requests_wait_until_released_and_later_ones_go_through(server: AuthServer) -> None:
    client = client_credentials(server)
    server.hold(["client_credentials"])
    with ThreadPoolExecutor(3) as pool:
        answers = [pool.submit(token_request, server, client) for _ in range(3)]
        assert server.wait_held(3) == 3
        # held at arrival: counted, not processed
        assert server.stats()["token_requests"]["client_credentials"] == 3
        assert not any(answer.done() for answer in answers)
        assert server.release() == 3
        assert [answer.result(timeout=30).status_code for answer in answers] == [200] * 3
    assert token_request(server, client).status_code == 200  # released: the hold is off
    assert server.held() == {"held_now": 0, "held_since_armed": 3}


def test_a_hold_at_the_answer_holds_a_processed_request(server: AuthServer) -> None:
    client = client_credentials(server)
    server.hold(["client_credentials"], stage="answer")
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(token_request, server, client)
        server.wait_held(1)
        # processed: the access token it will carry exists already
        assert server.live_grants(client[0])["access_tokens"] == 1
        server.release()
        assert answer.result(timeout=30).status_code == 200


def test_other_grant_types_are_not_held(server: AuthServer) -> None:
    client = client_credentials(server)
    server.hold(["refresh_token"])
    assert token_request(server, client).status_code == 200
    assert server.held() == {"held_now": 0, "held_since_armed": 0}


def test_waiting_for_more_held_requests_than_arrive_fails(server: AuthServer) -> None:
    server.hold()
    with pytest.raises(AssertionError, match="not held within"):
        server.wait_held(1, timeout=0.2)


def test_a_reset_releases_what_is_held(server: AuthServer) -> None:
    client = client_credentials(server)
    server.hold()
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(token_request, server, client)
        server.wait_held(1)
        server.reset()
        assert answer.result(timeout=30).status_code == 200
