"""Settings, all from the environment (django-environ); `.env.example` documents every variable.

A bad value stops start-up with one ImproperlyConfigured sentence; manage.py prints it without a traceback.
"""

import os
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import environ
from django.core.exceptions import ImproperlyConfigured
from kombu import Exchange, Queue

from controlroom.env import broker_transport_options, logging_settings, number, valid_port

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()


ENV_FILE = env.str("ENV_FILE", default=str(BASE_DIR / ".env"))
if ENV_FILE and Path(ENV_FILE).is_file():
    environ.Env.read_env(ENV_FILE)

# People: OIDC_*, PASSWORD_SIGN_IN, ... (docs/sso.md), read once the .env file is.
from controlroom.people_settings import *  # noqa: E402, F403

VAR_DIR = Path(env.str("VAR_DIR", default=str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)

DEBUG = env.bool("DEBUG", default=False)
PORT = int(number("PORT", 8000, minimum=1, unit=""))

_DEV_ONLY_KEY = "insecure-development-key-never-use-in-production"
SECRET_KEY = env.str("SECRET_KEY", default="")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY is not set: set it to a long random string, or set DEBUG=true for development."
        )
    SECRET_KEY = _DEV_ONLY_KEY

# Secrets at rest are encrypted under their own key, so that a leaked SECRET_KEY (sessions, CSRF) does not
# open the vault, and the vault key can be rotated on its own (manage.py rotate_encryption_key).
CRYPTOGRAPHY_KEY = env.str("CRYPTOGRAPHY_KEY", default="")
if not CRYPTOGRAPHY_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "CRYPTOGRAPHY_KEY is not set: set it to a long random string and back it up with the database."
        )
    CRYPTOGRAPHY_KEY = _DEV_ONLY_KEY + "-cryptography"
if CRYPTOGRAPHY_KEY == SECRET_KEY and not DEBUG:
    raise ImproperlyConfigured("CRYPTOGRAPHY_KEY must differ from SECRET_KEY.")
# Keys secrets may still be encrypted under, newest first: after changing CRYPTOGRAPHY_KEY, list the old one here
# and run `manage.py rotate_encryption_key` to re-encrypt everything under the new key.
CRYPTOGRAPHY_KEY_PREVIOUS = env.list("CRYPTOGRAPHY_KEY_PREVIOUS", default=[])
SECRET_KEY_FALLBACKS = env.list("SECRET_KEY_FALLBACKS", default=[])

PUBLIC_URL = env.str("PUBLIC_URL", default=f"http://127.0.0.1:{PORT}").rstrip("/")
_public = urlsplit(PUBLIC_URL)
if _public.scheme not in ("http", "https") or not _public.hostname:
    raise ImproperlyConfigured(f"PUBLIC_URL must be an absolute http(s) URL, not {PUBLIC_URL!r}.")
OAUTH_REDIRECT_URI = f"{PUBLIC_URL}/oauth/callback/"

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=sorted({_public.hostname, "127.0.0.1", "localhost"}))
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[f"{_public.scheme}://{_public.netloc}"])

INSTALLED_APPS = [
    "controlroom.admin.ControlRoomAdminConfig",  # django.contrib.admin, with Control Room's admin site
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "axes",
    "providers",
    "connections",
]

MIDDLEWARE = [
    # Gives each request an id (X-Request-ID, the caller's if it sends a sane one) for its log lines.
    "connections.endpoint.middleware.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # A bot's repeated token request answered from memory, and its API proxy calls, without the middleware below
    # (connections.endpoint.middleware).
    "connections.endpoint.middleware.BotRequestMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: it turns a locked-out login into its lockout answer.
    "axes.middleware.AxesMiddleware",
]

# Brute-force protection for every login form (admin and /accounts/login/): after AXES_FAILURE_LIMIT failed
# attempts for one username from one address, that pair is locked out for AXES_COOLOFF_MINUTES.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "connections.web.sign_in.PeopleSignIn",  # Django's ModelBackend, for people: a bot account never signs in
]
AXES_ENABLED = env.bool("AXES_ENABLED", default=True)
AXES_FAILURE_LIMIT = int(number("AXES_FAILURE_LIMIT", 5, minimum=1, unit="attempts"))
AXES_COOLOFF_TIME = timedelta(minutes=number("AXES_COOLOFF_MINUTES", 15, minimum=1, unit="minutes"))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
# The client's address as TRUSTED_PROXY_COUNT proxies in front of us report it (connections.http.client_address):
# a lockout must hit the one client, not everyone behind the TLS proxy.
AXES_CLIENT_IP_CALLABLE = "connections.http.client_address"
# How many proxies in front of Control Room append the client's address to X-Forwarded-For (the TLS proxy: 1).
# 0 (the default): the client is REMOTE_ADDR, and X-Forwarded-For is ignored.
TRUSTED_PROXY_COUNT = int(number("TRUSTED_PROXY_COUNT", 0, unit="proxies"))
AXES_LOCKOUT_TEMPLATE = "connections/locked_out.html"

