"""Launcher and client for the loopback OAuth 2.0 authorization server in tests/authserver.

Importable without Django settings (stdlib, requests, and tests/support/processes.py, which runs its gunicorn).
Typical use::

    server = AuthServer()
    server.start()
    server.create_client("cid", "secret", ["http://127.0.0.1:8000/cb"])
    server.create_user("alice", "pw")
    ...
    server.stop()
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Self
from urllib.parse import urljoin, urlsplit

import requests

from tests.support.processes import Processes
from tests.support.servers import free_port, gunicorn_bind_state
from tests.support.waiting import wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]
SETTINGS_MODULE = "tests.authserver.settings"
_NAME = "authserver"


class AuthorizeError(RuntimeError):
    """The browserless authorize flow stopped on a page it cannot get past (e.g. DOT's
    error page for an unregistered redirect URI, or a failed login)."""

    def __init__(self, message: str, status_code: int, body: str) -> None:
        super().__init__(f"{message} (HTTP {status_code}): {body[:800]}")
        self.status_code = status_code
        self.body = body


class _Forms(HTMLParser):
    """Collects the forms of a page: their inputs and submit buttons."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict[str, Any]] = []
        self._button: dict[str, str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append({"attrs": a, "fields": {}, "buttons": []})
        elif not self.forms:
            return
        elif tag == "input" and a.get("type") not in ("submit", "button") and a.get("name"):
            self.forms[-1]["fields"][a["name"]] = a.get("value", "")
        elif tag == "input" and a.get("type") == "submit":
            self.forms[-1]["buttons"].append({**a, "text": a.get("value", "")})
        elif tag == "button" and a.get("type", "submit") == "submit":
            self._button = {**a, "text": ""}
            self.forms[-1]["buttons"].append(self._button)

    def handle_data(self, data: str) -> None:
        if self._button is not None:
            self._button["text"] += data.strip()

    def handle_endtag(self, tag: str) -> None:
        if tag == "button":
            self._button = None


def _gunicorn_command(port: int) -> list[str]:
    # One worker process: holds (tests/authserver/holds.py) live in its memory. Threads enough for the requests a
    # test holds at once besides the ones it still sends.
    options = (
        "--workers 1 --threads 16 --timeout 120 --graceful-timeout 3"
        # gunicorn 27 otherwise opens ~/.gunicorn/gunicorn.ctl, shared by every instance.
        " --no-control-socket"
        " --access-logfile - --error-logfile - --log-level info"
    )
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "tests.authserver.wsgi:application",
        f"--bind=127.0.0.1:{port}",
        *options.split(),
    ]


