"""The worker and beat redaction test starts real processes with the refresh engine tests' machinery."""

from tests.refresh.conftest import bot, make_stack  # noqa: F401 - the fixtures, shared
