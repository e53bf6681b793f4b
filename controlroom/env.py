"""Helpers of controlroom.settings: numbers and URLs read from the environment with one sentence for a bad value,
and the logging configuration (redacted, text or JSON)."""

from pathlib import Path
from typing import Any
from urllib.parse import SplitResult

import environ
from django.core.exceptions import ImproperlyConfigured


def number(name: str, default: float, *, minimum: float = 0, whole: bool = True, unit: str = "seconds") -> float:
    """A numeric setting; anything else stops start-up with one sentence rather than a traceback."""
    raw = environ.Env().str(name, default="").strip()
    if not raw:
        return default
    expected = f"{name} must be a {'whole number' if whole else 'number'}{' of ' + unit if unit else ''}"
    try:
        value = int(raw) if whole else float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{expected}, {minimum:g} or more, not {raw!r}.") from None
    if value < minimum:
        raise ImproperlyConfigured(f"{expected}, {minimum:g} or more, not {raw!r}.")
    return value


def valid_port(parts: SplitResult) -> bool:
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return False
    return True


def logging_settings(level: str, log_format: str) -> dict[str, Any]:
    """LOGGING: every line through the redacting formatter (controlroom.logging), at `level`, as text or JSON."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "text": {
                "()": "controlroom.logging.RedactingFormatter",
                "format": "%(asctime)s %(levelname)s %(name)s %(message)s",
            },
            "json": {
                "()": "controlroom.logging.RedactingJsonFormatter",
                "format": "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s %(connection)s",
                "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
                "timestamp": False,
            },
        },
        "filters": {"context": {"()": "controlroom.logging.LogContextFilter"}},
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": log_format, "filters": ["context"]}},
        "root": {"handlers": ["console"], "level": level},
        "loggers": {
            # Django gives its logger a console handler of its own under DEBUG, which would print each line a second
            # time, past the redacting formatter: the root's handler is the only one.
            "django": {"handlers": [], "level": "INFO", "propagate": True},
            # requests-oauthlib and oauthlib log request bodies and token responses at DEBUG: never let them.
            "requests_oauthlib": {"level": "WARNING"},
            "oauthlib": {"level": "WARNING"},
            "urllib3": {"level": "WARNING"},
            "axes": {"level": "WARNING"},  # it announces its configuration at INFO in every process
        },
    }


def broker_transport_options(broker_url: str, var_dir: Path) -> dict[str, Any]:
    """Celery's broker: kombu's filesystem transport under var/ (the embedded default: no server, shared by the
    processes of one machine), or Redis with timeouts."""
    if broker_url.startswith("filesystem://"):
        queue_dir = var_dir / "celery" / "queue"
        for folder in ("queue", "processed", "control"):
            (var_dir / "celery" / folder).mkdir(parents=True, exist_ok=True)
        return {
            "data_folder_in": str(queue_dir),
            "data_folder_out": str(queue_dir),
            "processed_folder": str(var_dir / "celery" / "processed"),
            "store_processed": False,
            "control_folder": str(var_dir / "celery" / "control"),
        }
    if broker_url.startswith(("redis://", "rediss://")):
        return {
            # A hung Redis must fail calls rather than block web requests and workers forever.
            "socket_timeout": 10,
            "socket_connect_timeout": 5,
            # With late acknowledgement, a task a worker took but never acknowledged (the worker died) is delivered
            # again after this long. Tasks take seconds, and none is scheduled further ahead than a second or two.
            "visibility_timeout": 3600,
        }
    return {}


def metrics_directory() -> str:
    """The Prometheus multiprocess directory when metrics are on (METRICS_TOKEN), made by the settings; "" when
    not. For gunicorn's master (gunicorn.conf.py), which has not loaded Django: read before anything imports
    prometheus_client's multiprocess values, which need the directory to exist. Another Django project served
    with the same gunicorn.conf.py (the tests' authorization server) has no metrics."""
    import os

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlroom.settings")
    from django.conf import settings

    return str(getattr(settings, "METRICS_DIR", "")) if getattr(settings, "METRICS_TOKEN", "") else ""
