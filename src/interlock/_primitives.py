"""The public primitives: one object serves threads (``with``, ``acquire``) and asyncio tasks
(``async with``, ``acquire_async``) through one fair queue, whatever the backend."""

from __future__ import annotations

import sys
from collections.abc import Coroutine
from types import TracebackType
from typing import Any

from . import _lease
from ._core.owner import ThreadOwner, _tls, fast_current_task, thread_owner
from ._errors import InvalidArgument, InvalidArgumentType, NotOwnerError, OverRelease
from ._lease import Lease, capture_site
from ._registry import connect
from ._spi import RW_CAPACITY, Backend, Channel, Statistics
from ._validate import check_name, check_permits, check_timeout

__all__ = ["Lock", "RLock", "RWLock", "Semaphore"]

_current_task = fast_current_task
_getframe = sys._getframe


def _channel(name: object, kind: str, capacity: int, bounded: bool, url: str | None,
             backend: Backend | None) -> Channel:
    n = check_name(name)
    if backend is not None and url is not None:
        raise InvalidArgument("pass either url= or backend=, not both", argument="backend")
    if backend is None:
        backend = connect(url)
    elif not isinstance(backend, Backend):
        raise InvalidArgumentType(
            f"backend must be an interlock backend from interlock.connect(), got {type(backend).__name__}",
            argument="backend",
        )
    return backend.channel(n, kind, capacity, bounded)


def _task_owner() -> Any:
    task = _current_task()
    if task is None:  # a coroutine driven outside a task: the thread is the owner
        return thread_owner()
    return task


def _timeout(timeout: object) -> float | None:
    return None if timeout is None else check_timeout(timeout)


class _Primitive:
    __slots__ = ("__weakref__", "_ch", "_cm", "_fair")

    _ch: Channel

    @property
    def name(self) -> str:
        return self._ch.name

    @property
    def backend(self) -> Backend:
        return self._ch.backend

    def statistics(self) -> Statistics:
        """A snapshot: capacity, available permits, holders (owner, permits, token, hold time) and
        waiters in queue order."""
        return self._ch.statistics()

    def locked(self) -> bool:
        """True if acquiring one permit would block now (queued waiters count, as fairness demands)."""
        return self._ch.locked()

    def __repr__(self) -> str:
        s = self._ch.statistics()
        holders = ", ".join(f"{h.owner} x{h.permits} for {h.held_for:.3f}s" for h in s.holders)
        cap = "unbounded readers" if s.kind == "rwlock" else f"{s.available}/{s.capacity} free"
        return (
            f"<interlock.{type(self).__name__} {s.name!r} on {s.backend}: {cap}, "
            f"holders=[{holders}], waiters={len(s.waiters)}>"
        )


