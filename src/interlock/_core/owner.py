"""Who holds a grant.

An owner is the thing a Lock belongs to: a thread (represented by a :class:`ThreadOwner` that lives in
the thread's thread-local storage) or an asyncio task (the ``asyncio.Task`` itself). Owners are compared
by identity. A ``ThreadOwner`` is destroyed by CPython when its thread ends; its finalizer hands the
locks the thread still owned back to their primitives, marked as abandoned, so the next holder learns
that its predecessor died (``Lease.previous_owner_died``).
"""

from __future__ import annotations

import asyncio
import sys
import threading
import weakref
from typing import TYPE_CHECKING, Any

from . import reaper

if TYPE_CHECKING:
    from .._lease import Lease

__all__ = ["Owner", "ThreadOwner", "current_owner", "owner_label", "thread_owner"]


class ThreadOwner:
    """The identity of one thread as an owner of locks (compared by identity; never reused)."""

    __slots__ = ("__weakref__", "alive", "cm_stack", "ident", "name")

    def __init__(self) -> None:
        t = threading.current_thread()
        self.ident = t.ident
        self.name = t.name
        self.alive = True
        # Leases taken by this thread's `with semaphore:` blocks, innermost last.
        self.cm_stack: list[Lease] = []

    def __repr__(self) -> str:
        return f"<thread {self.name!r} ({self.ident}){'' if self.alive else ' ended'}>"


class _ThreadEndGuard:
    """Lives only in the thread's thread-local storage, so CPython destroys it when the thread ends
    (leases refer to their ThreadOwner, so the owner itself may outlive the thread).

    Nothing is tracked per acquire (that would tax every uncontended pair); instead, when the thread
    ends, the reaper asks every backend in the process to reclaim owned grants (locks, RW locks) whose
    owner is this thread. Semaphore permits are not owned and are not reclaimed here (their Lease may
    have been handed to another thread on purpose).
    """

    __slots__ = ("owner",)

    def __init__(self, owner: ThreadOwner) -> None:
        self.owner = owner

    def __del__(self) -> None:
        self.owner.alive = False
        if sys.is_finalizing():
            # Interpreter shutdown: starting the reaper thread now would hang, and every grant of this
            # process ends with it anyway (in-process state vanishes; other backends see the process die).
            return
        reaper.owner_ended(self.owner)


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


def _make_current_task() -> Any:
    """``asyncio.current_task`` is a Python function on 3.10/3.11 (~0.3 us here); reading the C
    module's task table directly costs a third of that."""
    import asyncio.tasks as _tasks

    table = getattr(_tasks, "_current_tasks", None)
    running = asyncio._get_running_loop
    if isinstance(asyncio.current_task, type(len)) or not isinstance(table, dict):
        builtin = asyncio.current_task

        def current_task_builtin() -> asyncio.Task[Any] | None:
            # The C current_task() raises without a running loop; callers want None there.
            loop = running()
            return None if loop is None else builtin(loop)

        return current_task_builtin
    get = table.get

    def current_task() -> asyncio.Task[Any] | None:
        return get(running())

    return current_task


fast_current_task = _make_current_task()


def current_owner() -> Owner:
    """The running task if called from a coroutine, else the calling thread."""
    task = fast_current_task() if asyncio._get_running_loop() is not None else None
    return task if task is not None else thread_owner()


def owner_label(owner: Owner) -> str:
    if isinstance(owner, ThreadOwner):
        return f"thread {owner.name!r}"
    if isinstance(owner, asyncio.Task):
        return f"task {owner.get_name()!r}"
    return repr(owner)


class _TaskDeath:
    """Done-callback tying an owned grant (lock, RW lock) to its task's life. Holds the Lease weakly:
    a dropped Lease is the garbage collector's business, not the task's."""

    __slots__ = ("lease_ref",)

    def __init__(self, lease: Lease) -> None:
        self.lease_ref = weakref.ref(lease)

    def __call__(self, task: asyncio.Task[Any]) -> None:
        lease = self.lease_ref()
        if lease is None or lease._state != 0:  # not HELD any more
            return
        handed_over = getattr(task, "_result", None) is lease
        if handed_over:
            # The task returned the Lease (asyncio.wait_for on 3.10/3.11, create_task(acquire_async()),
            # gather): the grant was handed to whoever awaits the task, not abandoned. (``_result`` is
            # read instead of ``result()``, which would mark a failed task's exception as retrieved.)
            lease._death_cb = None
            return
        reaper.abandon(lease, f"its owner task {task.get_name()!r} ended while holding it")


def track_task_death(lease: Lease) -> None:
    """If a task owns ``lease``, return the grant when the task ends without releasing it. (Threads
    need no per-acquire work: the reaper calls ``Backend.owner_ended`` when a thread ends.)"""
    owner = lease.owner
    if isinstance(owner, asyncio.Task):
        cb = _TaskDeath(lease)
        lease._death_cb = cb
        owner.add_done_callback(cb)


def untrack_task_death(lease: Lease) -> None:
    """The grant ended normally: drop the task's done-callback (long-lived tasks must not collect them)."""
    cb = lease._death_cb
    if cb is not None:
        lease._death_cb = None
        try:
            lease.owner.remove_done_callback(cb)
        except Exception:  # the task's loop is gone; nothing left to unhook
            pass
