"""``memory://``: primitives shared by the threads and asyncio tasks (of any number of event loops) of
one process.

``memory://`` is one namespace per process; ``memory://<label>`` gives independent namespaces (useful in
tests). Recovery: a holder that dies (its thread or task ends, or its Lease is garbage-collected) returns
its permits at once. Fencing tokens strictly increase per name for the life of the process. Nothing
survives the process.

Algorithm: one mutex per primitive guards ``available``, the FIFO ``waiters`` deque and the ``holders``
table. A release hands permits directly to the head waiter(s) (they never re-compete), so a releaser
that re-acquires at once queues behind them: no barging, no lost wake-ups.
"""

from __future__ import annotations

import _thread
import asyncio
import itertools
import os
import threading
import time
import weakref
from collections import deque
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from .._core import deadlock
from .._core.owner import owner_label, track_task_death, untrack_task_death
from .._core.waiter import CANCELLED, GRANTED, WAITING, TaskWaiter, ThreadWaiter, Waiter, pop_grantable
from .._errors import AcquireTimeout, BlockingCallInEventLoop, InvalidArgument, OverRelease, WouldBlock
from .._lease import Lease
from .._spi import Backend, Channel, HolderInfo, Statistics, WaiterInfo, held_for

try:
    # The optional C accelerator (src/interlock/_speedups.c). Absent when the install could not compile
    # it (no compiler) or on a free-threaded build: then every channel uses the pure-Python twin below.
    from .. import _speedups as _native
except ImportError:  # pragma: no cover - depends on the install
    _native = None  # type: ignore[assignment]

_get_running_loop = asyncio._get_running_loop
_current_task = asyncio.current_task

# One process-wide counter: tokens then strictly increase per name even when a name's channel is
# garbage-collected and created again.
_tokens = itertools.count(1)
_new_lease = Lease.__new__
_monotonic = time.monotonic


class _PyChannelState:
    """The pure-Python twin of ``interlock._speedups.ChannelState`` (C): the fields of a channel and the
    state operations of its uncontended fast path. The C type implements exactly these operations
    (``_grant_locked``, ``_try_grant``, and ``release`` for a whole lease with nobody queued, handing
    every other case to ``_MemoryChannelBase._release_py``); keep both in step. Everything else (the
    waiter queue, cancellation, deadlock detection, holder death) is Python code shared by both.

    Invariants (all under _mutex):
      available + sum(permits of holders) == capacity   (bounded); for unbounded semaphores capacity
      grows with signal() and shrinks with forget().
      If waiters is non-empty, its head does not fit in `available` (grants are made eagerly).
      Every waiter in `waiters` is in state WAITING; a waiter leaves the deque exactly when it leaves
      WAITING.
      holders maps token -> (owner, permits, acquired_at, mode) for every unreleased grant.
      Tokens come from one process-wide counter (itertools.count here, a C counter in the twin), taken
      under the channel's mutex, so they strictly increase per name in grant order.
    """

    _mutex: Any
    available: int
    waiters: deque[Waiter]
    holders: dict[int, tuple[Any, int, float, str]]
    _prev_died: bool
    _last_token: int | None
    _mutex_factory: Any = staticmethod(_thread.allocate_lock)

    # -- granting (twins: _speedups.c grant_locked / try_grant) --------------------------------------
    def _grant_locked(self, permits: int, owner: Any, site: Any, mode: str) -> Lease:
        """Make a grant: take ``permits`` from ``available`` and record the holder (caller holds _mutex
        and has checked that they fit).

        This is most of the cost of an uncontended pair, hence ``Lease.__new__`` and plain stores
        instead of ``Lease.__init__`` (rare fields keep their class-level defaults).

        KeyboardInterrupt: a signal handler may raise after any call (``next``, ``__new__``, the clock),
        so the shared state is changed only after the last call, by plain stores: an interrupt leaves
        either nothing or a complete grant (whose Lease, if dropped, is returned by its finalizer)."""
        token = next(_tokens)
        lease = _new_lease(Lease)
        lease._channel = self  # type: ignore[assignment]
        lease.token = token
        lease.permits = permits
        lease.owner = owner
        lease._site = site
        lease.mode = mode
        lease.acquired_at = at = _monotonic()
        # No calls from here on (see the docstring).
        self._last_token = token
        if self._prev_died:
            lease.previous_owner_died = True
            self._prev_died = False
        self.available -= permits
        self.holders[token] = (owner, permits, at, mode)
        return lease

    def _try_grant(self, permits: int, owner: Any, site: Any, mode: str, fair: bool) -> Lease | None:
        """Grant at once if the permits are free and (fair mode) nobody queues; else None."""
        # `with`, not acquire()/try: a KeyboardInterrupt raised right after acquire() returned would
        # leave the mutex locked forever; BEFORE_WITH has no such point.
        with self._mutex:
            if self.available >= permits and (not self.waiters or not fair):
                return self._grant_locked(permits, owner, site, mode)
            return None


