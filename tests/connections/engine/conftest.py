"""Fixtures of the refresh engine tests; the processes are started with make_stack (tests/conftest.py)."""

import pytest
from django.contrib.auth.models import User


@pytest.fixture
def notified_manager(transactional_db) -> User:
    """Notifications go to managers with an email address; a superuser is one."""
    return User.objects.create_superuser("ops", "ops@example.com", "pw")
