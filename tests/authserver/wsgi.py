"""WSGI entry point: `gunicorn tests.authserver.wsgi:application` (see tests/support/authserver.py)."""

import os

from django.core.wsgi import get_wsgi_application

# Force ours: the test process may export the app's own DJANGO_SETTINGS_MODULE.
os.environ["DJANGO_SETTINGS_MODULE"] = "tests.authserver.settings"

application = get_wsgi_application()