ROOT_URLCONF = "controlroom.urls"
WSGI_APPLICATION = "controlroom.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

_SUPPORTED_DATABASES = {"django.db.backends.sqlite3", "django.db.backends.postgresql"}
DATABASE_URL = env.str("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'controlroom.sqlite3'}")
_DATABASE_HELP = (
    "DATABASE_URL must start with postgres:// (postgres://user:password@host:5432/name) or sqlite:/// "
    "(sqlite:////absolute/path.sqlite3)."
)
if urlsplit(DATABASE_URL).scheme not in ("postgres", "postgresql", "pgsql", "sqlite"):
    raise ImproperlyConfigured(_DATABASE_HELP)
try:
    _database = env.db_url_config(DATABASE_URL)
except ValueError as exc:
    raise ImproperlyConfigured(f"DATABASE_URL is malformed ({exc}).") from None
if _database.get("ENGINE") not in _SUPPORTED_DATABASES:
    raise ImproperlyConfigured(_DATABASE_HELP)
if _database["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the web server read while the worker writes; the busy timeout makes a writer wait for the lock
    # instead of failing at once (several processes share the file in the embedded setup).
    _database["OPTIONS"] = {
        "timeout": 20,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
# Connections kept between requests: opening one (and, on SQLite, its PRAGMAs) costs more than a token answer.
_database["CONN_MAX_AGE"] = int(number("DATABASE_CONN_MAX_AGE", 60))
if _database["ENGINE"] != "django.db.backends.sqlite3":
    _database["CONN_HEALTH_CHECKS"] = True  # a server's connection can break (a restart); a file's cannot
    # Safety nets (seconds, 0 = none): a statement that runs away, a wait for a lock (a migration waiting behind
    # a long transaction would otherwise stall all traffic behind it), a transaction left open by a stuck process.
    _timeouts = {
        "statement_timeout": number("DATABASE_STATEMENT_TIMEOUT", 30, whole=False),
        "lock_timeout": number("DATABASE_LOCK_TIMEOUT", 10, whole=False),
        "idle_in_transaction_session_timeout": number("DATABASE_IDLE_IN_TRANSACTION_TIMEOUT", 60, whole=False),
    }
    _database["OPTIONS"] = {
        "connect_timeout": 5,
        # Prepared statements: PostgreSQL plans the hot queries (the token endpoint's) once per connection
        # instead of on every request. Needs PgBouncer 1.21+ in transaction mode, if PgBouncer is used (with
        # `ignore_startup_parameters = options`, or these timeouts set on the database role instead).
        "server_side_binding": True,
        "prepare_threshold": 5,
        "options": " ".join(f"-c {name}={int(seconds * 1000)}" for name, seconds in _timeouts.items()),
    }
DATABASES = {"default": _database}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env.str("REDIS_URL", default="")


# URL values may hold passwords, so the messages below never repeat them.
_redis = urlsplit(REDIS_URL)
if REDIS_URL and (_redis.scheme not in ("redis", "rediss", "unix") or not valid_port(_redis)):
    raise ImproperlyConfigured("REDIS_URL must look like redis://[:password@]host:6379/0 (or rediss://, unix://).")

if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            # A hung Redis fails a cache call in seconds rather than holding a request for ever.
            "OPTIONS": {"socket_timeout": 2, "socket_connect_timeout": 2},
        }
    }
else:
    # A file cache is shared by every process on this machine (web, worker), unlike the per-process
    # local-memory cache, and needs no server.
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(VAR_DIR / "cache"),
        }
    }

# Celery: Redis when REDIS_URL is set; otherwise kombu's filesystem transport under var/, which needs no server
# and is shared by the processes of one machine.
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default=REDIS_URL or "filesystem://")
CELERY_BROKER_TRANSPORT_OPTIONS = broker_transport_options(CELERY_BROKER_URL, VAR_DIR)
CELERY_BROKER_CONNECTION_TIMEOUT = 5
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# A prefork child is replaced after this many tasks: whatever a library leaks does not grow for ever.
CELERY_WORKER_MAX_TASKS_PER_CHILD = 1000
# Celery's Django fixup closes every database connection around every task unless told to reuse them: a worker
# keeps its connections, and controlroom.celery checks them around each task as Django does around a request
# (a broken one is replaced before the next task).
CELERY_DB_REUSE_MAX = 1000
# Refreshes have their own queue, so the heartbeat and the sweep (default queue, consumed first) are never stuck
# behind a backlog of refreshes. A worker started without -Q consumes both.
CELERY_TASK_QUEUES = [Queue(name, Exchange(name), routing_key=name) for name in ("celery", "refresh")]
CELERY_TASK_DEFAULT_QUEUE = "celery"
CELERY_TASK_ROUTES = {
    name: {"queue": "refresh"} for name in ("connections.tasks.refresh_token", "connections.tasks.refresh_tokens")
}
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
# How often beat wakes up: it records its heartbeat (and, with the refresh engine, sweeps for due tokens).
BEAT_INTERVAL = int(number("BEAT_INTERVAL", 30, minimum=1))

