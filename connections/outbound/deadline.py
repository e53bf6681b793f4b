"""The hard deadline of an outbound call (connections.outbound.policy): one per call, watched by one thread per process.

requests' timeouts apply per socket operation and per address tried: a provider that sends its answer a byte at
a time, each within the read timeout, could hold a call (and the refresh lease) for ever. Each call therefore
gets one deadline, OUTBOUND_TIMEOUT after it starts: a watchdog shuts its sockets down when it passes (a new
socket, or a kept-alive one a request is sent on again), and a connection that is only established after it is
closed before a byte is sent. Name resolution cannot be interrupted (the system resolver's own timeout
applies), but nothing reaches the provider after the deadline.
"""

import contextvars
import heapq
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from connections.errors import DeadlinePassed

logger = logging.getLogger(__name__)

WATCH_GRANULARITY = 0.1  # seconds: how late past its deadline a call may be cut


@dataclass(eq=False)
class Call:
    deadline: float  # time.monotonic()
    expired: bool = False
    ended: bool = False
    # The connections the call uses, each as a duplicate of its socket's descriptor, by the original's number.
    # Shutting a duplicate down ends the connection whatever wraps the socket: TLS takes the original socket
    # over (detaching it), and TLS's own shutdown would drop the encryption before the socket's. A duplicate is
    # also never another connection's, even once the original is closed and its number reused.
    handles: dict[int, socket.socket] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def watch(self, sock: socket.socket) -> None:
        with self.lock:
            if not self.expired and self.remaining() > 0:
                number = sock.fileno()
                if number >= 0 and number not in self.handles:  # -1: closed already, nothing to cut
                    self.handles[number] = socket.socket(fileno=os.dup(number))
                return
        sock.close()
        raise DeadlinePassed()

    def release(self, sock: socket.socket) -> None:
        """The connection went back to the pool: it is the next call's to cut, not this one's."""
        with self.lock:
            handle = self.handles.pop(sock.fileno(), None)
        if handle is not None:
            handle.close()

    def expire(self) -> None:
        with self.lock:
            if self.ended:
                return
            self.expired = True
            for handle in self.handles.values():
                try:
                    handle.shutdown(socket.SHUT_RDWR)  # wakes whatever is blocked on the connection
                except OSError:
                    pass  # closed already

    def end(self) -> None:
        with self.lock:
            self.ended = True
            handles, self.handles = list(self.handles.values()), {}
        for handle in handles:
            handle.close()


class _Watchdog:
    """One thread per process that expires calls at their deadlines (a timer thread per call would cost a
    thread's start for every refresh). Made on first use, and again in a forked child."""

    def __init__(self) -> None:
        self.condition = threading.Condition()
        self.calls: list[tuple[float, int, Call]] = []  # a heap by deadline
        self.sequence = 0
        threading.Thread(target=self._run, name="outbound-watchdog", daemon=True).start()

    def add(self, call: Call) -> None:
        with self.condition:
            self.sequence += 1
            heapq.heappush(self.calls, (call.deadline, self.sequence, call))
            if self.calls[0][2] is call:
                self.condition.notify()

    def _run(self) -> None:
        while True:
            with self.condition:
                now, due = time.monotonic(), []
                while self.calls and self.calls[0][0] <= now:
                    due.append(heapq.heappop(self.calls)[2])
                if not due:
                    # Most calls ended long before their deadline: waking for each would cost more than a call.
                    self.condition.wait(max(self.calls[0][0] - now, WATCH_GRANULARITY) if self.calls else None)
            for call in due:
                try:
                    call.expire()
                except Exception:  # the watchdog must outlive any one call: every later deadline depends on it
                    logger.exception("Could not cut a provider call at its deadline.")


_watchdog_lock = threading.Lock()
_watchdogs: dict[int, _Watchdog] = {}  # by pid: a forked child has no thread of its parent's


def _watchdog() -> _Watchdog:
    with _watchdog_lock:
        return _watchdogs.get(os.getpid()) or _watchdogs.setdefault(os.getpid(), _Watchdog())


_current: contextvars.ContextVar[Call | None] = contextvars.ContextVar("outbound_call", default=None)


def current_call() -> Call | None:
    return _current.get()


@contextmanager
def call_deadline(seconds: float) -> Iterator[Call]:
    """A call (a request with its redirects) that must end within `seconds`."""
    call = Call(deadline=time.monotonic() + seconds)
    context = _current.set(call)
    _watchdog().add(call)
    try:
        yield call
    finally:
        call.end()
        _current.reset(context)


class DeadlinePool:
    """Mixin for urllib3 pools: a connection put back in the pool (its answer read) is no longer the current
    call's, so the call's deadline cannot cut it while another call uses it."""

    def _put_conn(self, conn: Any) -> None:
        call = _current.get()
        if call is not None and conn is not None and conn.sock is not None:
            call.release(conn.sock)
        super()._put_conn(conn)  # type: ignore[misc]


class DeadlineConnection:
    """Mixin for urllib3 connections: the current call's deadline watches each new socket, and a kept-alive one
    when a request is sent on it again."""

    sock: socket.socket | None

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()  # type: ignore[misc]
        call = _current.get()
        if call is not None:
            call.watch(sock)
        return sock

    def request(self, *args: Any, **kwargs: Any) -> None:
        call = _current.get()
        if call is not None and self.sock is not None:  # a pooled connection, reused
            call.watch(self.sock)
        super().request(*args, **kwargs)  # type: ignore[misc]