class _MemoryChannelBase(Channel):
    """The channel code shared by the native and the pure-Python state (see _PyChannelState)."""

    if TYPE_CHECKING:
        _mutex: Any
        available: int
        waiters: deque[Waiter]
        holders: dict[int, tuple[Any, int, float, str]]
        _prev_died: bool
        _last_token: int | None
        _mutex_factory: Any

        def _grant_locked(self, permits: int, owner: Any, site: Any, mode: str) -> Lease: ...
        def _try_grant(self, permits: int, owner: Any, site: Any, mode: str, fair: bool) -> Lease | None: ...

    def __init__(self, backend: MemoryBackend, name: str, kind: str, capacity: int, bounded: bool) -> None:
        super().__init__(backend, name, kind, capacity, bounded)
        self._mutex = self._mutex_factory()
        self.available = capacity
        self.waiters = deque()
        self.holders = {}
        self._prev_died = False
        self._last_token = None
        self._owned = kind != "semaphore"

    def _check_wait(self, permits: int, blocking: bool, timeout: float | None) -> None:
        """About to queue (caller holds _mutex): refuse waits that can never or must not happen."""
        self._doomed(permits)
        if not blocking or timeout == 0:
            raise WouldBlock(f"{self.describe()} cannot grant {permits} permit(s) now", name=self.name,
                             permits=permits)

    def reclaim_owner(self, owner: Any) -> None:
        """Return every grant held by ``owner`` (a thread that ended); the next grant learns of it."""
        if not self._owned:
            return
        with self._mutex:
            dead = [tok for tok, rec in list(self.holders.items()) if rec[0] is owner]  # a snapshot (one C call)
            for tok in dead:
                rec = self.holders.pop(tok)
                self.available += rec[1]
                self._prev_died = True
            if dead:
                self._wake_granted()

    def is_current(self, lease: Lease) -> bool:
        return lease.token in self.holders

    def _wake_granted(self) -> None:
        """Grant every waiter that now fits. Caller holds _mutex."""
        if not self.waiters:
            return
        granted, _rest = pop_grantable(self.waiters, self.available, True)
        for w in granted:  # each grant takes its permits from `available`
            lease = self._grant_locked(w.permits, w.owner, w.site, w.mode)
            w.lease = lease
            w.state = GRANTED
            if not w.wake():
                # Its event loop is gone: undo and move on to the next waiter.
                w.state = CANCELLED
                lease._state = 1
                del self.holders[lease.token]
                self.available += w.permits
        if granted and self.waiters and self.available >= self.waiters[0].permits:
            self._wake_granted()

    # -- acquire -----------------------------------------------------------------------------------
    def _doomed(self, permits: int) -> None:
        if self.bounded and permits > self.capacity:
            raise InvalidArgument(
                f"cannot acquire {permits} permits of {self.describe()}: its capacity is {self.capacity}; "
                "ask for at most the capacity", name=self.name, permits=permits, capacity=self.capacity,
            )

    def acquire(
        self, permits: int, timeout: float | None, blocking: bool, owner: Any, site: Any, mode: str,
        fair: bool = True,
    ) -> Lease:
        lease = self._try_grant(permits, owner, site, mode, fair)
        if lease is not None:
            return lease
        with self._mutex:
            if self.available >= permits and (not self.waiters or not fair):  # freed meanwhile
                return self._grant_locked(permits, owner, site, mode)
            self._check_wait(permits, blocking, timeout)
            if _get_running_loop() is not None:
                raise BlockingCallInEventLoop(
                    f"blocking acquire of {self.describe()} on a thread whose event loop is running would "
                    "deadlock it; use 'async with' or 'await acquire_async()' instead",
                    name=self.name,
                )
            w = ThreadWaiter(permits, owner, site, mode)
            self.waiters.append(w)
        return self._wait_thread(w, timeout)

    release_never_blocks = True

    def acquire_nowait(self, permits: int, owner: Any, site: Any, mode: str, fair: bool) -> Lease | None:
        lease = self._try_grant(permits, owner, site, mode, fair)
        if lease is not None and self._owned:
            track_task_death(lease)
        return lease

    def _wait_thread(self, w: ThreadWaiter, timeout: float | None) -> Lease:
        owner = w.owner
        # Waits on semaphores never take part in a hopeless cycle (deadlock.py), so only owned
        # primitives pay for the wait-for graph.
        track = self._owned
        if track:
            try:
                deadlock.enter_wait(owner, self, w)
            except BaseException:
                self._cancel(w)
                raise
        try:
            got = w.wait(timeout)
        except BaseException:  # KeyboardInterrupt or another async exception while blocked
            self._withdraw(w)
            raise
        finally:
            if track:
                deadlock.leave_wait(owner)
        if not got and self._cancel(w):
            raise AcquireTimeout(
                f"timed out after {timeout}s waiting for {w.permits} permit(s) of {self.describe()}",
                name=self.name, permits=w.permits, timeout=timeout,
            )
        lease = w.lease
        assert lease is not None
        return lease

    def _cancel(self, w: Waiter) -> bool:
        """Withdraw a waiter. Returns True if it was still waiting; if it had been granted meanwhile,
        the grant is returned (passing it on) and False is returned only when the caller may keep it."""
        with self._mutex:
            if w.state == WAITING:
                w.state = CANCELLED
                self.waiters.remove(w)
                self._wake_granted()  # the head may have changed
                return True
        return False

    def _withdraw(self, w: Waiter) -> None:
        """The waiter is leaving with an exception: never keep a grant it will not use."""
        if not self._cancel(w) and w.state == GRANTED and w.lease is not None:
            w.lease._state = 1
            self.release(w.lease, w.permits)

    async def acquire_async(
        self, permits: int, timeout: float | None, blocking: bool, owner: Any, site: Any, mode: str,
        fair: bool = True,
    ) -> Lease:
        lease = self.acquire_nowait(permits, owner, site, mode, fair)
        if lease is not None:
            return lease
        with self._mutex:
            if self.available >= permits and (not self.waiters or not fair):  # freed meanwhile
                lease = self._grant_locked(permits, owner, site, mode)
            else:
                self._check_wait(permits, blocking, timeout)
                loop = asyncio.get_running_loop()
                w = TaskWaiter(permits, owner, site, mode, loop)
                self.waiters.append(w)
        if lease is not None:
            if self._owned:
                track_task_death(lease)
            return lease
        # The wait, inline (one coroutine less per contended acquire): no await before `await w.fut`, so a
        # cancellation finds the waiter either not queued yet or queued and covered by the except below.
        timer = None
        track = self._owned
        if track:
            try:
                deadlock.enter_wait(owner, self, w)
            except BaseException:
                self._cancel(w)
                raise
        try:
            if timeout is not None:
                timer = loop.call_later(timeout, self._expire_task_waiter, w)
            await w.fut
        except BaseException:
            # Cancelled (or interrupted) at the await: withdraw, or give back a grant that raced in.
            self._withdraw(w)
            raise
        finally:
            if track:
                deadlock.leave_wait(owner)
            if timer is not None:
                timer.cancel()
        if w.state != GRANTED:
            raise AcquireTimeout(
                f"timed out after {timeout}s waiting for {w.permits} permit(s) of {self.describe()}",
                name=self.name, permits=w.permits, timeout=timeout,
            )
        lease = w.lease
        assert lease is not None
        if track:
            track_task_death(lease)
        return lease

    def _expire_task_waiter(self, w: TaskWaiter) -> None:
        with self._mutex:
            if w.state != WAITING:
                return
            w.state = CANCELLED
            self.waiters.remove(w)
            self._wake_granted()
        if not w.fut.done():
            w.fut.set_result(None)

    # -- release -----------------------------------------------------------------------------------
    def release(self, lease: Lease, permits: int, abandoned: bool = False) -> None:
        """Return ``permits`` of ``lease``; hand them to the head waiter(s). (The native state's
        ``release`` does the case "nobody queued, the whole lease" in C and calls ``_release_py`` for the
        rest; this method is its pure-Python twin.)"""
        # acquire()/try rather than `with` on this hot path (`with` costs ~0.15 us more on 3.11-3.13):
        # a KeyboardInterrupt right after acquire() returns can still wedge the mutex here (the
        # acquire-side guarantee does not cover release; see tests/stress/test_stress_interrupt.py).
        mutex = self._mutex
        mutex.acquire()
        try:
            rec = self.holders.pop(lease.token, None)
            if rec is not None:
                held = rec[1]
                if permits < held:  # partial release: keep the rest
                    self.holders[lease.token] = (rec[0], held - permits, rec[2], rec[3])
                    held = permits
                self.available += held
                if abandoned:
                    self._prev_died = True
                if self.waiters:
                    self._wake_granted()
        finally:
            mutex.release()
        if lease._death_cb is not None:
            untrack_task_death(lease)

    _release_py = release

    def try_release_abandoned(self, lease: Lease) -> bool:
        # Called from finalizers: never wait for the mutex (this thread might hold it).
        # locked() rather than acquire(False)/release(): an interrupt between those would leave the mutex
        # locked. Only this thread could be inside it and stay there while we wait, and it is not.
        if self._mutex.locked():
            return False
        self.release(lease, lease.permits, abandoned=True)
        return True

    def downgrade(self, lease: Lease) -> None:
        with self._mutex:
            rec = self.holders.get(lease.token)
            if rec is None:
                lease.ensure_held()
                return
            give = rec[1] - 1
            self.holders[lease.token] = (rec[0], 1, rec[2], "shared")
            lease.permits = 1
            lease.mode = "shared"
            self.available += give
            self._wake_granted()

    def forget(self, lease: Lease) -> None:
        with self._mutex:
            rec = self.holders.pop(lease.token, None)
            if rec is not None and not self.bounded:
                self.capacity -= rec[1]
            elif rec is not None:
                self.available += rec[1]  # bounded: forgetting would shrink capacity forever; refuse
                self._wake_granted()
        untrack_task_death(lease)

    def signal(self, permits: int) -> None:
        with self._mutex:
            if self.bounded:
                raise OverRelease(
                    f"{self.describe()} is bounded: release() without holding a permit would exceed its "
                    f"capacity {self.capacity}; release the Lease from acquire(), or create the semaphore "
                    "with bounded=False for signalling", name=self.name, capacity=self.capacity,
                )
            self.capacity += permits
            self.available += permits
            self._wake_granted()

    # -- inspection --------------------------------------------------------------------------------
    def statistics(self) -> Statistics:
        with self._mutex:
            holders = list(self.holders.items())
            waiters = list(self.waiters)
            available = self.available
            capacity = self.capacity
            last = self._last_token
        return Statistics(
            name=self.name,
            kind=self.kind,
            capacity=capacity,
            available=available,
            holders=tuple(
                HolderInfo(owner_label(o), p, tok, m, held_for(at)) for tok, (o, p, at, m) in holders
            ),
            waiters=tuple(WaiterInfo(owner_label(w.owner), w.permits, w.mode, held_for(w.since)) for w in waiters),
            bounded=self.bounded,
            last_token=last,
            backend=self.backend.display_url,
        )

    def local_holder_owners(self) -> list[Any]:
        return [rec[0] for rec in list(self.holders.values())]

    def locked(self) -> bool:
        return self.available < 1 or bool(self.waiters)


