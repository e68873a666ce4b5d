"""Finishing releases that cannot run where they were triggered.

A Lease finalizer (``__del__``) or a dying thread's owner record may run at any allocation, including
while the same thread holds a backend mutex or runs an event loop. Releasing there could deadlock or
block the loop. So an abandoned lease is first offered to its channel's non-blocking path
(``Channel.try_release_abandoned``) and, when that cannot proceed at once, queued to one daemon thread
that performs the release. ``SimpleQueue.put`` is safe to call from finalizers.
"""

from __future__ import annotations

import atexit
import os
import queue
import sys
import threading
import warnings
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .._lease import Lease

_queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
# Set at interpreter exit: from then on no helper thread may be started (Thread.start() can hang during
# finalization), and every grant of this process ends with it anyway.
_closing = False
_thread: threading.Thread | None = None
_start_lock = threading.Lock()


def _run() -> None:
    while True:
        item = _queue.get()
        if item is None:
            return
        try:
            if isinstance(item, tuple):  # ("owner", owner): a thread ended
                from .. import _registry

                for backend in _registry.live_backends():
                    backend.owner_ended(item[1])
                continue
            lease = item
            lease._channel.release(lease, lease.permits, abandoned=True)
        except Exception as exc:  # the backend reports its own failures; never kill the reaper
            warnings.warn(f"interlock: could not return abandoned {item!r}: {exc!r}", RuntimeWarning,
                          stacklevel=1)


def _ensure_thread() -> None:
    global _thread
    if _thread is not None and _thread.is_alive():
        return
    with _start_lock:
        if _thread is None or not _thread.is_alive():
            _thread = threading.Thread(target=_run, name="interlock-reaper", daemon=True)
            _thread.start()


def _after_fork() -> None:
    global _thread, _queue, _start_lock
    _thread = None
    _queue = queue.SimpleQueue()
    _start_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def abandon(lease: Lease, why: str) -> None:
    """Return an abandoned lease's permits and mark the primitive so its next grant reports
    ``previous_owner_died``. Never blocks."""
    if not lease._mark_abandoned(why):
        return
    if lease._channel.try_release_abandoned(lease) or _closing or sys.is_finalizing():
        return
    _ensure_thread()
    _queue.put(lease)


def _on_exit() -> None:
    global _closing
    _closing = True


atexit.register(_on_exit)


def owner_ended(owner: Any) -> None:
    """A thread ended: reclaim the owned grants it still holds (from the reaper thread). Never blocks."""
    if _closing or sys.is_finalizing():
        return
    _ensure_thread()
    _queue.put(("owner", owner))


def drain(timeout: float = 5.0) -> None:
    """Wait until every queued abandoned lease has been returned (used by tests)."""
    done = threading.Event()

    class _Marker:
        permits = 0

        class _channel:
            @staticmethod
            def release(_lease: object, _permits: int, abandoned: bool = True) -> None:
                done.set()

    _ensure_thread()
    _queue.put(_Marker())
    done.wait(timeout)
