"""The one way a test waits: poll a condition until it holds, and fail, saying what was awaited, when it does not
hold within a generous time. The time only turns a hang into a failure; what a test decides is the condition."""

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(
    condition: Callable[[], T],
    seconds: float,
    what: str,
    *,
    interval: float = 0.05,
    details: Callable[[], str] | None = None,
) -> T:
    """Call `condition` every `interval` seconds until it returns something true, and return that. After `seconds`
    raise AssertionError naming `what` (and `details()`, e.g. the logs of the processes awaited): a wait never
    gives up silently."""
    deadline = time.monotonic() + seconds
    while not (value := condition()):
        if time.monotonic() > deadline:
            said = f"\n{details()}" if details is not None else ""
            raise AssertionError(f"Waited {seconds:g} s for {what}; the last check gave {value!r}.{said}")
        time.sleep(interval)
    return value
