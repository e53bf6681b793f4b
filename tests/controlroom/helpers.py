"""Moved to tests/support/processes.py (tests/support imports nothing from test packages); these names stay
importable from here for the tests that use them."""

from tests.support.processes import (  # noqa: F401
    REPO_ROOT,
    Answer,
    Processes,
    closed_port,
    http_get,
    log_tail,
    manage,
    minimal_env,
    start_gunicorn,
)