class PureMemoryChannel(_PyChannelState, _MemoryChannelBase):
    """A memory:// channel on the pure-Python state (``memory://...?native=0``, or no accelerator)."""


if TYPE_CHECKING:
    _NativeState = _PyChannelState
else:
    _NativeState = _native.ChannelState if _native is not None else _PyChannelState


class MemoryChannel(_NativeState, _MemoryChannelBase):
    """A memory:// channel on the native state when the accelerator is built (else the same as
    PureMemoryChannel)."""

    if _native is not None:
        _mutex_factory = _native.Mutex
        # The contended paths in C (see the "contended handoff" section of _speedups.c): the release
        # that hands permits to queued threads, and a semaphore's blocking wait. Each calls the Python
        # method of _MemoryChannelBase for every case it does not handle.
        _release_py = _native.ChannelState._release_contended
        acquire = _native.ChannelState._acquire_contended  # type: ignore[assignment]


if _native is not None:
    _native.configure(Lease, untrack_task_death)
    _native.configure_handoff(ThreadWaiter, TaskWaiter, _MemoryChannelBase.acquire, _MemoryChannelBase.release,
                              _thread.allocate_lock, WAITING, GRANTED, MemoryChannel)


def accelerated() -> bool:
    """True when the native accelerator (``interlock._speedups``) is built and in use: ``memory://``
    backends then run their uncontended fast paths and the Lock/Semaphore entry points in C. Select the
    pure-Python path per backend with ``memory://label?native=0``."""
    return _native is not None