# Outbound calls (to providers, APIs through the proxy, webhook receivers): timeouts, the address policy, the
# forward proxy. Imported here, once the .env file is read.
from controlroom.outbound_settings import *  # noqa: E402, F403

# Refresh a token this many seconds before it expires (a provider may override it; never more than half the
# token's lifetime).
TOKEN_REFRESH_MARGIN = int(number("TOKEN_REFRESH_MARGIN", 300))
# How long a caller waits for another process's refresh of the same token before giving up.
REFRESH_WAIT_SECONDS = number("REFRESH_WAIT_SECONDS", 15.0, whole=False)
# The most request threads of a web process in a forced refresh of one connection's tokens (calling its provider or
# waiting for it); past it a request is answered at once (connections.endpoint.freshness): a storm of forced refreshes
# at a slow provider cannot take every thread from the bots of other connections. gunicorn.conf.py gives 4 a process.
REFRESH_WAITERS_PER_CONNECTION = int(number("REFRESH_WAITERS_PER_CONNECTION", 2, minimum=1, unit="requests"))

# After this many refresh failures in a row the managers are told (a recovery notice follows when it heals).
REFRESH_FAILURE_NOTIFY_THRESHOLD = int(number("REFRESH_FAILURE_NOTIFY_THRESHOLD", 3, minimum=1, unit="failures"))
# The beat sweep claims the tokens due this many at a time (one statement on PostgreSQL), until none is left.
REFRESH_SWEEP_BATCH = int(number("REFRESH_SWEEP_BATCH", 1000, minimum=1, unit="tokens"))
# A refresh task takes this many tokens, and a worker process has this many provider calls in flight at once
# (threads), at most REFRESH_PROVIDER_CONCURRENCY of them to one token host.
REFRESH_TASK_SIZE = int(number("REFRESH_TASK_SIZE", 50, minimum=1, unit="tokens"))
REFRESH_CONCURRENCY = int(number("REFRESH_CONCURRENCY", 8, minimum=1, unit="threads"))
REFRESH_PROVIDER_CONCURRENCY = int(number("REFRESH_PROVIDER_CONCURRENCY", 4, minimum=1, unit="calls"))
# A token is refreshed at a random point of the first part of its refresh margin (0.1: the first tenth), so
# tokens issued together are not all due together.
REFRESH_JITTER = number("REFRESH_JITTER", 0.1, whole=False, unit="")
if REFRESH_JITTER > 0.5:
    raise ImproperlyConfigured(f"REFRESH_JITTER must be a number from 0 to 0.5, not {REFRESH_JITTER:g}.")
# Optional webhook told about reauthorization needed, sustained failures and recoveries (JSON, signed with
# HMAC-SHA256 under NOTIFY_WEBHOOK_SECRET in the X-ControlRoom-Signature header).
NOTIFY_WEBHOOK_URL = env.str("NOTIFY_WEBHOOK_URL", default="")
NOTIFY_WEBHOOK_SECRET = env.str("NOTIFY_WEBHOOK_SECRET", default="")
if NOTIFY_WEBHOOK_URL and urlsplit(NOTIFY_WEBHOOK_URL).scheme not in ("http", "https"):
    raise ImproperlyConfigured("NOTIFY_WEBHOOK_URL must be an http(s) URL.")

