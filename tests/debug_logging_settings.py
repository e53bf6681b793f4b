"""controlroom.settings with every logger at DEBUG, the libraries that log token bodies included: whatever a web
process, a worker or beat prints under it must still hold no secret (tests/controlroom/test_redaction.py)."""

from controlroom.settings import *  # noqa: F403
from controlroom.settings import LOGGING

LOGGING = {
    **LOGGING,
    "root": {**LOGGING["root"], "level": "DEBUG"},
    "loggers": {name: {**options, "level": "DEBUG"} for name, options in LOGGING["loggers"].items()},
}
