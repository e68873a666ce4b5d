"""One-shot handoff cells for threads and tasks waiting in a fair queue.

A waiter moves through exactly one transition out of ``WAITING``: to ``GRANTED`` (the granter reserved
the permits and stored the lease in ``lease``) or to ``CANCELLED`` (timeout, cancellation, interrupt).
Invariant: ``state`` is only ever changed while the owning channel's mutex is held, so a grant and a
cancel can never both win; the loser observes the winner's state and acts on it (a cancelled waiter
that finds itself ``GRANTED`` gives the permits back, which passes them to the next waiter).

``wake()`` is called by the granter after the transition, from any thread.
"""

from __future__ import annotations

import _thread
import asyncio
import time
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from .._lease import Lease

WAITING = 0
GRANTED = 1
CANCELLED = 2

_monotonic = time.monotonic


class Waiter:
    __slots__ = ("lease", "mode", "owner", "permits", "since", "site", "state")

    def __init__(self, permits: int, owner: Any, site: Any, mode: str) -> None:
        self.permits = permits
        self.owner = owner
        self.site = site
        self.mode = mode
        self.state = WAITING
        self.lease: Lease | None = None
        self.since = time.monotonic()

    def wake(self) -> bool:  # pragma: no cover - abstract
        """Deliver the grant. Returns False if the waiter can never take it (its loop is closed)."""
        raise NotImplementedError


class ThreadWaiter(Waiter):
    """A thread blocks on a private lock that starts locked; ``wake`` unlocks it."""

    __slots__ = ("_lock",)

    def __init__(self, permits: int, owner: Any, site: Any, mode: str) -> None:
        # Waiter.__init__ inline: one frame less on every contended acquire. (The native channel makes
        # its ThreadWaiters in C with the same fields: _speedups.c new_thread_waiter.)
        self.permits = permits
        self.owner = owner
        self.site = site
        self.mode = mode
        self.state = WAITING
        self.lease: Lease | None = None
        self.since = _monotonic()
        self._lock = _thread.allocate_lock()
        self._lock.acquire()

    def wait(self, timeout: float | None) -> bool:
        """Block until woken or ``timeout`` elapses. May raise KeyboardInterrupt (main thread)."""
        return self._lock.acquire(True, -1 if timeout is None else timeout)

    def wake(self) -> bool:
        self._lock.release()
        return True


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class TaskWaiter(Waiter):
    """A task awaits a future on its own loop; ``wake`` resolves it from any thread."""

    __slots__ = ("fut", "loop")

    def __init__(self, permits: int, owner: Any, site: Any, mode: str, loop: asyncio.AbstractEventLoop) -> None:
        # Waiter.__init__ inline: one frame less on every contended task acquire.
        self.permits = permits
        self.owner = owner
        self.site = site
        self.mode = mode
        self.state = WAITING
        self.lease: Lease | None = None
        self.since = _monotonic()
        self.loop = loop
        self.fut: asyncio.Future[None] = loop.create_future()

    def wake(self) -> bool:
        if asyncio._get_running_loop() is self.loop:
            _resolve(self.fut)
            return True
        try:
            self.loop.call_soon_threadsafe(_resolve, self.fut)
        except RuntimeError:  # loop closed: nobody will ever take this grant
            return False
        return True


class Weighted(Protocol):
    @property
    def permits(self) -> int: ...


W = TypeVar("W", bound=Weighted)


def pop_grantable(waiters: deque[W], available: int, fair: bool = True) -> tuple[list[W], int]:
    """The queue rule, written once: which waiters can be granted now, and what is left.

    Strict FIFO: grant from the head while the head fits (head-of-line blocking is the price of never
    starving a large request). ``fair=False`` additionally lets later waiters that fit pass a head that
    does not. Granted waiters are removed from ``waiters``.
    """
    granted: list[W] = []
    while waiters and waiters[0].permits <= available:
        w = waiters.popleft()
        available -= w.permits
        granted.append(w)
    if not fair and waiters and available > 0:
        keep: list[W] = []
        for w in waiters:
            if w.permits <= available:
                available -= w.permits
                granted.append(w)
            else:
                keep.append(w)
        if len(keep) != len(waiters):
            waiters.clear()
            waiters.extend(keep)
    return granted, available


def remove_waiter(waiters: deque[W], waiter: W) -> bool:
    try:
        waiters.remove(waiter)
    except ValueError:
        return False
    return True


def first_index(items: Iterable[Any], pred: Any) -> int:
    for i, x in enumerate(items):
        if pred(x):
            return i
    return -1
