"""The bot client (client/) against the live server: a requests session that records what it sends, a client
made with it for the `bot` fixture's key, and a stub HTTP server for answers the live server never gives."""

import gc
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from controlroom_client import ControlRoom
from requests.adapters import HTTPAdapter

from tests.conftest import database_sessions
from tests.support.authserver import AuthServer
from tests.support.waiting import wait_for

TOKEN_PATH = "/api/v1/connections/"


class RecordingAdapter(HTTPAdapter):
    """requests' own adapter, noting every request it really sends; `before_send` may hold one up."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[requests.PreparedRequest] = []
        self.answer_headers: list[dict[str, str]] = []
        self.before_send: Callable[[requests.PreparedRequest], None] | None = None
        self._lock = threading.Lock()

    def send(self, request: requests.PreparedRequest, **kwargs) -> requests.Response:
        with self._lock:
            self.sent.append(request)
        if self.before_send is not None:
            self.before_send(request)
        response = super().send(request, **kwargs)
        with self._lock:
            # The headers only: a kept response would keep its connection to the live server open.
            self.answer_headers.append(dict(response.headers))
        return response

    def last_retry_after(self) -> str | None:
        return self.answer_headers[-1].get("Retry-After")

    def token_requests(self) -> list[dict[str, list[str]]]:
        """The query of every request to the token endpoint sent so far."""
        return [parse_qs(urlsplit(r.url).query) for r in self.sent if urlsplit(r.url).path.startswith(TOKEN_PATH)]


@pytest.fixture(autouse=True)
def server_threads_done(transactional_db) -> Iterator[None]:
    """After each test, the live server's request threads have closed their database sessions: one still open
    when the run drops the test database makes that fail. A response that an exception's traceback still holds
    (a reference cycle, until the garbage collector runs) keeps its keep-alive connection, and so its request
    thread, open even after its session was closed."""
    before = database_sessions()
    yield
    gc.collect()
    wait_for(lambda: database_sessions() <= before, 30, "the live server's request threads to close their sessions")


@pytest.fixture
def recorder() -> RecordingAdapter:
    return RecordingAdapter()


@pytest.fixture
def control_room(live_server, bot, recorder) -> Iterator[ControlRoom]:
    """The client for the bot's key, sending through the recording adapter."""
    session = requests.Session()
    session.mount("http://", recorder)
    with ControlRoom(live_server.url, bot.raw_key, session=session, timeout=20) as client:
        yield client
    session.close()


def revoke_at_provider(authserver: AuthServer, connection, access_token: str) -> None:
    """Revoke an access token at the authorization server (RFC 7009), as a provider's admin or a security
    incident would, while Control Room still holds it."""
    response = requests.post(
        authserver.revoke_url,
        data={"token": access_token, "token_type_hint": "access_token"},
        auth=(connection.client_id, connection.client_secret),
        timeout=10,
    )
    assert response.status_code == 200, response.text
    assert authserver.whoami(access_token).status_code == 401


@dataclass
class StubAnswer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "application/json"})
    body: bytes = b"{}"


@dataclass
class StubServer:
    """A loopback HTTP server that gives every request the same answer, and notes what it was sent."""

    url: str
    answer: StubAnswer
    received: list[dict[str, object]]
    answers: dict[str, StubAnswer] = field(default_factory=dict)  # by path: answered instead of `answer`

    def answer_json(self, status: int, payload: object, **headers: str) -> None:
        self.answer = StubAnswer(status, {"Content-Type": "application/json", **headers}, json.dumps(payload).encode())


@pytest.fixture
def stub_server() -> Iterator[StubServer]:
    state = StubServer(url="", answer=StubAnswer(), received=[])

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            state.received.append(
                {
                    "method": self.command,
                    "path": self.path,
                    "authorization": self.headers.get("Authorization"),
                    "body": self.rfile.read(length) if length else b"",
                }
            )
            answer = state.answers.get(self.path, state.answer)
            self.send_response(answer.status)
            for name, value in answer.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(answer.body)))
            self.end_headers()
            self.wfile.write(answer.body)

        do_GET = do_POST = _answer

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_port}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
