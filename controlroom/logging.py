"""Log redaction: whatever a library or a mistake puts in a log line, tokens and keys do not reach the output.

requests-oauthlib and oauthlib log whole token responses at DEBUG (settings cap them at WARNING as well); this
formatter is the second line of defence and also covers tracebacks and exception messages.
"""

import logging
import re

from pythonjsonlogger.json import JsonFormatter

from connections.ops import log_context

REDACTED = "[redacted]"

# Values that must never be printed, recognised by their shape or by the name they travel under.
_PATTERNS = [
    # PEM private keys (a connection's signing key), whole.
    (
        re.compile(r"-----BEGIN ([A-Z ]*)PRIVATE KEY-----.*?(-----END \1PRIVATE KEY-----|$)", re.DOTALL),
        "-----BEGIN PRIVATE KEY----- " + REDACTED,
    ),
    # Signed JWTs (client assertions, JWT bearer assertions, JWT access tokens), by their shape.
    (re.compile(r"\beyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+"), REDACTED),
    # Control Room bot keys: crk_<key id>_<secret>; the key id alone is not a secret and stays readable.
    (re.compile(r"\b(crk_[0-9a-f]{12}_)[A-Za-z0-9_\-]+"), r"\1" + REDACTED),
    # Authorization headers: Bearer and Basic credentials.
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=\-]{8,}"), r"\1 " + REDACTED),
    # name=value and "name": "value" pairs of OAuth secrets, in form bodies, query strings, JSON and reprs.
    (
        re.compile(
            r"(?i)([\"']?\b(?:access_token|refresh_token|id_token|client_secret|code_verifier|code|password|"
            r"client_assertion|assertion|private_key|device_code|token)[\"']?\s*[=:]\s*[\"']?)([^\"'&\s,}]+)"
        ),
        r"\1" + REDACTED,
    ),
    # The userinfo of URLs (proxy credentials, database passwords).
    (re.compile(r"(\b[a-z][a-z0-9+.\-]*://[^:/@\s]*:)[^@/\s]+@"), r"\1" + REDACTED + "@"),
]


def redact(text: str) -> str:
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactingFormatter(logging.Formatter):
    """Formats as usual, then redacts the whole line, traceback included."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class RedactingJsonFormatter(JsonFormatter):
    """LOG_FORMAT=json: one JSON object a line (time, level, logger, message, request_id, connection, and the
    traceback when there is one). Each value is redacted before it is encoded (once encoded, a quoted name is
    escaped and the patterns would not see it), and the line once more after."""

    def process_log_record(self, log_data: dict) -> dict:
        return {name: redact(value) if isinstance(value, str) else value for name, value in log_data.items()}

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class LogContextFilter(logging.Filter):
    """Puts the request id and the connection slug the line is about on every record (connections.ops.log_context),
    for both formats; the text format does not print them, the JSON one does."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = log_context.request_id.get()
        record.connection = log_context.connection.get()
        return True