_backends: weakref.WeakSet[MemoryBackend] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """The child has one thread: the one that forked. Waiters of other threads and tasks of event loops
    will never run there; grants of other threads can never be released. Reset the mutexes (they may have
    been held by a thread that does not exist in the child) and reclaim what belonged to vanished owners,
    so the child's copy of the namespace stays usable."""
    me = _thread_owner_or_none()
    for backend in list(_backends):
        backend._lock = threading.Lock()
        for ch in list(backend._channels.values()):
            ch._mutex = ch._mutex_factory()
            for w in ch.waiters:
                w.state = CANCELLED
            ch.waiters.clear()
            for tok, rec in list(ch.holders.items()):
                if rec[0] is not me:
                    del ch.holders[tok]
                    ch.available += rec[1]
                    ch._prev_died = True


def _thread_owner_or_none() -> Any:
    from .._core.owner import _tls

    return getattr(_tls, "owner", None)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class MemoryBackend(Backend):
    """In-process namespace. ``memory://`` is shared by the whole process; ``memory://label`` is a
    separate namespace per label. After ``fork()`` the child keeps a copy of the namespace in which
    only the forking thread's grants survive."""

    schemes = ("memory",)

    def __init__(self, url: str) -> None:
        super().__init__(url)
        # INTERLOCK_NATIVE=0 makes pure Python the default (e.g. to run every test on the twin).
        native = os.environ.get("INTERLOCK_NATIVE", "1").lower() not in ("0", "false", "no")
        for key, value in parse_qsl(urlsplit(url).query, keep_blank_values=True):
            if key != "native":
                continue
            if value.lower() not in ("0", "1", "false", "true", "no", "yes"):
                raise InvalidArgument(f"memory:// option native={value!r}: use native=0 or native=1",
                                      argument="url")
            native = value.lower() in ("1", "true", "yes")
        #: True if this namespace uses the native accelerator (``?native=0`` selects pure Python).
        self.native = native and _native is not None
        self._channel_class: type[_MemoryChannelBase] = MemoryChannel if self.native else PureMemoryChannel
        _backends.add(self)
        self._lock = threading.Lock()
        # Weak: a name's state lives as long as some object or lease refers to it.
        self._channels: weakref.WeakValueDictionary[str, _MemoryChannelBase] = weakref.WeakValueDictionary()

    def channel(self, name: str, kind: str, capacity: int, bounded: bool) -> _MemoryChannelBase:
        with self._lock:
            ch = self._channels.get(name)
            if ch is None:
                ch = self._channel_class(self, name, kind, capacity, bounded)
                self._channels[name] = ch
            else:
                ch.check_compatible(kind, capacity, bounded)
            return ch

    def owner_ended(self, owner: Any) -> None:
        with self._lock:
            chans = list(self._channels.values())
        for ch in chans:
            ch.reclaim_owner(owner)

    def status(self, name: str | None = None) -> list[Statistics]:
        with self._lock:
            chans = [self._channels.get(name)] if name is not None else list(self._channels.values())
        return [c.statistics() for c in sorted((c for c in chans if c is not None), key=lambda c: c.name)]