class Lock(_Primitive):
    """A mutual-exclusion lock owned by the thread or task that acquires it.

    ``Lock(name)`` objects with the same name on the same backend are the same lock. ``with lock:``
    blocks a thread; ``async with lock:`` suspends a task; both queue in one FIFO order.

    * Timeout: ``acquire(timeout=s)`` raises :class:`~interlock.AcquireTimeout` and leaves the queue.
    * Cancellation: cancelling a task waiting in ``acquire_async`` (or KeyboardInterrupt in a thread)
      removes it from the queue; a grant that raced with the cancel is passed on, never leaked.
    * Holder death: when the owner thread or task ends while holding the lock, or the Lease is
      garbage-collected, the lock is freed and the next lease has ``previous_owner_died=True``.
    * Deadlock: acquiring a lock you hold, or closing a wait-for cycle, raises
      :class:`~interlock.DeadlockError` instead of hanging.
    * ``release()`` by a thread or task that does not own it raises :class:`~interlock.NotOwnerError`.
    """

    __slots__ = ()
    _reentrant = False

    def __init__(self, name: str, *, url: str | None = None, backend: Backend | None = None) -> None:
        self._ch = _channel(name, "lock", 1, True, url, backend)
        self._fair = True
        self._cm = None

    # The channel remembers the lease taken through Lock objects of this name in this process
    # (``_r_lease``; a lock has one holder), so ``release()`` and ``__exit__`` need no lookup. For
    # RLock, ``_r_depth`` counts nested acquires by ``_r_lease.owner``.

    def acquire(self, *, timeout: float | None = None, blocking: bool = True) -> Lease:
        """Block until the lock is granted; return its Lease (context manager, fencing ``token``).

        Raises AcquireTimeout after ``timeout`` seconds, WouldBlock if ``blocking=False`` and the lock
        is taken (or others queue), DeadlockError if the caller already holds it (non-reentrant) or
        would close a wait-for cycle, BlockingCallInEventLoop on a thread running an event loop.
        """
        if timeout is not None:
            timeout = check_timeout(timeout)
        try:
            owner = _tls.owner
        except AttributeError:
            owner = thread_owner()
        ch = self._ch
        if self._reentrant and (lease := self._reenter(ch, owner)) is not None:
            return lease
        site = capture_site(1) if _lease._debug else _getframe(1).f_code
        lease = ch.acquire(1, timeout, blocking, owner, site, "exclusive", True)
        ch._r_lease = lease
        ch._r_depth = 1
        return lease

    async def acquire_async(self, *, timeout: float | None = None, blocking: bool = True) -> Lease:
        """Suspend until granted (see :meth:`acquire`). Cancellation leaves no grant behind."""
        ch = self._ch
        owner = _task_owner()
        if self._reentrant and (lease := self._reenter(ch, owner)) is not None:
            return lease
        lease = await ch.acquire_async(1, _timeout(timeout), blocking, owner, capture_site(1),
                                       "exclusive", True)
        ch._r_lease = lease
        ch._r_depth = 1
        return lease

    def try_acquire(self) -> Lease | None:
        """Take the lock if it is free and nobody queues; else return None at once."""
        from ._errors import WouldBlock

        try:
            return self.acquire(blocking=False)
        except WouldBlock:
            return None

    @staticmethod
    def _reenter(ch: Channel, owner: Any) -> Lease | None:
        lease = ch._r_lease
        if lease is not None and lease.owner is owner and lease.held:
            ch._r_depth += 1
            return lease
        return None

    def _owned_lease(self, owner: Any) -> Lease:
        ch = self._ch
        lease = ch._r_lease
        if lease is None or lease.owner is not owner or not lease.held:
            from ._core.owner import owner_label

            holder = lease.owner if (lease is not None and lease.held) else None
            who = f"it is held by {owner_label(holder)}" if holder is not None else "it is not held"
            raise NotOwnerError(
                f"{owner_label(owner)} cannot release {ch.describe()}: {who}. Only the owner may release "
                "a lock (or call release() on the Lease you were given).", name=ch.name,
            )
        return lease

    def _pop_lease(self) -> Lease | None:
        """The lease to release now, or None while an RLock is still held at a lower depth."""
        ch = self._ch
        lease = ch._r_lease
        if lease is None:
            return None
        if self._reentrant:
            ch._r_depth -= 1
            if ch._r_depth > 0:
                return None
        ch._r_lease = None
        return lease

    def release(self) -> None:
        """Release the lock held by the calling thread. Raises NotOwnerError otherwise."""
        self._owned_lease(thread_owner())
        lease = self._pop_lease()
        if lease is not None:
            lease.release()

    async def release_async(self) -> None:
        """Release the lock held by the calling task. Raises NotOwnerError otherwise."""
        self._owned_lease(_task_owner())
        lease = self._pop_lease()
        if lease is not None:
            await lease.release_async()

    def __enter__(self) -> Lease:
        try:
            owner = _tls.owner
        except AttributeError:
            owner = thread_owner()
        ch = self._ch
        if self._reentrant and (lease := self._reenter(ch, owner)) is not None:
            return lease
        site = capture_site(1) if _lease._debug else _getframe(1).f_code
        lease = ch.acquire(1, None, True, owner, site, "exclusive", True)
        ch._r_lease = lease
        ch._r_depth = 1
        return lease

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        lease = self._pop_lease()
        if lease is not None:
            lease.release()

    async def __aenter__(self) -> Lease:
        ch = self._ch
        owner = _task_owner()
        if self._reentrant and (lease := self._reenter(ch, owner)) is not None:
            return lease
        lease = await ch.acquire_async(1, None, True, owner, capture_site(1), "exclusive", True)
        ch._r_lease = lease
        ch._r_depth = 1
        return lease

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        lease = self._pop_lease()
        if lease is not None:
            await lease.release_async()

    @property
    def owner(self) -> Any:
        """The thread owner or task holding the lock through this process, or None."""
        lease = self._ch._r_lease
        return lease.owner if lease is not None and lease.held else None