# Token endpoint requests allowed per bot key per minute (0: no limit); more get 429 with Retry-After.
TOKEN_RATE_LIMIT_PER_MINUTE = int(number("TOKEN_RATE_LIMIT_PER_MINUTE", 600, unit="requests"))
# Failed authentications at the token endpoint allowed per client address per minute (0: no limit); more get
# 429 with Retry-After. A working key is never refused for it.
TOKEN_AUTH_FAILURES_PER_MINUTE = int(number("TOKEN_AUTH_FAILURES_PER_MINUTE", 20, unit="failures"))
# Per address and minute, this many failed authentications (token endpoint, OAuth callback) are audited one by
# one; the rest are counted and audited as one event when the minute is over.
AUTH_FAILURES_AUDITED_ONE_BY_ONE = int(number("AUTH_FAILURES_AUDITED_ONE_BY_ONE", 5, unit="failures"))
# And at most this many a minute from all addresses together: a flood from many addresses is counted too.
AUTH_FAILURES_AUDITED_PER_MINUTE = int(number("AUTH_FAILURES_AUDITED_PER_MINUTE", 100, unit="failures"))
# Each web process answers repeated token requests from memory, checks those answers against the database and
# writes the audit events of every answer this often: the longest a change (a revoked key, a refreshed token)
# takes to reach the other web processes. Off: every request goes through the database (to measure that path,
# or to rule the memory out when looking for a fault).
TOKEN_CACHE_SYNC_SECONDS = number("TOKEN_CACHE_SYNC_SECONDS", 0.05, minimum=0.001, whole=False)
TOKEN_CACHE_ENABLED = env.bool("TOKEN_CACHE_ENABLED", default=True)
# Days audit events are kept (0: all), then pruned by a scheduled task (docs/audit.md; audit_export archives first).
AUDIT_RETENTION_DAYS = int(number("AUDIT_RETENTION_DAYS", 400, unit="days"))

# How long an authorization started with Connect stays valid (state and PKCE verifier).
OAUTH_STATE_TTL = int(number("OAUTH_STATE_TTL", 600))
# Lifetime assumed for a token whose response has no expires_in, when neither the connection nor its provider
# says otherwise.
DEFAULT_TOKEN_LIFETIME = int(number("DEFAULT_TOKEN_LIFETIME", 3600))

try:
    _email = env.email_url("EMAIL_URL", default="consolemail://")
except (ValueError, KeyError, ImproperlyConfigured):
    raise ImproperlyConfigured(
        "EMAIL_URL must look like smtp://user:password@host:587, smtp+tls://..., or consolemail:// (the default)."
    ) from None
vars().update(_email)
EMAIL_TIMEOUT = 10
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="Control Room <controlroom@localhost>")
SERVER_EMAIL = DEFAULT_FROM_EMAIL

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "my_connections"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True
# Django formats dates from the language's format module, never from DATETIME_FORMAT and the like in settings:
# controlroom/formats/en/formats.py gives every page one format, to the second.
FORMAT_MODULE_PATH = ["controlroom.formats"]

STATIC_URL = "static/"
# Outside VAR_DIR, so a volume mounted over the data directory does not hide the files collected at build time.
STATIC_ROOT = Path(env.str("STATIC_ROOT", default=str(BASE_DIR / "staticfiles")))
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # whitenoise warns on every request when it is missing
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}

# Production hardening: on whenever DEBUG is off. `manage.py check --deploy` is clean once SECURE_HSTS_PRELOAD is
# set to true too (left to the operator: preloading commits the domain to https for months).
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
# Names of its own: a provider on the same host (Django's defaults too, say, during a trial) would otherwise
# replace the admin's session while someone signs in there, and the OAuth callback would find another session.
SESSION_COOKIE_NAME = "controlroom_sessionid"
CSRF_COOKIE_NAME = "controlroom_csrftoken"
if not DEBUG:
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
    # Load balancers and container health checks probe over plain http.
    SECURE_REDIRECT_EXEMPT = [r"^(healthz|livez|readyz)$"]
    SECURE_HSTS_SECONDS = int(number("SECURE_HSTS_SECONDS", 31536000))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=True)
    SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)
    if env.bool("TRUST_X_FORWARDED_PROTO", default=False):
        # Only behind a TLS-terminating proxy that sets this header itself.
        SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# GET /metrics (Prometheus) is off unless METRICS_TOKEN is set; then every process (web workers, Celery workers)
# keeps its counts in files of one directory that a scrape sums. prometheus_client reads the variable when it is
# first imported, which is after the settings.
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")
if METRICS_TOKEN:
    METRICS_DIR = Path(env.str("PROMETHEUS_MULTIPROC_DIR", default=str(VAR_DIR / "metrics")))
    METRICS_DIR.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(METRICS_DIR)

LOG_LEVEL = env.str("LOG_LEVEL", default="INFO").upper()
if LOG_LEVEL not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
    raise ImproperlyConfigured(f"LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or CRITICAL, not {LOG_LEVEL!r}.")
# LOG_FORMAT=json: one JSON object a line, for a log pipeline; the default stays readable text. Both are redacted.
LOG_FORMAT = env.str("LOG_FORMAT", default="text").lower()
if LOG_FORMAT not in ("text", "json"):
    raise ImproperlyConfigured(f"LOG_FORMAT must be text or json, not {LOG_FORMAT!r}.")
LOGGING = logging_settings(LOG_LEVEL, LOG_FORMAT)
people_settings_apply(AUTHENTICATION_BACKENDS, MIDDLEWARE, TEMPLATES)  # noqa: F405 - its backend, middleware, page context
