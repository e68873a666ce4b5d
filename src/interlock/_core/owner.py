"""Who holds a grant.

An owner is the thing a Lock belongs to: a thread (represented by a :class:`ThreadOwner` that lives in
the thread's thread-local storage) or an asyncio task (the ``asyncio.Task`` itself). Owners are compared
by identity. A ``ThreadOwner`` is destroyed by CPython when its thread ends; its finalizer hands the
locks the thread still owned back to their primitives, marked as abandoned, so the next holder learns
that its predecessor died (``Lease.previous_owner_died``).
"""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING, Any

from . import reaper

if TYPE_CHECKING:
    from .._lease import Lease

__all__ = ["Owner", "ThreadOwner", "current_owner", "owner_label", "thread_owner"]


class ThreadOwner:
    """The identity of one thread as an owner of locks.

    ``held`` maps ``id(lease)`` to leases of owned primitives (locks, write locks) currently held by
    this thread. Only the thread itself adds and removes entries; the finalizer runs when the thread is
    gone, so no lock is needed.
    """

    __slots__ = ("alive", "cm_stack", "held", "ident", "name")

    def __init__(self) -> None:
        t = threading.current_thread()
        self.ident = t.ident
        self.name = t.name
        self.alive = True
        self.held: dict[int, Lease] = {}
        # Leases taken by this thread's `with semaphore:` blocks, innermost last.
        self.cm_stack: list[Lease] = []

    def __repr__(self) -> str:
        return f"<thread {self.name!r} ({self.ident}){'' if self.alive else ' ended'}>"


class _ThreadEndGuard:
    """Lives only in the thread's thread-local storage, so CPython destroys it when the thread ends
    (leases refer to their ThreadOwner, so the owner itself may outlive the thread)."""

    __slots__ = ("owner",)

    def __init__(self, owner: ThreadOwner) -> None:
        self.owner = owner

    def __del__(self) -> None:
        # Anything the thread still owns is abandoned: release it so waiters are not stuck behind a dead
        # owner. Releasing may need I/O or a mutex the dying thread cannot wait for: the reaper helps.
        owner = self.owner
        owner.alive = False
        held = owner.held
        if held:
            for lease in list(held.values()):
                reaper.abandon(lease, f"its owner thread {owner.name!r} ended while holding it")
            held.clear()


_tls = threading.local()


def thread_owner() -> ThreadOwner:
    """The calling thread's owner identity (created on first use)."""
    try:
        return _tls.owner  # type: ignore[no-any-return]
    except AttributeError:
        owner = _tls.owner = ThreadOwner()
        _tls.guard = _ThreadEndGuard(owner)
        return owner


Owner = Any  # ThreadOwner | asyncio.Task[Any]


def current_owner() -> Owner:
    """The running task if called from a coroutine, else the calling thread."""
    task = asyncio.current_task() if asyncio._get_running_loop() is not None else None
    return task if task is not None else thread_owner()


def owner_label(owner: Owner) -> str:
    if isinstance(owner, ThreadOwner):
        return f"thread {owner.name!r}"
    if isinstance(owner, asyncio.Task):
        return f"task {owner.get_name()!r}"
    return repr(owner)