class RLock(Lock):
    """A reentrant :class:`Lock`: the owner may acquire it again; it is released when every acquire
    has been matched by a release. ``Lease.release()`` releases it fully at once."""

    __slots__ = ()
    _reentrant = True


class Semaphore(_Primitive):
    """A counting semaphore of ``permits`` permits shared by name.

    * Weighted: ``acquire(n)`` takes n permits atomically (all or none).
    * Fair by default: strict FIFO; a release hands permits to the head waiter(s) directly, so nobody
      barges and no wake-up is lost. ``fair=False`` lets a request that fits pass a larger request at
      the head (no starvation protection for large requests).
    * Bounded by default: permits come back only through their Lease; ``release()`` without a held
      permit raises :class:`~interlock.OverRelease`. ``bounded=False`` is the signalling mode:
      ``release(n)`` adds n permits without a prior acquire (V), the count may start at 0 and grow.
    * Timeout: raises :class:`~interlock.AcquireTimeout`; the caller has left the queue.
    * Cancellation: a cancelled or interrupted waiter never keeps nor leaks a permit.
    * Holder death: a Lease garbage-collected while held returns its permits (``ResourceWarning``),
      and the next grant reports ``previous_owner_died``.
    """

    __slots__ = ()

    def __init__(
        self,
        name: str,
        permits: int = 1,
        *,
        url: str | None = None,
        backend: Backend | None = None,
        fair: bool = True,
        bounded: bool = True,
    ) -> None:
        if not isinstance(bounded, bool):
            raise InvalidArgumentType("bounded must be True or False", argument="bounded")
        if not isinstance(fair, bool):
            raise InvalidArgumentType("fair must be True or False", argument="fair")
        cap = check_permits(permits, "permits", allow_zero=not bounded)
        self._ch = _channel(name, "semaphore", cap, bounded, url, backend)
        self._fair = fair
        self._cm: dict[Any, Lease | list[Lease]] = {}

    @property
    def capacity(self) -> int:
        return self._ch.capacity

    def acquire(self, permits: int = 1, *, timeout: float | None = None, blocking: bool = True) -> Lease:
        """Block until ``permits`` permits are granted together; return their Lease.

        Raises AcquireTimeout after ``timeout`` seconds (nothing held), WouldBlock if ``blocking=False``
        and the grant is not possible at once without passing queued waiters, InvalidArgument if
        ``permits`` exceeds the capacity, DeadlockError, BlockingCallInEventLoop on a loop thread.
        """
        if permits.__class__ is not int or permits < 1:
            permits = check_permits(permits)
        if timeout is not None:
            timeout = check_timeout(timeout)
        try:
            owner = _tls.owner
        except AttributeError:
            owner = thread_owner()
        site = capture_site(1) if _lease._debug else _getframe(1).f_code
        return self._ch.acquire(permits, timeout, blocking, owner, site, "permits", self._fair)

    def acquire_async(self, permits: int = 1, *, timeout: float | None = None,
                      blocking: bool = True) -> Coroutine[Any, Any, Lease]:
        """``await sem.acquire_async(n)``: suspend the task until granted (see :meth:`acquire`).

        Cancellation (``task.cancel()``, ``asyncio.timeout``) at any point leaves no grant behind: a
        waiter leaves the queue, and a grant that raced with the cancellation is passed on.
        (A plain method returning the backend's coroutine: one coroutine per acquire, not two. On a
        native memory:// channel the C twin returns a coroutine-like object instead, which also does
        nothing until awaited, and grants at once without a Python frame when nobody has to wait.)
        """
        if permits.__class__ is not int or permits < 1:
            permits = check_permits(permits)
        if timeout is not None:
            timeout = check_timeout(timeout)
        task = _current_task()
        site = capture_site(1) if _lease._debug else _getframe(1).f_code
        return self._ch.acquire_async(permits, timeout, blocking, task if task is not None else thread_owner(),
                                      site, "permits", self._fair)

    def try_acquire(self, permits: int = 1) -> Lease | None:
        """Take ``permits`` now if that does not pass queued waiters (in fair mode); else None."""
        from ._errors import WouldBlock

        permits = check_permits(permits)
        try:
            return self._ch.acquire(permits, 0.0, False, thread_owner(), capture_site(1), "permits",
                                    self._fair)
        except WouldBlock:
            return None

    def release(self, permits: int = 1) -> None:
        """Signalling mode: add ``permits`` permits (V). Bounded mode: release the permits taken by the
        calling thread's innermost ``with sem:`` block; raises OverRelease if it holds none there
        (release the Lease returned by ``acquire`` instead)."""
        permits = check_permits(permits)
        if not self._ch.bounded:
            self._ch.signal(permits)
            return
        self._release_cm(thread_owner())

    async def release_async(self, permits: int = 1) -> None:
        """Async twin of :meth:`release`."""
        permits = check_permits(permits)
        if not self._ch.bounded:
            await self._ch.signal_async(permits)
            return
        await self._pop_task_lease(_task_owner()).release_async()

    def _over_release(self) -> None:
        raise OverRelease(
            f"{self._ch.describe()} is bounded and the caller holds no permit taken with 'with'; "
            "release the Lease returned by acquire(), or create the semaphore with bounded=False for "
            "signalling", name=self.name, capacity=self.capacity,
        )

    def _release_cm(self, owner: Any) -> None:
        stack = owner.cm_stack
        ch = self._ch
        if stack and stack[-1]._channel is ch:
            stack.pop().release()
            return
        for i in range(len(stack) - 1, -1, -1):
            if stack[i]._channel is ch:
                stack.pop(i).release()
                return
        self._over_release()

    def __enter__(self) -> Lease:
        try:
            owner = _tls.owner
        except AttributeError:
            owner = thread_owner()
        site = capture_site(1) if _lease._debug else _getframe(1).f_code
        lease = self._ch.acquire(1, None, True, owner, site, "permits", self._fair)
        # `with` blocks nest, so each thread keeps one LIFO stack of the leases its blocks hold.
        owner.cm_stack.append(lease)
        return lease

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        stack = _tls.owner.cm_stack
        if stack and stack[-1]._channel is self._ch:
            stack.pop().release()
        else:
            self._release_cm(_tls.owner)

    async def __aenter__(self) -> Lease:
        owner = _task_owner()
        site = capture_site(1) if _lease._debug else _getframe(1).f_code
        ch = self._ch
        lease = ch.acquire_nowait(1, owner, site, "permits", self._fair)
        if lease is None:
            lease = await ch.acquire_async(1, None, True, owner, site, "permits", self._fair)
        # Per-task record of the leases taken by `async with` blocks (a task's blocks nest).
        cm = self._cm
        prev = cm.get(owner)
        if prev is None:
            cm[owner] = lease
        elif isinstance(prev, list):
            prev.append(lease)
        else:
            cm[owner] = [prev, lease]
        return lease

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        lease = self._pop_task_lease(_task_owner())
        if self._ch.release_never_blocks:
            lease.release()
        else:
            await lease.release_async()

    def _pop_task_lease(self, owner: Any) -> Lease:
        cm = self._cm
        prev = cm.get(owner)
        if prev is None:
            self._over_release()
        if isinstance(prev, list):
            lease: Lease = prev.pop()
            if len(prev) == 1:
                cm[owner] = prev[0]
            return lease
        del cm[owner]
        assert prev is not None
        return prev


