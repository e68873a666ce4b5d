"""In-process wait-for graph and deadlock detection.

Every owner (thread or task) that is about to block registers the channel it waits for. Before it
blocks, it asks whether the wait can ever end: a wait is hopeless when every holder of the awaited
primitive is either the waiter itself or blocked in a hopeless wait. Only owned primitives (locks and
read-write locks) take part: semaphore permits may be released by any thread, so no wait on a semaphore
is declared hopeless. Such a wait raises
:class:`~interlock.DeadlockError` naming the cycle instead of hanging.

Scope: owners in this process, on any backend (holders in other processes are unknown and count as
"may release", so cross-process cycles are not detected). Releases done on a blocked owner's behalf by
another thread (``lease.release()`` from elsewhere) are not foreseen; such designs should pass
``timeout`` instead of relying on detection.

Registration and the check happen together under ``_graph_lock`` so that of two owners closing a cycle
at the same moment exactly one sees it.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from .._errors import DeadlockError
from .owner import owner_label
from .waiter import WAITING

if TYPE_CHECKING:
    from .._spi import Channel

_graph_lock = threading.Lock()
# owner -> channel it is blocked on. Invariant: an owner appears here only between registering a wait
# and leaving it (grant, timeout, cancel, error). Waits on semaphores may be left out: they are never
# hopeless, so an owner blocked on one counts as "may release" exactly as an unregistered owner does.
# The waiter cell is kept with it: an owner counts as blocked only while its cell is still WAITING,
# because a granter records the new holder before the granted thread or task runs again to leave the
# graph (without this, a just-granted owner looks like "holds X and waits for X": a false deadlock).
_waiting_on: dict[Any, tuple[Channel, Any]] = {}


def _blocked_on(owner: Any) -> Channel | None:
    entry = _waiting_on.get(owner)
    if entry is None:
        return None
    ch, cell = entry
    if cell is not None and (getattr(cell, "state", WAITING) != WAITING or getattr(cell, "done", False)):
        return None
    return ch


def _hopeless(origin: Any, ch: Channel, path: list[tuple[Any, Channel]], seen: set[int]) -> bool:
    if ch.kind == "semaphore":
        # Semaphore permits are not owned: a Lease may be released by any thread (the bounded-executor
        # pattern acquires in one thread and releases in another), so a wait on one is never hopeless.
        return False
    holders = ch.local_holder_owners()
    if any(h is origin for h in holders):
        # Locks and RW locks grant in FIFO order, so a blocked request is served only after every
        # current holder has released; the waiter is one of them, so no remote holder can help.
        return True
    if not holders or ch.has_remote_holders():
        return False
    for h in holders:
        if h is origin:
            continue
        if id(h) in seen:  # a cycle not through origin: those owners are stuck already
            continue
        nxt = _blocked_on(h)
        if nxt is None:
            return False
        seen.add(id(h))
        path.append((h, nxt))
        if not _hopeless(origin, nxt, path, seen):
            path.pop()
            return False
    return True


def enter_wait(owner: Any, ch: Channel, cell: Any = None) -> None:
    """Register that ``owner`` blocks on ``ch`` (``cell``: its waiter; it stops counting as blocked
    once its ``state`` leaves WAITING or its ``done`` flag is set); raise DeadlockError if the wait
    could never be granted."""
    with _graph_lock:
        path: list[tuple[Any, Channel]] = []
        if _hopeless(owner, ch, path, {id(owner)}):
            steps = [f"{owner_label(owner)} waits for {ch.describe()}"]
            for h, c in path:
                held = ", ".join(x.describe() for x in _held_by(h, [ch] + [c2 for _, c2 in path]))
                steps.append(f"{owner_label(h)} (holding {held or 'it'}) waits for {c.describe()}")
            own = [x.describe() for x in _held_by(owner, [ch] + [c2 for _, c2 in path])]
            if own:
                steps.append(f"and {owner_label(owner)} holds {', '.join(own)}")
            cycle = [(owner_label(owner), ch.name)] + [(owner_label(h), c.name) for h, c in path]
            raise DeadlockError(
                "deadlock: " + "; ".join(steps)
                + ". Acquire primitives in one global order, or pass timeout=.",
                cycle=cycle,
            )
        _waiting_on[owner] = (ch, cell)


def _held_by(owner: Any, chans: list[Channel]) -> list[Channel]:
    return [c for c in dict.fromkeys(chans) if any(o is owner for o in c.local_holder_owners())]


def leave_wait(owner: Any) -> None:
    with _graph_lock:
        _waiting_on.pop(owner, None)
