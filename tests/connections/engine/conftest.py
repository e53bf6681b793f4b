"""Fixtures of the refresh engine tests; the processes are started with make_stack (tests/conftest.py)."""

import threading

import pytest
from django.contrib.auth.models import User

from connections.engine import refresh


@pytest.fixture
def notified_manager(transactional_db) -> User:
    """Notifications go to managers with an email address; a superuser is one."""
    return User.objects.create_superuser("ops", "ops@example.com", "pw")


class WaitingCallers:
    """The threads of this process that found a token's lease taken by someone else (and so wait for that
    refresh's result): proof that callers really contended, not merely ran one after another."""

    def __init__(self) -> None:
        self.threads: set[int] = set()
        self._lock = threading.Lock()

    def count(self) -> int:
        with self._lock:
            return len(self.threads)

    def seen(self) -> None:
        with self._lock:
            self.threads.add(threading.get_ident())


@pytest.fixture
def waiting_callers(monkeypatch) -> WaitingCallers:
    """Counts the callers of connections.engine.refresh that found the lease taken (the lease itself unchanged)."""
    waiting = WaitingCallers()
    take = refresh.token_lease_take

    def counted_take(token, owner):
        leased = take(token, owner)
        if leased is None:
            waiting.seen()
        return leased

    monkeypatch.setattr(refresh, "token_lease_take", counted_take)
    return waiting