class _PendingAcquire:
    """``with rw.read():`` / ``async with rw.write():``: acquires on enter, releases on exit."""

    __slots__ = ("_lease", "_mode", "_rw", "_timeout")

    def __init__(self, rw: RWLock, mode: str, timeout: float | None) -> None:
        self._rw = rw
        self._mode = mode
        self._timeout = timeout
        self._lease: Lease | None = None

    def __enter__(self) -> Lease:
        self._lease = self._rw._acquire(self._mode, self._timeout, True, 2)
        return self._lease

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        lease, self._lease = self._lease, None
        if lease is not None:
            lease.release()

    async def __aenter__(self) -> Lease:
        self._lease = await self._rw._acquire_async(self._mode, self._timeout, True, 2)
        return self._lease

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        lease, self._lease = self._lease, None
        if lease is not None:
            await lease.release_async()


class RWLock(_Primitive):
    """A read-write lock: many readers or one writer, never both.

    Requests are served in FIFO order, so a waiting writer is never starved by a stream of readers
    (readers that arrive after it wait behind it). A write lease can be downgraded to a read lease
    atomically (``lease.downgrade()``); there is no upgrade (two upgraders would deadlock).
    Timeout, cancellation and holder death behave as for :class:`Lock` (the write lease is owned by
    its thread or task).
    """

    __slots__ = ()

    def __init__(self, name: str, *, url: str | None = None, backend: Backend | None = None) -> None:
        self._ch = _channel(name, "rwlock", RW_CAPACITY, True, url, backend)
        self._fair = True
        self._cm = None

    def read(self, *, timeout: float | None = None) -> _PendingAcquire:
        """Context manager (``with`` or ``async with``) holding a shared lease."""
        return _PendingAcquire(self, "shared", _timeout(timeout))

    def write(self, *, timeout: float | None = None) -> _PendingAcquire:
        """Context manager (``with`` or ``async with``) holding the exclusive lease."""
        return _PendingAcquire(self, "exclusive", _timeout(timeout))

    def _acquire(self, mode: str, timeout: float | None, blocking: bool, depth: int) -> Lease:
        n = 1 if mode == "shared" else RW_CAPACITY
        return self._ch.acquire(n, timeout, blocking, thread_owner(), capture_site(depth), mode, True)

    async def _acquire_async(self, mode: str, timeout: float | None, blocking: bool, depth: int) -> Lease:
        n = 1 if mode == "shared" else RW_CAPACITY
        return await self._ch.acquire_async(n, timeout, blocking, _task_owner(), capture_site(depth), mode,
                                            True)

    def acquire_read(self, *, timeout: float | None = None, blocking: bool = True) -> Lease:
        """Block until a shared lease is granted (see :meth:`Semaphore.acquire` for errors)."""
        return self._acquire("shared", _timeout(timeout), blocking, 2)

    def acquire_write(self, *, timeout: float | None = None, blocking: bool = True) -> Lease:
        """Block until the exclusive lease is granted."""
        return self._acquire("exclusive", _timeout(timeout), blocking, 2)

    async def acquire_read_async(self, *, timeout: float | None = None, blocking: bool = True) -> Lease:
        """Suspend until a shared lease is granted."""
        return await self._acquire_async("shared", _timeout(timeout), blocking, 2)

    async def acquire_write_async(self, *, timeout: float | None = None, blocking: bool = True) -> Lease:
        """Suspend until the exclusive lease is granted."""
        return await self._acquire_async("exclusive", _timeout(timeout), blocking, 2)


