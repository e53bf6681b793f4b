"""The demo provider of `make demo`: the loopback OAuth 2.0 server the tests use (tests/authserver, with its OpenID
Connect discovery document; django-oauth-toolkit, a test requirement), started as a process of its own on
127.0.0.1 with its own SQLite database under var/demo-provider/, holding a client-credentials application, an
authorization-code application and a user. Development only: the caller refuses it with DEBUG off
(connections.config.demo).

Its data stays between runs: the applications are registered once (registering one again would drop the tokens it
issued, and Control Room's connections would need authorizing again), and again only when the redirect URI they
were registered with changed."""

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests
from django.conf import settings

from connections.errors import DemoProviderError

SERVER_SETTINGS = "tests.authserver.settings"
SERVER_APPLICATION = "tests.authserver.wsgi:application"
DEMO_USER = "demo"
DEMO_PASSWORD = "demo-password"  # noqa: S105 - typed at the loopback demo provider's sign-in, nothing else
CLIENT_CREDENTIALS_CLIENT = "demo-client-credentials"
AUTHORIZATION_CODE_CLIENT = "demo-authorization-code"
START_SECONDS = 60
# gunicorn 27 otherwise opens ~/.gunicorn/gunicorn.ctl, shared by every instance (tests/support/authserver.py too)
# --graceful-timeout: stopped, it ends its workers within 3 s (gunicorn waits 30 s by default).
SERVER_OPTIONS = (
    "--workers 1 --threads 4 --graceful-timeout 3 --no-control-socket --access-logfile - --error-logfile -".split()
)


@dataclass
class DemoProvider:
    folder: Path
    port: int
    process: subprocess.Popen | None = None
    control_key: str = field(default_factory=lambda: secrets.token_urlsafe(24), repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def authorization_url(self) -> str:
        return f"{self.url}/o/authorize/"

    @property
    def token_url(self) -> str:
        return f"{self.url}/o/token/"

    @property
    def revocation_url(self) -> str:
        return f"{self.url}/o/revoke_token/"

    @property
    def log_path(self) -> Path:
        return self.folder / "provider.log"

    def _environment(self) -> dict[str, str]:
        return {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": SERVER_SETTINGS,
            "AUTHSERVER_DB": str(self.folder / "provider.sqlite3"),
            "AUTHSERVER_CONTROL_KEY": self.control_key,
            "AUTHSERVER_SECRET_KEY": secrets.token_urlsafe(32),
            "AUTHSERVER_PUBLIC_URL": self.url,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(settings.BASE_DIR), os.environ.get("PYTHONPATH")])),
            "PYTHONUNBUFFERED": "1",
        }

    def start(self) -> None:
        """Migrate its database and serve it on 127.0.0.1; raises DemoProviderError with what went wrong."""
        self.folder.mkdir(parents=True, exist_ok=True)
        _port_must_be_free(self.port)
        environment = self._environment()
        migrate = subprocess.run(
            [sys.executable, "-m", "django", "migrate", "--no-input", "-v", "0"],
            cwd=settings.BASE_DIR,
            env=environment,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if migrate.returncode != 0:
            raise DemoProviderError(f"The demo provider's database could not be set up:\n{migrate.stderr[-2000:]}")
        with open(self.log_path, "ab") as log:  # the process keeps its own copy of the descriptor
            self.process = subprocess.Popen(  # noqa: S603 - our own Python and module, a port number
                [
                    sys.executable,
                    "-m",
                    "gunicorn",
                    SERVER_APPLICATION,
                    f"--bind=127.0.0.1:{self.port}",
                    *SERVER_OPTIONS,
                ],
                cwd=settings.BASE_DIR,
                env=environment,
                stdout=log,
                stderr=subprocess.STDOUT,
                # A session of its own: Ctrl-C reaches this command, which stops the server and its workers
                # together (stop), rather than each of them on its own, which could leave a worker behind.
                start_new_session=True,
            )
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline and self.process.poll() is None:
            if self._healthy():
                return
            time.sleep(0.2)
        self.stop()
        raise DemoProviderError(f"The demo provider did not start; its log, {self.log_path}:\n{self._log_tail()}")

    def _healthy(self) -> bool:
        try:
            return self._control("GET", "health", check=False).status_code == 200
        except requests.RequestException:
            return False

    def _log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""

    def _control(self, method: str, name: str, body: dict | None = None, check: bool = True) -> requests.Response:
        # The server's own control API (tests/authserver/views.py), under a key made for this run.
        answer = requests.request(
            method, f"{self.url}/_control/{name}", json=body, headers={"X-Control-Key": self.control_key}, timeout=10
        )
        if check and answer.status_code != 200:
            raise DemoProviderError(f"The demo provider refused {name}: HTTP {answer.status_code} {answer.text[:200]}")
        return answer

    def register(self, *, redirect_uri: str) -> dict[str, str]:
        """The applications and the user, registered once; returns each application's client secret by client ID."""
        record = self.folder / "applications.json"
        known = json.loads(record.read_text()) if record.exists() else {}
        if known.get("redirect_uri") == redirect_uri:
            return known["secrets"]
        client_secrets = {
            client: secrets.token_urlsafe(24) for client in (CLIENT_CREDENTIALS_CLIENT, AUTHORIZATION_CODE_CLIENT)
        }
        self._control(
            "POST",
            "clients",
            {
                "client_id": CLIENT_CREDENTIALS_CLIENT,
                "client_secret": client_secrets[CLIENT_CREDENTIALS_CLIENT],
                "redirect_uris": [],
                "grant_type": "client-credentials",
                "name": "Demo client credentials",
            },
        )
        self._control(
            "POST",
            "clients",
            {
                "client_id": AUTHORIZATION_CODE_CLIENT,
                "client_secret": client_secrets[AUTHORIZATION_CODE_CLIENT],
                "redirect_uris": [redirect_uri],
                "grant_type": "authorization-code",
                "pkce_required": True,
                "name": "Control Room (demo)",
            },
        )
        self._control("POST", "users", {"username": DEMO_USER, "password": DEMO_PASSWORD})
        record.write_text(json.dumps({"redirect_uri": redirect_uri, "secrets": client_secrets}))
        record.chmod(0o600)
        return client_secrets

    def serve(self, until: threading.Event | None = None) -> None:
        """Until Ctrl-C or SIGTERM (or `until` is set, or the server stops by itself); then stops it."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _interrupt)  # stopped by a supervisor: the server goes with it
        try:
            while self.process is not None and self.process.poll() is None:
                if until is not None and until.wait(0.5):
                    break
                if until is None:
                    time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()  # gunicorn stops its workers, within --graceful-timeout
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                # its workers too, not the master alone (its own session: the group is the master's process id,
                # still alive here, so the group is surely this server's)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _port_must_be_free(port: int) -> None:
    with socket.socket() as probe:
        probe.setsockopt(
            socket.SOL_SOCKET, socket.SO_REUSEADDR, 1
        )  # as gunicorn binds: a closed socket's wait is no owner
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            raise DemoProviderError(
                f"Port {port} on 127.0.0.1 is taken (a demo provider already running?): stop it, or choose another "
                "with make demo DEMO_PROVIDER_PORT=9200."
            ) from None
