"""The real settings, with the environment a test run needs (set before controlroom.settings reads it)."""

import os
import tempfile

os.environ["ENV_FILE"] = ""  # never read a developer's .env into the tests
os.environ.setdefault("DEBUG", "true")
os.environ.setdefault("SECRET_KEY", "tests-only-secret-key-0123456789abcdefghijklmnopqrstuvwxyz")
os.environ.setdefault("CRYPTOGRAPHY_KEY", "tests-only-cryptography-key-abcdefghijklmnopqrstuvwxyz")
os.environ.setdefault("VAR_DIR", tempfile.mkdtemp(prefix="controlroom-tests-"))
os.environ.setdefault("OUTBOUND_TIMEOUT", "5")

from controlroom.settings import *  # noqa: F403

# Hashing passwords slowly protects nothing in a test run.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# pytest-django turns DEBUG off while tests run; a provider call inside a transaction must still fail them.
OUTBOUND_RAISE_IN_TRANSACTION = True