def _accelerate() -> bool:
    """Install the C fast paths of ``interlock._speedups`` (when built) as the uncontended memory://
    entry points of Lock and Semaphore: ``__enter__``/``__exit__``/``acquire`` and Semaphore's
    ``__aenter__``/``__aexit__``/``acquire_async``. Each C method is the twin of the Python method it replaces and calls
    that method for every other case (other backends, ``memory://...?native=0``, debug mode, keyword
    arguments, waiting), so the behaviour is the same. RLock keeps the Python methods (reentrancy)."""
    try:
        from . import _speedups
    except ImportError:  # pragma: no cover - not built, or a free-threaded build
        return False
    import asyncio
    import asyncio.tasks

    # How _task_owner finds the running task, for the C twin: the asyncio C module's task table where
    # _core.owner.fast_current_task reads it (3.10/3.11), else the C asyncio.current_task (3.12+).
    table = getattr(asyncio.tasks, "_current_tasks", None)
    if isinstance(asyncio.current_task, type(len)) or not isinstance(table, dict):
        table = None
    task_lookup = (asyncio._get_running_loop, table, asyncio.current_task)
    names = ("__enter__", "__exit__", "acquire")
    python_lock_methods = {n: Lock.__dict__[n] for n in names}
    _speedups.bind_facades(Lock, Semaphore, _tls, thread_owner, _lease, _task_owner, ThreadOwner, task_lookup)
    for n in names:
        setattr(RLock, n, python_lock_methods[n])
    return True


accelerated = _accelerate()
