"""Hold-until-released: token requests that wait at a stage until the test releases them.

A test arms a hold (POST /_control/hold) for some grant types at one stage: "arrival" (counted, not yet processed:
nothing rotated) or "answer" (processed: a refresh token already rotated, the answer not yet sent). Every matching
token request from then on waits there. The test waits until N requests are held (POST /_control/held, which
answers once they are, or says they are not at its timeout), does what it races against them, then releases them
(POST /_control/release, which also disarms the hold). A reset releases everything too.

The state lives in this process's memory (the server runs one gunicorn worker with threads: see
tests/support/authserver.py), guarded by one condition variable. A held request gives up after HOLD_LIMIT seconds
and goes on, so a test that forgets to release turns into a failure of its own assertions, not a hung server.
"""

import threading
from typing import Any

STAGES = ("arrival", "answer")
HOLD_LIMIT = 120.0  # seconds: far longer than any test waits for a held request
WAIT_LIMIT = 60.0  # seconds the longest /_control/held call may wait

_changed = threading.Condition()
_armed: dict[str, Any] = {}  # {"stage": ..., "grant_types": [...] or None}, empty when no hold is armed
_held: list[threading.Event] = []  # one per request held now, released by setting it
_counts = {"held": 0}  # requests held since the hold was armed, released or not


def hold_arm(stage: str, grant_types: list[str] | None) -> None:
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, not {stage!r}")
    with _changed:
        _armed.clear()
        _armed.update(stage=stage, grant_types=grant_types)
        _counts["held"] = 0
        _changed.notify_all()


def hold_release() -> int:
    """Release every request held now and disarm: those that come later go through. Returns how many went on."""
    with _changed:
        released = len(_held)
        for event in _held:
            event.set()
        _held.clear()
        _armed.clear()
        _changed.notify_all()
        return released


def hold_here(stage: str, grant_type: str) -> None:
    """Called by the token endpoint at each stage: waits while a hold armed for this stage and grant type lasts."""
    with _changed:
        wanted = _armed.get("grant_types")
        if _armed.get("stage") != stage or (wanted is not None and grant_type not in wanted):
            return
        released = threading.Event()
        _held.append(released)
        _counts["held"] += 1
        _changed.notify_all()
    if not released.wait(HOLD_LIMIT):
        with _changed:
            if released in _held:
                _held.remove(released)
            _changed.notify_all()


def held_wait(count: int, timeout: float) -> tuple[bool, dict[str, int]]:
    """Wait until at least `count` requests are held now; (whether they are, {"held_now", "held_since_armed"})."""
    with _changed:
        reached = _changed.wait_for(lambda: len(_held) >= count, timeout=min(timeout, WAIT_LIMIT))
        return reached, {"held_now": len(_held), "held_since_armed": _counts["held"]}


# --- Control views (wrapped by tests.authserver.views.control in urls.py: control key, JSON in and out) --------


def hold_view(body: dict[str, Any]) -> dict[str, Any]:
    grant_types = body.get("grant_types")
    hold_arm(str(body.get("stage", "arrival")), None if grant_types is None else [str(g) for g in grant_types])
    return {"armed": True}


def held_view(body: dict[str, Any]) -> dict[str, Any]:
    reached, numbers = held_wait(int(body["count"]), float(body.get("timeout", 30)))
    return {"reached": reached, **numbers}


def release_view(body: dict[str, Any]) -> dict[str, Any]:
    return {"released": hold_release()}
