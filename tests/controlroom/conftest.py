from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.processes import Processes


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    """Start server processes with processes.start(...); they are stopped (killed if need be) after the test."""
    started = Processes(log_dir=tmp_path)
    yield started
    started.stop_all()
