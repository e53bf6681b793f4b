"""The production settings, plus one bare view (bench/urls.py) to compare the token endpoint against.

Everything else, middleware included, is controlroom.settings, so both views pay for the same stack.
BENCH_DATABASE_OPTIONS (JSON, set by --database-options) is merged into the database's OPTIONS, to measure
an option such as server-side binding before proposing it.
"""

import json
import os

from controlroom.settings import *  # noqa: F403
from controlroom.settings import DATABASES

ROOT_URLCONF = "bench.urls"

DATABASES["default"].setdefault("OPTIONS", {}).update(json.loads(os.environ.get("BENCH_DATABASE_OPTIONS") or "{}"))