class AuthServer:
    """A real DOT authorization server in its own gunicorn process on 127.0.0.1."""

    def __init__(self, access_token_lifetime: int = 3600, log_dir: str | None = None) -> None:
        self.access_token_lifetime = access_token_lifetime
        self.workdir = Path(log_dir or tempfile.mkdtemp(prefix="authserver-"))
        self.log_path = self.workdir / "authserver.log"
        self.db_path = self.workdir / "authserver.sqlite3"
        self.control_key = secrets.token_urlsafe(24)
        self.port: int | None = None
        self._processes = Processes(log_dir=self.workdir)  # its one process, named authserver: authserver.log

    # --- lifecycle ---------------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            DJANGO_SETTINGS_MODULE=SETTINGS_MODULE,
            AUTHSERVER_DB=str(self.db_path),
            AUTHSERVER_CONTROL_KEY=self.control_key,
            AUTHSERVER_ACCESS_TOKEN_LIFETIME=str(self.access_token_lifetime),
            PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])),
            PYTHONUNBUFFERED="1",
        )
        return env

    def start(self) -> Self:
        if self.running:
            raise RuntimeError("auth server already started")
        env = self._env()
        migrate = subprocess.run(
            [sys.executable, "-m", "django", "migrate", "--noinput", "-v", "0"],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if migrate.returncode != 0:
            raise RuntimeError(
                f"auth server migrate failed (exit {migrate.returncode}):\n{migrate.stdout}\n{migrate.stderr}"
            )
        for attempt in range(3):
            self.port = free_port()  # may race with another process: retried below
            process = self._processes.start(
                _NAME, _gunicorn_command(self.port), {**env, "AUTHSERVER_PUBLIC_URL": self.url}
            )
            said = wait_for(
                lambda process=process: "exited" if process.poll() is not None else self._healthy(),
                60,
                f"the authorization server to answer on {self.url}",
                interval=0.1,
                details=self._log_tail,
            )
            if said == "healthy":
                return self
            exit_code = process.poll()
            self._terminate()  # keeps the migrated DB for the next attempt
            if attempt < 2 and gunicorn_bind_state(self._log_tail(), self.port) == "taken":
                continue
            raise RuntimeError(
                f"auth server exited with code {exit_code} before answering on {self.url}; "
                f"log {self.log_path}:\n{self._log_tail()}"
            )
        raise AssertionError("unreachable")

    @property
    def running(self) -> bool:
        return _NAME in self._processes.started

    @property
    def pid(self) -> int:
        """The gunicorn master's process id (its worker is its child)."""
        return self._processes.started[_NAME][0].pid

    def _healthy(self) -> str:
        try:
            return "healthy" if self._control("GET", "health", check=False).status_code == 200 else ""
        except requests.RequestException:
            return ""

    def _log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "<no log>"

    def stop(self) -> None:
        """Terminate the server (kill it if it does not exit within 10 s). Idempotent."""
        self._terminate()
        # The DB goes with the server; the log stays in workdir for post-mortems.
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.db_path}{suffix}").unlink(missing_ok=True)

    def _terminate(self) -> None:
        if self.running:
            self._processes.stop(_NAME)  # SIGTERM; SIGKILL after 10 s

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- URLs --------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("auth server not started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def authorize_url(self) -> str:
        return f"{self.url}/o/authorize/"

    @property
    def token_url(self) -> str:
        return f"{self.url}/o/token/"

    @property
    def device_authorization_url(self) -> str:
        return f"{self.url}/o/device-authorization/"

    @property
    def refresh_url(self) -> str:
        return f"{self.url}/o/refresh/"

    @property
    def revoke_url(self) -> str:
        return f"{self.url}/o/revoke_token/"

    @property
    def issuer(self) -> str:
        """Its issuer identifier: /o/.well-known/openid-configuration is its discovery document."""
        return f"{self.url}/o"

    @property
    def introspect_url(self) -> str:
        return f"{self.url}/o/introspect/"

    @property
    def userinfo_url(self) -> str:
        return f"{self.url}/api/me"

    # --- control API -------------------------------------------------------------------------

    def _control(self, method: str, name: str, body: dict | None = None, check: bool = True, timeout: float = 10):
        response = requests.request(
            method,
            f"{self.url}/_control/{name}",
            json=body,
            headers={"X-Control-Key": self.control_key},
            timeout=timeout,
        )
        if check and response.status_code != 200:
            raise RuntimeError(f"auth server control {name} failed: HTTP {response.status_code} {response.text}")
        return response

    def create_client(
        self,
        client_id: str,
        client_secret: str,
        redirect_uris: list[str],
        grant_type: str = "authorization-code",
        pkce_required: bool = False,
        name: str | None = None,
        public_key: str = "",
        key_id: str = "",
    ) -> None:
        """Create or replace a confidential client ("authorization-code"/"client-credentials"); with a public key
        (PEM) it may also authenticate with signed assertions (private_key_jwt) and use the JWT bearer grant."""
        self._control(
            "POST",
            "clients",
            {
                "client_id": client_id,
                "client_secret": client_secret,
                "redirect_uris": list(redirect_uris),
                "grant_type": grant_type,
                "pkce_required": pkce_required,
                "name": name or client_id,
                "public_key": public_key,
                "key_id": key_id,
            },
        )

    def change_client_secret(self, client_id: str, client_secret: str) -> None:
        """Rotate a client's secret at the server, keeping its grants: the old secret is refused from now on."""
        self._control("POST", "client_secret", {"client_id": client_id, "client_secret": client_secret})

    def approve_device(self, user_code: str, username: str, password: str, approve: bool = True) -> None:
        """Approve (or deny) a device authorization as a person at the verification page would: sign in, enter
        the user code, press Accept (or Deny). Raises AuthorizeError if a page is not what it should be."""
        session = requests.Session()
        url, method, data = f"{self.url}/o/device/", "GET", None
        done: set[str] = set()
        for _ in range(12):
            response = session.request(method, url, data=data, allow_redirects=False, timeout=10)
            if response.is_redirect:
                url, method, data = urljoin(url, response.headers["Location"]), "GET", None
                continue
            if "accept" in done:
                return
            forms = _Forms()
            forms.feed(response.text)
            form = forms.forms[0] if response.status_code == 200 and forms.forms else None
            if form is not None and "password" in form["fields"] and "login" not in done:
                step, data = "login", {**form["fields"], "username": username, "password": password}
            elif form is not None and "user_code" in form["fields"] and "code" not in done:
                step, data = "code", {**form["fields"], "user_code": user_code}
            elif form is not None and any(button.get("name") == "action" for button in form["buttons"]):
                step, data = "accept", {**form["fields"], "action": "accept" if approve else "deny"}
            else:
                raise AuthorizeError("unexpected page", response.status_code, response.text)
            done.add(step)
            url, method = urljoin(url, form["attrs"].get("action") or url), "POST"
        raise RuntimeError("device approval did not finish within 12 steps")

    def create_user(self, username: str, password: str) -> None:
        self._control("POST", "users", {"username": username, "password": password})

    def set_fault(
        self,
        mode: str,
        count: int | None = None,
        delay: float = 0,
        grant_types: list[str] | None = None,
        description: str = "",
    ) -> None:
        """Make the next `count` (None = all, until cleared) /o/token/ requests of
        `grant_types` (None = any) fail with `mode` (`description`: invalid_grant's error_description)."""
        self._control(
            "POST",
            "fault",
            {"mode": mode, "count": count, "delay": delay, "grant_types": grant_types, "description": description},
        )

    def clear_fault(self) -> None:
        self.set_fault("none")

    def set_token_extra(self, fields: dict[str, Any]) -> None:
        self._control("POST", "token_extra", {"fields": fields})

    def set_token_options(self, **opts: Any) -> None:
        """omit_expires_in: bool, omit_refresh_token_on_refresh: bool, latency: seconds before the request is
        processed, response_delay: seconds after it is processed (a refresh token already rotated); nest_under:
        the token answer nested under this key; require_params / require_headers: what a token request must
        carry, else 400 invalid_request; client_auth: "basic" or "post", the only client authentication taken
        (else 401 invalid_client); json_body: token and revocation requests must be a JSON object;
        refresh_elsewhere: refreshes are taken only at refresh_url (/o/refresh/), and only they; revoke_whole_grant:
        revoking any token of a person's grant to a client revokes all their refresh and access tokens for that
        client (as reported of Google), not only that token and those issued from it."""
        self._control("POST", "token_options", opts)

    def set_discovery(self, *, missing: bool = False, openid_missing: bool = False, **fields: Any) -> None:
        """The discovery document answers 404 at both its addresses (missing) or at OpenID Connect's only
        (openid_missing: RFC 8414's still answers), or with these fields replacing its own."""
        self._control("POST", "discovery", {"missing": missing, "openid_missing": openid_missing, "document": fields})

    # --- hold-until-released (tests/authserver/holds.py) --------------------------------------

    def hold(self, grant_types: list[str] | None = None, *, stage: str = "arrival") -> None:
        """From now on every token request of `grant_types` (None = any) waits at `stage` until release():
        "arrival" (counted, not processed: nothing rotated yet) or "answer" (processed, a refresh token already
        rotated, the answer not sent yet)."""
        self._control("POST", "hold", {"stage": stage, "grant_types": grant_types})

    def wait_held(self, count: int = 1, timeout: float = 30) -> int:
        """Wait until at least `count` token requests are held now; returns how many have been held since the
        hold was armed. Fails after `timeout` seconds (only a hang comes near it)."""
        answer = self._control("POST", "held", {"count": count, "timeout": timeout}, timeout=timeout + 10).json()
        if not answer["reached"]:
            raise AssertionError(f"{count} token requests were not held within {timeout} s: {answer}")
        return answer["held_since_armed"]

    def held(self) -> dict[str, int]:
        """{"held_now": n, "held_since_armed": n}, without waiting."""
        answer = self._control("POST", "held", {"count": 0, "timeout": 0}).json()
        return {"held_now": answer["held_now"], "held_since_armed": answer["held_since_armed"]}

    def release(self) -> int:
        """Let every held request go on and disarm the hold (later requests are not held); returns how many were
        held."""
        return self._control("POST", "release", {}).json()["released"]

    def requests_logged(self, method: str, path: str) -> int:
        """How many `method` requests of `path` its access log holds so far (a line is written once the request
        was answered): what no counter of its own counts, e.g. discovery document fetches."""
        return self._log_tail(chars=10**9).count(f'"{method} {path} HTTP/')

    def stats(self) -> dict[str, Any]:
        return self._control("GET", "stats").json()

    def live_grants(self, client_id: str) -> dict[str, int]:
        """{"refresh_tokens": n, "access_tokens": n} the server still accepts for the client."""
        return self._control("POST", "grants", {"client_id": client_id}).json()

    def reset(self) -> None:
        self._control("POST", "reset")

    # --- OpenID Provider (tests.authserver.openid) -------------------------------------------------------------

    @property
    def end_session_url(self) -> str:
        return f"{self.url}/o/logout/"

    def create_openid_client(
        self, client_id: str, client_secret: str, redirect_uris: list[str], post_logout_redirect_uris: list[str]
    ) -> None:
        """A relying party that signs people in: an authorization-code client whose ID tokens are signed with
        RS256, consented for everyone (no consent page, so prompt=none can renew a session), which RP-initiated
        logout may send back to post_logout_redirect_uris."""
        self.create_client(client_id, client_secret, redirect_uris)
        body = {"client_id": client_id, "post_logout_redirect_uris": list(post_logout_redirect_uris)}
        self._control("POST", "openid_client", body)

    def set_person(
        self, username: str, password: str = "", *, email: str | None = None, groups: list[str] | None = None
    ) -> None:
        """A person at the identity provider, with the e-mail and groups its ID tokens carry: created, or changed
        (a new password also ends their sessions there, as Django does; without one they last)."""
        if password:
            self.create_user(username, password)
        body = {"username": username, "groups": list(groups or []), **({"email": email} if email is not None else {})}
        self._control("POST", "user_groups", body)

    def spoil_next_id_token(self, mode: str) -> None:
        """The next ID token issued is spoilt: "audience" (issued to another client), "nonce" (another nonce),
        "expired", "signature" (signed with a key the server does not publish), "issuer" (another issuer's),
        "algorithm-none" (unsigned), "algorithm-hs256" (signed with HS256 and the client's own secret) or "azp"
        (authorized for another party)."""
        self._control("POST", "id_token_fault", {"mode": mode})

    # --- OAuth helpers -----------------------------------------------------------------------

    def whoami(self, access_token: str) -> requests.Response:
        return requests.get(
            self.userinfo_url,
            headers={"Authorization": f"Bearer {access_token}"},
            timeout=10,
        )

    def authorize_with_requests(
        self, authorization_url: str, username: str, password: str, approve: bool = True
    ) -> str:
        """Log in and press "Authorize" (or "Cancel" if not approve) like a browser would;
        return the Location of the redirect that leaves the auth server (the client's
        redirect URI with code and state, or with error=...), without following it.
        Raises AuthorizeError if it stops on a page (bad login, DOT's error page)."""
        session = requests.Session()
        own_hosts = {f"127.0.0.1:{self.port}", f"localhost:{self.port}"}
        url, method, data = authorization_url, "GET", None
        logged_in = False
        for _ in range(10):
            response = session.request(method, url, data=data, allow_redirects=False, timeout=10)
            if response.is_redirect:
                target = urljoin(url, response.headers["Location"])
                if urlsplit(target).netloc not in own_hosts:
                    return target
                url, method, data = target, "GET", None
                continue
            forms = _Forms()
            forms.feed(response.text)
            login = next((f for f in forms.forms if "password" in f["fields"]), None)
            consent = next((f for f in forms.forms if "client_id" in f["fields"]), None)
            if response.status_code == 200 and login is not None and not logged_in:
                form = login
                data = {**login["fields"], "username": username, "password": password}
                logged_in = True
            elif response.status_code == 200 and consent is not None:
                form = consent
                data = dict(consent["fields"])
                if approve:  # "Cancel" posts the form without the "allow" button's field
                    allow = next(b for b in consent["buttons"] if b.get("name") == "allow")
                    data["allow"] = allow.get("value", "")
            else:
                reason = "login failed" if login is not None else "unexpected page"
                raise AuthorizeError(reason, response.status_code, response.text)
            url = urljoin(url, form["attrs"].get("action") or url)
            method = "POST"
        raise RuntimeError("authorize flow did not finish within 10 steps")
