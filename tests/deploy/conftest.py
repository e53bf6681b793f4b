"""The deployment tests start real processes with the refresh engine tests' machinery (tests/refresh/stack.py)."""

from tests.refresh.conftest import make_stack  # noqa: F401 - the fixture, shared
