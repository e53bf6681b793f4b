"""The outbound settings of controlroom.settings (star-imported by it once the .env file is read): every call to a
provider, to an API through the proxy and to a webhook receiver is made under these (connections.outbound.policy).
From the environment, like every setting; a value that cannot work stops start-up with one sentence."""

from urllib.parse import urlsplit

import environ
from django.core.exceptions import ImproperlyConfigured

from controlroom.env import number, valid_port

env = environ.Env()
DEBUG = env.bool("DEBUG", default=False)  # as controlroom.settings reads it

# Outbound calls to providers (connections/oauth/client.py is the only module that makes them).
OUTBOUND_TIMEOUT = number("OUTBOUND_TIMEOUT", 10.0, minimum=0.1, whole=False)
# The API proxy's calls: the most connecting, sending the bot's request and receiving the answer's headers may take
# (the body then streams, each read within this too).
PROXY_TIMEOUT = number("PROXY_TIMEOUT", 60.0, minimum=0.1, whole=False)
# Off by default: how many times the proxy sends an idempotent call again when the API answers 502, 503 or 504, and
# the longest it waits before one (a longer Retry-After goes back to the bot instead, as a 429's always does).
PROXY_RETRIES = int(number("PROXY_RETRIES", 0, unit="retries"))
PROXY_RETRY_WAIT_MAX = number("PROXY_RETRY_WAIT_MAX", 2.0, whole=False)
# Hosts that may be reached over plain http (loopback for development); everything else must be https.
OUTBOUND_HTTP_ALLOWED_HOSTS = env.list(
    "OUTBOUND_HTTP_ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "::1"] if DEBUG else []
)
# Refuse outbound calls to addresses that are not public: loopback, private, link-local (cloud metadata), ...
# (SSRF protection). On unless DEBUG: an internal identity provider or webhook receiver is allowed by listing its
# host name or network in OUTBOUND_ALLOWED_PRIVATE (host names and CIDRs, comma-separated).
OUTBOUND_BLOCK_PRIVATE_ADDRESSES = env.bool("OUTBOUND_BLOCK_PRIVATE_ADDRESSES", default=not DEBUG)
OUTBOUND_ALLOWED_PRIVATE = [entry.strip() for entry in env.list("OUTBOUND_ALLOWED_PRIVATE", default=[])]
OUTBOUND_ALLOWED_PRIVATE = [entry for entry in OUTBOUND_ALLOWED_PRIVATE if entry]
OUTBOUND_PROXY_URL = env.str("OUTBOUND_PROXY_URL", default="")
OUTBOUND_PROXY_BYPASS = env.list("OUTBOUND_PROXY_BYPASS", default=[])
_PROXY_HELP = "OUTBOUND_PROXY_URL must look like http://[user:password@]host:port (password URL-encoded)."
try:
    _proxy = urlsplit(OUTBOUND_PROXY_URL)
except ValueError:
    raise ImproperlyConfigured(_PROXY_HELP) from None
if OUTBOUND_PROXY_URL and (
    _proxy.scheme not in ("http", "https") or not _proxy.hostname or not valid_port(_proxy) or not _proxy.port
):
    raise ImproperlyConfigured(_PROXY_HELP)

# A provider called inside a database transaction is a programming error (it holds locks for as long as the
# provider takes, and a rotated refresh token is lost if the transaction rolls back): in development and tests
# it raises, in production it is logged as an error (connections.outbound.policy).
OUTBOUND_RAISE_IN_TRANSACTION = DEBUG

__all__ = [
    "OUTBOUND_ALLOWED_PRIVATE",
    "OUTBOUND_BLOCK_PRIVATE_ADDRESSES",
    "OUTBOUND_HTTP_ALLOWED_HOSTS",
    "OUTBOUND_PROXY_BYPASS",
    "OUTBOUND_PROXY_URL",
    "OUTBOUND_RAISE_IN_TRANSACTION",
    "OUTBOUND_TIMEOUT",
    "PROXY_RETRIES",
    "PROXY_RETRY_WAIT_MAX",
    "PROXY_TIMEOUT",
]
