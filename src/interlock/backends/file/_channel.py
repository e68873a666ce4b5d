"""The ``file://`` channel: one named primitive as seen by one process.

Every decision is made under two locks, always in this order: the channel's in-process mutex
(``flock`` is per open file description, so it does not exclude threads sharing the fd) and
``flock(LOCK_EX)`` on the state file (it excludes other processes). Both are held for a few
microseconds, never while waiting.

Waiting: a waiter appends a record to the FIFO queue in the state file (every thread and task gets its
own ticket, so threads, tasks and processes queue together), registers the processes it depends on with
the death watcher, and sleeps in the kernel on a wake-up socket (a thread: ``poll()`` on a socket of its
own; a task: its event loop's socket, see ``LoopHub``). Whoever frees permits grants them to the head of
the queue inside the same state update (direct handoff: no barging, no thundering herd) and sends one
datagram to each waiter granted. A woken waiter re-reads the state under the lock: a datagram only
means "look again", so a stray or forged one costs a look, never a wrong grant.

The hot transitions (an uncontended grant, joining the queue, a full release and its handoff, a
blocked thread's futex wait up to its Lease) go through the C twin ``_fastfile`` when it is built (see
``_load_native``); each C call either completes its transition or hands it back, file lock held, to the
Python twin.

Both the blocking and the async paths are thin drivers around the same locked operations
(``_grant_or_enqueue``, ``_take_grant``, ``_cancel``, ``_abandon_wait``); only how they sleep differs.
"""

from __future__ import annotations

import _thread
import asyncio
import fcntl
import itertools
import os
import struct
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..._core import deadlock
from ..._core.owner import ThreadOwner, track_task_death, untrack_task_death
from ..._errors import AcquireTimeout, BlockingCallInEventLoop, InvalidArgument, OverRelease, WouldBlock
from ..._lease import RELEASED as _RELEASED
from ..._lease import Lease
from ..._spi import Channel, Statistics
from ._paths import encode_name
from ._proc import BOX_SPINS, SemSlot
from ._state import GRANT, MODES, PREV_DIED, REFRESH, StateFile, Wake, encode_label

_flock = fcntl.flock
_LOCK_EX = fcntl.LOCK_EX
_LOCK_UN = fcntl.LOCK_UN
if TYPE_CHECKING:
    from ._backend import FileBackend, LoopHub

_monotonic = time.monotonic
_new_lease = Lease.__new__
_get_running_loop = asyncio._get_running_loop
_ref = weakref.ref
_wids = itertools.count(1)  # waiter ids, unique within this process (the process id tells processes apart)
_GRANT_SIZE = GRANT.size
_GRANT_UNPACK = GRANT.unpack
_ID_UNPACK_FROM = struct.Struct("<Q").unpack_from  # a mailbox grant: waiter id, then (token, permits, mode)
_BODY_UNPACK_FROM = struct.Struct("<QqB").unpack_from

_labels: dict[str, bytes] = {}


def _load_native() -> Any:
    """The C twin of the hot state transitions (``_fastfile.c``: an uncontended grant, a full release
    and its handoff), or None where it is not built or ``INTERLOCK_FILE_NATIVE=0`` selects the
    pure-Python twin (``StateFile.grant_fast_locked`` / ``release_locked``, always used for the rest)."""
    if os.environ.get("INTERLOCK_FILE_NATIVE", "1") == "0":
        return None
    try:
        from . import _fastfile
    except ImportError:
        return None
    return _fastfile


_native = _load_native()  # read by each channel when it is created (tests switch it per backend)


def spin_limit_from_env() -> float | None:
    """``INTERLOCK_FILE_SPIN_US``: the most a waiter that became the head of its queue spins (yielding
    the CPU) before it parks, in microseconds (0: never; default 1000). See "spinning" in _fastfile.c."""
    raw = os.environ.get("INTERLOCK_FILE_SPIN_US", "").strip()
    if not raw:
        return None
    try:
        us = float(raw)
    except ValueError:
        us = -1.0
    if not 0 <= us <= 1_000_000:  # (also rejects nan)
        raise InvalidArgument(
            f"INTERLOCK_FILE_SPIN_US={raw!r} is not a number of microseconds between 0 and 1000000; set it "
            "to e.g. 1000 (the default), or 0 to never spin, or unset it"
        )
    return us


def handoff_yield_from_env() -> bool | None:
    """``INTERLOCK_FILE_HANDOFF_YIELD``: 1 (the default) or 0. With 1, a release that hands permits to a
    parked thread of another process yields its CPU to that grantee. See "yielding after a handoff" in
    _fastfile.c."""
    raw = os.environ.get("INTERLOCK_FILE_HANDOFF_YIELD", "").strip()
    if not raw:
        return None
    if raw not in ("0", "1"):
        raise InvalidArgument(
            f"INTERLOCK_FILE_HANDOFF_YIELD={raw!r} is neither 1 nor 0; set it to 1 (the default: a release "
            "yields its CPU to the process it handed permits to) or 0 (it does not), or unset it"
        )
    return raw == "1"


def _label(owner: Any) -> bytes:
    """The owner as stored in a record (thread or task name), cached by name."""
    if type(owner) is ThreadOwner:
        key = "t" + owner.name
    elif isinstance(owner, asyncio.Task):
        key = "a" + owner.get_name()
    else:
        key = "?" + repr(owner)
    b = _labels.get(key)
    if b is None:
        if len(_labels) > 1024:
            _labels.clear()
        b = _labels[key] = encode_label(key[0], key[1:])
    return b


class Wait:
    """One queued acquire of this process (a thread or a task)."""

    __slots__ = ("ch", "done", "fut", "grant", "mode", "owner", "peers", "permits", "site", "slot", "sock",
                 "ticket", "timed_out", "wid")

    def __init__(self, ch: FileChannel, permits: int, mode: str, owner: Any, site: Any, sock: int) -> None:
        self.ch = ch
        self.permits = permits
        self.mode = mode
        self.owner = owner
        self.site = site
        self.sock = sock
        self.wid = next(_wids)
        self.ticket = 0
        self.peers: set[int] = set()
        # done: the wait is settled (lease created, or withdrawn); grant: (token, permits, mode, prev)
        # seen by an event loop's hub; timed_out: the async timeout fired.
        self.done = False
        self.grant: tuple[int, int, int, bool] | None = None
        self.timed_out = False
        self.fut: asyncio.Future[None] | None = None
        self.slot: Any = None  # a blocking thread's wake-up slot (SemSlot or WakeSocket)


class FileChannel(Channel):
    """See the module docstring. Invariants (under ``_mutex``):

    * ``_local`` maps token -> (owner, permits, mode, acquired_at) for every grant of this process
      that a Lease was handed out for and that was not released; the state file has a holder record
      for each of them with this process's id (a grant is committed to the state before it is
      delivered to a waiter, so a waiter never holds a grant the state does not show). One writer
      does not take ``_mutex``: the C wait (``_wait_native``) adds its grant with a single dict store
      under the GIL. So code iterating over ``_local`` takes a ``list()`` snapshot first.
    * ``_sf`` is None only after a fork (reopened on next use); ``_proc`` is 0 only then too.
    """

    backend: FileBackend
    release_never_blocks = True  # a release is one short locked update, never a wait

    def __init__(self, backend: FileBackend, name: str, kind: str, capacity: int, bounded: bool) -> None:
        self._capacity = capacity
        super().__init__(backend, name, kind, capacity, bounded)
        self._mutex = _thread.allocate_lock()
        self._owned = kind != "semaphore"
        self._name_raw = encode_name(name)
        self._local: dict[int, tuple[Any, int, str, float]] = {}
        self._sf: StateFile | None = None
        self._proc = 0
        # The queued waits of this process (wid -> Wait), to poke them when a peer dies.
        self._waits: dict[int, Wait] = {}
        self._deliver = backend.waker.wake  # bound once: the release path passes it on every call
        # The C twins (None: the pure-Python path). They take and drop the file lock themselves, and
        # return with it still held when they leave the transition to Python (see _fastfile.c).
        native = _native
        self._c_grant: Any = native.grant if native is not None else None
        self._c_release: Any = native.release if native is not None else None
        self._c_wait: Any = native.wait if native is not None else None
        self._c_enqueue: Any = native.enqueue if native is not None else None
        # (process, slot) -> (mailbox, offset, bound sem_post): the Waker's cache, which the C release
        # delivers through (the same dict object for the life of the process, cleared after a fork).
        self._posts = backend.waker._posts
        self._prime = backend.waker.prime  # fills that cache for a poke (see poke() in _fastfile.c)
        self._label_cache: tuple[Any, bytes] = (None, b"")
        self._watched: set[int] = set()  # peers registered with the death watcher for this channel
        self._sf = self._open_file()

    # capacity: fixed for bounded primitives; an unbounded semaphore's lives in the state file
    @property
    def capacity(self) -> int:
        if self.bounded:
            return self._capacity
        with self._mutex:
            sf = self._state()
            sf.lock()
            try:
                return sf.read_locked()[0]
            finally:
                sf.unlock()

    @capacity.setter
    def capacity(self, value: int) -> None:
        self._capacity = value

    def _open_file(self) -> StateFile:
        sf = self.backend.open_state(self.name)
        try:
            sf.setup(self._name_raw, self.kind, self._capacity, self.bounded, self.backend.display_url)
        except BaseException:
            sf.close()
            raise
        return sf

    def _state(self) -> StateFile:
        """The open state file (reopened after a fork). Caller holds _mutex."""
        sf = self._sf
        if sf is None:
            sf = self._sf = self._open_file()
        if not self._proc:
            self._proc = self.backend.proc_id()
        return sf

    def _send(self, wakes: list[Wake]) -> None:
        """Deliver grants. Always called with the file lock held, right after the commit: a waiter can
        then observe its grant (in the state, or in its mailbox) only once the delivery is complete, so
        no delivery can land in a wake-up slot after its waiter moved on."""
        wake = self._deliver
        for proc, n, payload in wakes:
            wake(proc, n, payload)

    # -- grants --------------------------------------------------------------------------------------
    def _lease_locked(self, token: int, permits: int, owner: Any, site: Any, mode: str, prev: bool) -> Lease:
        lease = _new_lease(Lease)
        lease._channel = self
        lease.token = token
        lease.permits = permits
        lease.owner = owner
        lease._site = site
        lease.mode = mode
        lease.acquired_at = at = _monotonic()
        if prev:
            lease.previous_owner_died = True
        self._local[token] = (owner, permits, mode, at)
        return lease

    def _fast(self, permits: int, owner: Any, site: Any, mode: str, fair: bool) -> Lease | None:
        """The uncontended path (inlined on purpose: it is most of the cost of a pair)."""
        label = _label(owner)
        mutex = self._mutex
        mutex.acquire()
        try:
            sf = self._sf
            if sf is None or not self._proc:
                sf = self._state()
            fd = sf.fd
            c_grant = self._c_grant
            r: Any = (c_grant(sf.m, fd, permits, fair, self._proc, MODES[mode], label, _monotonic())
                      if c_grant is not None else False)
            if r.__class__ is not tuple:
                # None: no room, False: not handled by C (or no C); the file lock is held unless no C.
                if c_grant is None:
                    _flock(fd, _LOCK_EX)
                try:
                    if r is False:
                        r = sf.grant_fast_locked(permits, fair, self._proc, MODES[mode], label, _monotonic())
                finally:
                    _flock(fd, _LOCK_UN)
                if r is None:
                    return None
            lease = _new_lease(Lease)
            lease._channel = self
            lease.token = token = r[0]
            lease.permits = permits
            lease.owner = owner
            lease._site = site
            lease.mode = mode
            lease.acquired_at = at = _monotonic()
            if r[1]:
                lease.previous_owner_died = True
            self._local[token] = (owner, permits, mode, at)
        finally:
            mutex.release()
        if r[2]:
            self._refresh_waiters()
        return lease

    def _doomed(self, permits: int) -> None:
        if self.bounded and permits > self._capacity:
            raise InvalidArgument(
                f"cannot acquire {permits} permits of {self.describe()}: its capacity is {self._capacity}; "
                "ask for at most the capacity", name=self.name, permits=permits, capacity=self._capacity,
            )

    def _would_block(self, permits: int) -> WouldBlock:
        return WouldBlock(f"{self.describe()} cannot grant {permits} permit(s) now", name=self.name,
                          permits=permits)

    def acquire(
        self, permits: int, timeout: float | None, blocking: bool, owner: Any, site: Any, mode: str,
        fair: bool = True,
    ) -> Lease:
        if not blocking or timeout == 0:
            lease = self._fast(permits, owner, site, mode, fair)
            if lease is not None:
                return lease
            self._doomed(permits)
            lease = self._try_after_reclaim(permits, owner, site, mode, fair)
            if lease is not None:
                return lease
            raise self._would_block(permits)
        if self.bounded and permits > self._capacity:
            self._doomed(permits)  # more than the capacity can never be granted
        # One locked section grants or enqueues: no failed fast attempt first (under contention that
        # would cost a second round of locks per acquire). The grant branch is the uncontended hot
        # path, written out like _fast().
        cached = self._label_cache  # one entry, one tuple (atomic): the same thread acquires again and again
        if cached[0] is owner:
            label = cached[1]
        else:
            label = _label(owner)
            self._label_cache = (owner, label)
        mutex = self._mutex
        mutex.acquire()
        try:
            sf = self._sf
            if sf is None or not self._proc:
                sf = self._state()
            proc = self._proc
            fd = sf.fd
            now = _monotonic()
            c_grant = self._c_grant
            r: Any = (c_grant(sf.m, fd, permits, fair, proc, MODES[mode], label, now)
                      if c_grant is not None else False)
            if r.__class__ is not tuple:
                # None: no room, False: not handled by C (or no C); the file lock is held unless no C.
                if c_grant is None:
                    _flock(fd, _LOCK_EX)
                try:
                    if r is False:
                        r = sf.grant_fast_locked(permits, fair, proc, MODES[mode], label, now)
                    if r is None:
                        if _get_running_loop() is not None:
                            raise BlockingCallInEventLoop(
                                f"blocking acquire of {self.describe()} on a thread whose event loop is "
                                "running would deadlock it; use 'async with' or 'await acquire_async()' "
                                "instead", name=self.name,
                            )
                        slot = self.backend.take_slot()
                        w = Wait(self, permits, mode, owner, site, slot.n)
                        w.slot = slot
                        c_enqueue = self._c_enqueue
                        q = (c_enqueue(sf.m, permits, proc, w.wid, slot.n, MODES[mode], label, now)
                             if c_enqueue is not None else None)
                        if q is None:
                            q = sf.enqueue_locked(permits, proc, w.wid, slot.n, MODES[mode], label, now)
                        w.ticket, peers = q
                        self._waits[w.wid] = w
                finally:
                    _flock(fd, _LOCK_UN)
            if r is not None:
                lease = _new_lease(Lease)
                lease._channel = self
                lease.token = token = r[0]
                lease.permits = permits
                lease.owner = owner
                lease._site = site
                lease.mode = mode
                lease.acquired_at = now
                if r[1]:
                    lease.previous_owner_died = True
                self._local[token] = (owner, permits, mode, now)
        finally:
            mutex.release()
        if r is not None:
            if r[2]:
                self._refresh_waiters()
            assert lease is not None
            return lease
        peers.discard(proc)
        w.peers = peers
        if self._c_wait is not None and type(slot) is SemSlot:
            return self._wait_native(w, slot, timeout)
        try:
            return self._wait_thread(w, slot, timeout)
        finally:
            self.backend.give_slot(slot)

    def acquire_nowait(self, permits: int, owner: Any, site: Any, mode: str, fair: bool) -> Lease | None:
        lease = self._fast(permits, owner, site, mode, fair)
        if lease is not None and self._owned:
            track_task_death(lease)
        return lease

    async def acquire_async(
        self, permits: int, timeout: float | None, blocking: bool, owner: Any, site: Any, mode: str,
        fair: bool = True,
    ) -> Lease:
        lease = self._fast(permits, owner, site, mode, fair)
        if lease is None:
            self._doomed(permits)
            if not blocking or timeout == 0:
                lease = self._try_after_reclaim(permits, owner, site, mode, fair)
                if lease is None:
                    raise self._would_block(permits)
            else:
                loop = asyncio.get_running_loop()
                hub = self.backend.hub(loop)
                w = Wait(self, permits, mode, owner, site, hub.sock.n)
                lease = self._grant_or_enqueue(w, fair)
                if lease is None:
                    lease = await self._wait_task(w, hub, timeout, loop)
        if self._owned:
            track_task_death(lease)
        return lease

    def _try_after_reclaim(self, permits: int, owner: Any, site: Any, mode: str, fair: bool) -> Lease | None:
        """A non-blocking acquire that found no room: if a holder or a queued waiter is provably dead,
        reclaim it and try once more (a dead process's permits are free, not busy)."""
        if self._reclaim_provably_dead():
            return self._fast(permits, owner, site, mode, fair)
        return None

    def _grant_or_enqueue(self, w: Wait, fair: bool, get_slot: Callable[[], Any] | None = None) -> Lease | None:
        """Grant now if possible, else join the queue. With ``get_slot`` (a blocking thread), the wake-up
        slot is taken only when needed, and a thread running an event loop is not enqueued (``w.slot``
        stays None: the caller raises)."""
        mode = MODES[w.mode]
        label = _label(w.owner)
        peers: set[int] = set()
        with self._mutex:
            sf = self._state()
            proc = self._proc
            sf.lock()
            try:
                now = _monotonic()
                r = sf.grant_fast_locked(w.permits, fair, proc, mode, label, now)
                if r is None:
                    if get_slot is not None:
                        if _get_running_loop() is not None:
                            return None
                        w.slot = get_slot()
                        w.sock = w.slot.n
                    c_enqueue = self._c_enqueue
                    q = (c_enqueue(sf.m, w.permits, proc, w.wid, w.sock, mode, label, now)
                         if c_enqueue is not None else None)
                    if q is None:
                        q = sf.enqueue_locked(w.permits, proc, w.wid, w.sock, mode, label, now)
                    w.ticket, peers = q
                    self._waits[w.wid] = w
            finally:
                sf.unlock()
            if r is not None:
                w.done = True
                lease = self._lease_locked(r[0], w.permits, w.owner, w.site, w.mode, r[1])
        if r is not None:
            if r[2]:
                self._refresh_waiters()
            return lease
        peers.discard(proc)
        w.peers = peers
        return None

    def _take_grant(self, w: Wait, grant: tuple[int, int, int, bool] | None = None) -> Lease | None:
        """The lease for ``w`` if it has been granted (read from the state unless ``grant`` is given)."""
        with self._mutex:
            if grant is None:
                sf = self._state()
                sf.lock()
                try:
                    grant = sf.find_grant_locked(self._proc, w.wid)
                finally:
                    sf.unlock()
                if grant is None:
                    return None
            w.done = True
            return self._lease_locked(grant[0], grant[1], w.owner, w.site, w.mode, grant[3])

    def _cancel(self, w: Wait) -> Lease | None:
        """Timeout: leave the queue. A grant that raced with the timeout is kept (returned)."""
        with self._mutex:
            sf = self._state()
            proc = self._proc
            sf.lock()
            grant = None
            try:
                found, wakes = sf.withdraw_locked(w.ticket, _monotonic())
                if not found:
                    grant = sf.find_grant_locked(proc, w.wid)
                self._send(wakes)
            finally:
                sf.unlock()
            w.done = True
            lease = None
            if grant is not None:
                lease = self._lease_locked(grant[0], grant[1], w.owner, w.site, w.mode, grant[3])
        return lease

    def _abandon_wait(self, w: Wait) -> None:
        """The waiter leaves with an exception (interrupt, cancellation): never keep a grant it will not
        use; a grant that raced in is passed on to the next waiter."""
        with self._mutex:
            sf = self._state()
            proc = self._proc
            sf.lock()
            try:
                now = _monotonic()
                found, wakes = sf.withdraw_locked(w.ticket, now)
                if not found:
                    grant = sf.find_grant_locked(proc, w.wid)
                    if grant is not None:
                        _, wakes = sf.release_locked(grant[0], proc, None, False, now)
                self._send(wakes)
            finally:
                sf.unlock()
            w.done = True

    def grants_for(self, waits: list[Wait]) -> dict[int, tuple[int, int, int, bool]]:
        """Which of these waiters (of one event loop) have been granted: wid -> grant."""
        with self._mutex:
            sf = self._state()
            sf.lock()
            try:
                return sf.granted_wids_locked(self._proc, [w.wid for w in waits])
            finally:
                sf.unlock()

    # -- sleeping ------------------------------------------------------------------------------------
    def _end_wait(self, w: Wait, ws: SemSlot, graph: bool) -> None:
        """What ends a wait of _wait_native that was not granted through the C twin (which does the
        same itself). Idempotent: ``w.slot`` is None once the slot is back in the pool."""
        self._waits.pop(w.wid, None)
        if graph:
            deadlock.leave_wait(w.owner)
        if w.slot is not None:
            w.slot = None
            self.backend.give_slot(ws)

    def _wait_native(self, w: Wait, ws: SemSlot, timeout: float | None) -> Lease:
        """_wait_thread's futex path through the C twin (``_fastfile.wait``): it sleeps, takes the grant
        from the mailbox, fills the Lease built here beforehand and ends the wait (``_waits``, the
        wait-for graph as ``deadlock.leave_wait`` does, the slot back to the pool). So no Python line
        runs between the wake-up and the return of this call: each one is handoff latency, since the
        grantee runs from cold caches (measured: ~18 us of Python and C from the wake-up to the return
        of acquire() before, in the forced handoff). Timeouts, refreshes (stale posts) and exceptions are
        handled here as in _wait_thread, and end the wait through _end_wait."""
        owner = w.owner
        graph = self._owned
        try:
            if graph:
                deadlock.enter_wait(owner, self, w)
        except BaseException:
            self._abandon_wait(w)
            self._end_wait(w, ws, False)
            raise
        try:
            deadline = None if timeout is None else _monotonic() + timeout
            if not w.peers <= self._watched:
                self._watch(w.peers)
            # Built before the sleep; it counts as released (nothing for __del__ to return) until filled.
            granted: Lease = _new_lease(Lease)
            granted._state = _RELEASED
            granted._channel = self
            granted.owner = owner
            granted._site = w.site
            granted.mode = w.mode
            c_wait = self._c_wait
            handle = ws.sem.handle
            mbox = ws.mbox
            off = ws.off
            wid = w.wid
            tail = (w, granted, self._local, owner, w.mode, self._waits, self.backend._pool, ws,
                    *((deadlock._graph_lock, deadlock._waiting_on) if graph else (None, None)))
            while True:
                got: Any
                if deadline is None:
                    got = c_wait(handle, mbox, off, wid, None, *tail)
                else:
                    left = deadline - _monotonic()
                    got = c_wait(handle, mbox, off, wid, left if left > 0 else 0.0, *tail)
                if got is not None and got is not False:  # the lease: granted, and the wait ended in C
                    return granted
                if got is False:  # timed out
                    if _monotonic() < deadline:  # type: ignore[operator]
                        continue
                    lease = self._cancel(w)
                    if lease is None:
                        raise AcquireTimeout(
                            f"timed out after {timeout}s waiting for {w.permits} permit(s) of "
                            f"{self.describe()}", name=self.name, permits=w.permits, timeout=timeout,
                        )
                    self._end_wait(w, ws, graph)
                    return lease
                # A refresh, or a stale post of an earlier wait on this slot: look at the state.
                lease = self._take_grant(w)
                if lease is not None:
                    self._end_wait(w, ws, graph)
                    return lease
                self.rewatch()
        except BaseException:
            if not w.done:
                self._abandon_wait(w)
            self._end_wait(w, ws, graph)
            raise

    def _wait_thread(self, w: Wait, ws: Any, timeout: float | None) -> Lease:
        owner = w.owner
        # Semaphore permits are not owned, so a wait on one is never hopeless: skip the wait-for graph.
        graph = self._owned
        try:
            if graph:
                deadlock.enter_wait(owner, self, w)
        except BaseException:
            self._abandon_wait(w)
            raise
        try:
            deadline = None if timeout is None else _monotonic() + timeout
            if not w.peers <= self._watched:
                self._watch(w.peers)
            wid = w.wid
            if type(ws) is SemSlot:
                # The futex path in Python, inlined: the woken thread reads its grant straight from its mailbox
                # slot (no slice, no extra call): this runs right after a sleep, from cold caches.
                sem_acquire = ws.sem.acquire
                mbox = ws.mbox
                off = ws.off
                # This waiter does not take the C twin's head-of-queue pokes (a poke would cost it a
                # look at the state): tell releasers not to send them to this slot.
                mbox[off + BOX_SPINS] = 0
                while True:
                    if deadline is None:
                        got = sem_acquire()  # sleeps in the kernel (futex) until posted
                    else:
                        left = deadline - _monotonic()
                        got = sem_acquire(True, left) if left > 0 else False
                    if got:
                        # The waiter id first: it is written last (Waker.wake), so if it is ours the
                        # grant behind it is complete even if a stale post woke us during the write.
                        if _ID_UNPACK_FROM(mbox, off)[0] == wid:
                            token, permits, mode = _BODY_UNPACK_FROM(mbox, off + 8)
                            # The mailbox holds this wait's grant (its unique id): no second look at
                            # the state, no lock. Only this process can release it from here on.
                            w.done = True
                            granted = _new_lease(Lease)
                            granted._channel = self
                            granted.token = token
                            granted.permits = permits
                            granted.owner = owner
                            granted._site = w.site
                            granted.mode = w.mode
                            granted.acquired_at = at = _monotonic()
                            if mode & PREV_DIED:
                                granted.previous_owner_died = True
                            self._local[token] = (owner, permits, w.mode, at)
                            return granted
                    elif _monotonic() < deadline:  # type: ignore[operator]
                        continue
                    else:
                        lease = self._cancel(w)
                        if lease is None:
                            raise AcquireTimeout(
                                f"timed out after {timeout}s waiting for {w.permits} permit(s) of "
                                f"{self.describe()}", name=self.name, permits=w.permits, timeout=timeout,
                            )
                        return lease
                    # A refresh, or a stale post of an earlier wait on this slot: look at the state.
                    lease = self._take_grant(w)
                    if lease is not None:
                        return lease
                    self.rewatch()
            wait = ws.wait
            while True:
                data: bytes | None
                if deadline is None:
                    data = wait(None)  # sleeps in the kernel on a socket of this thread
                else:
                    left = deadline - _monotonic()
                    data = wait(left) if left > 0 else None
                    if data is None:
                        if _monotonic() < deadline:
                            continue
                        lease = self._cancel(w)
                        if lease is None:
                            raise AcquireTimeout(
                                f"timed out after {timeout}s waiting for {w.permits} permit(s) of "
                                f"{self.describe()}", name=self.name, permits=w.permits, timeout=timeout,
                            )
                        return lease
                if len(data) == _GRANT_SIZE:
                    wid, token, permits, mode = _GRANT_UNPACK(data)
                    if wid == w.wid:
                        # The datagram is the grant (it names this wait's unique id): no second look at
                        # the state, no lock. Only this process can release it from here on.
                        w.done = True
                        lease = _new_lease(Lease)
                        lease._channel = self
                        lease.token = token
                        lease.permits = permits
                        lease.owner = w.owner
                        lease._site = w.site
                        lease.mode = w.mode
                        lease.acquired_at = at = _monotonic()
                        if mode & PREV_DIED:
                            lease.previous_owner_died = True
                        self._local[token] = (w.owner, permits, w.mode, at)
                        return lease
                # Anything else (a refresh, a stale wake-up of an earlier wait on this slot) means: look
                # at the state, in case a grant's datagram was lost; then watch any new holder.
                lease = self._take_grant(w)
                if lease is not None:
                    return lease
                self.rewatch()
        except BaseException:
            if not w.done:
                self._abandon_wait(w)
            raise
        finally:
            self._waits.pop(w.wid, None)
            if graph:
                deadlock.leave_wait(owner)

    async def _wait_task(self, w: Wait, hub: LoopHub, timeout: float | None,
                         loop: asyncio.AbstractEventLoop) -> Lease:
        owner = w.owner
        graph = self._owned
        try:
            if graph:
                deadlock.enter_wait(owner, self, w)
        except BaseException:
            self._abandon_wait(w)
            raise
        timer = None
        hub.add(w)
        try:
            self._watch(w.peers)
            if timeout is not None:
                timer = loop.call_later(timeout, hub.expire, w)
            while True:
                if w.grant is None and not w.timed_out:
                    w.fut = loop.create_future()
                    await w.fut
                if w.grant is not None:
                    lease = self._take_grant(w, w.grant)
                    assert lease is not None
                    return lease
                if w.timed_out:
                    lease = self._cancel(w)
                    if lease is None:
                        raise AcquireTimeout(
                            f"timed out after {timeout}s waiting for {w.permits} permit(s) of "
                            f"{self.describe()}", name=self.name, permits=w.permits, timeout=timeout,
                        )
                    return lease
        except BaseException:
            if not w.done:
                self._abandon_wait(w)
            raise
        finally:
            hub.remove(w)
            self._waits.pop(w.wid, None)
            if graph:
                deadlock.leave_wait(owner)
            if timer is not None:
                timer.cancel()

    # -- death of other processes -----------------------------------------------------------------------
    def _watch(self, peers: set[int]) -> None:
        # Process ids are never reused, so a peer once registered for this channel stays registered
        # until it dies (then the watcher reclaims it here and it can never reappear in the state).
        if not peers or peers <= self._watched:
            return
        self._watched |= peers
        dead = self.backend.watcher().watch(self, peers)
        if dead:
            self.reclaim_dead(dead)
            self.backend.forget_dead(dead)

    def rewatch(self) -> None:
        with self._mutex:
            sf = self._state()
            sf.lock()
            try:
                peers = sf.peers_locked()[0]
            finally:
                sf.unlock()
            peers.discard(self._proc)
        self._watch(peers)

    def _refresh_waiters(self) -> None:
        """After a barging grant: wake every waiter, so that each registers the new holder."""
        with self._mutex:
            sf = self._state()
            sf.lock()
            try:
                self._send(sf.waiter_wakes_locked())
            finally:
                sf.unlock()

    def reclaim_dead(self, dead: set[int]) -> int:
        """Remove every record of processes proved dead; their permits go to the next waiters."""
        with self._mutex:
            sf = self._state()
            sf.lock()
            try:
                removed, wakes = sf.reclaim_locked(dead, _monotonic())
                self._send(wakes)
            finally:
                sf.unlock()
            # A peer died: let this process's waiters look at the state once. (Should a grant's
            # delivery have been lost with a dying releaser, they find it; otherwise it costs one look.)
            local = [(self._proc, w.sock) for w in list(self._waits.values()) if not w.done]
        for proc, n in local:
            self.backend.waker.wake(proc, n, REFRESH)
        return removed

    def _reclaim_provably_dead(self) -> bool:
        with self._mutex:
            sf = self._state()
            sf.lock()
            try:
                peers = sf.peers_locked()[0]
            finally:
                sf.unlock()
            peers.discard(self._proc)
        dead = self.backend.dead_among(peers)
        if not dead:
            return False
        self.reclaim_dead(dead)
        self.backend.forget_dead(dead)
        return True

    def reclaim_owner(self, owner: Any) -> None:
        """A thread of this process ended: return the owned grants (locks, RW locks) it still holds."""
        if not self._owned:
            return
        with self._mutex:
            # A snapshot (see the class docstring): over the live view the comprehension can yield the
            # GIL to a C wait adding its grant, "dictionary changed size during iteration" (seen in CI).
            toks = [t for t, rec in list(self._local.items()) if rec[0] is owner]
            if not toks or self._sf is None:
                return
            for t in toks:
                del self._local[t]
            sf = self._sf
            sf.lock()
            try:
                _, wakes = sf.reclaim_locked(set(), _monotonic(), self._proc, toks)
                self._send(wakes)
            finally:
                sf.unlock()

    # -- release -------------------------------------------------------------------------------------
    def _release_locked(self, lease: Lease, permits: int, abandoned: bool, blocking: bool) -> list[Wake] | None:
        """Caller holds _mutex. Returns the wakes, or None if the file lock was not free (non-blocking)."""
        token = lease.token
        rec = self._local.get(token)
        if rec is None:
            return []  # not held by this process any more (released, reclaimed, or a forked copy)
        sf = self._sf
        assert sf is not None
        if blocking:
            sf.lock()
        elif not sf.try_lock():
            return None
        try:
            _, wakes = sf.release_locked(token, self._proc, permits, abandoned, _monotonic())
            self._send(wakes)
        finally:
            sf.unlock()
        if permits < rec[1]:
            self._local[token] = (rec[0], rec[1] - permits, rec[2], rec[3])
        else:
            del self._local[token]
        return wakes

    def release(self, lease: Lease, permits: int, abandoned: bool = False) -> None:
        mutex = self._mutex
        token = lease.token
        mutex.acquire()
        try:
            rec = self._local.pop(token, None)
            if rec is None:
                return  # not held by this process any more (released, reclaimed, or a forked copy)
            if permits < rec[1]:  # a partial release keeps the rest
                self._local[token] = (rec[0], rec[1] - permits, rec[2], rec[3])
            sf = self._sf
            assert sf is not None
            c_release = self._c_release
            # The C twin: True/False = done (unlocked); a list = grants left to deliver, None = not
            # handled (both with the file lock held). (Few lines here: a releaser's lines before its
            # wake-up post are handoff latency.)
            r = (c_release(sf.m, sf.fd, token, self._proc, permits, abandoned, None, self._posts, self._prime)
                 if c_release is not None else None)
            if r is not True and (r is None or r.__class__ is list):
                fd = sf.fd
                if c_release is None:
                    _flock(fd, _LOCK_EX)
                try:
                    if r is None:
                        # A handoff commits the grants, then delivers them through _deliver before
                        # returning (still under the file lock, see _send); other paths return the
                        # wakes to send.
                        r = sf.release_locked(token, self._proc, permits, abandoned, None, False, True,
                                              self._deliver)[1]
                    if r:
                        self._send(r)
                finally:
                    _flock(fd, _LOCK_UN)
        finally:
            mutex.release()
        if lease._death_cb is not None:
            untrack_task_death(lease)

    def try_release_abandoned(self, lease: Lease) -> bool:
        # Called from finalizers: never wait, neither for the mutex (this thread might hold it) nor for
        # the file lock (another process might hold it).
        if not self._mutex.acquire(False):
            return False
        try:
            wakes = self._release_locked(lease, lease.permits, True, False)
        finally:
            self._mutex.release()
        return wakes is not None

    def is_current(self, lease: Lease) -> bool:
        return lease.token in self._local

    def downgrade(self, lease: Lease) -> None:
        with self._mutex:
            rec = self._local.get(lease.token)
            if rec is None:
                lease.ensure_held()
                return
            sf = self._state()
            sf.lock()
            try:
                _, wakes = sf.downgrade_locked(lease.token, self._proc, _monotonic())
                self._send(wakes)
            finally:
                sf.unlock()
            self._local[lease.token] = (rec[0], 1, "shared", rec[3])
            lease.permits = 1
            lease.mode = "shared"

    def forget(self, lease: Lease) -> None:
        with self._mutex:
            rec = self._local.pop(lease.token, None)
            if rec is None:
                return
            sf = self._state()
            sf.lock()
            try:
                _, wakes = sf.release_locked(lease.token, self._proc, None, False, _monotonic(), forget=True,
                                             bounded=self.bounded)
                self._send(wakes)
            finally:
                sf.unlock()
        if lease._death_cb is not None:
            untrack_task_death(lease)

    def signal(self, permits: int) -> None:
        if self.bounded:
            raise OverRelease(
                f"{self.describe()} is bounded: release() without holding a permit would exceed its "
                f"capacity {self._capacity}; release the Lease from acquire(), or create the semaphore "
                "with bounded=False for signalling", name=self.name, capacity=self._capacity,
            )
        with self._mutex:
            sf = self._state()
            sf.lock()
            try:
                self._send(sf.signal_locked(permits, _monotonic()))
            finally:
                sf.unlock()

    # -- inspection ----------------------------------------------------------------------------------
    def statistics(self) -> Statistics:
        with self._mutex:
            sf = self._state()
            sf.lock()
            try:
                snap = sf.snapshot_locked()
            finally:
                sf.unlock()
        return self.backend.statistics_of(snap, sf.path)

    def local_holder_owners(self) -> list[Any]:
        return [rec[0] for rec in list(self._local.values())]

    def has_remote_holders(self) -> bool:
        with self._mutex:
            sf = self._state()
            sf.lock()
            try:
                procs = sf.holder_procs_locked()
            finally:
                sf.unlock()
            return any(p != self._proc for p in procs)

    def locked(self) -> bool:
        with self._mutex:
            sf = self._state()
            sf.lock()
            try:
                _, avail, _, _, _, nw, _, _ = sf.read_locked()
            finally:
                sf.unlock()
        return avail < 1 or nw > 0

    # -- fork ----------------------------------------------------------------------------------------
    def after_fork_in_child(self) -> set[int]:
        """The child is another process: it holds none of the parent's grants and has none of its
        waiters. Returns the tokens this process held (their Lease copies are marked lost by the backend);
        the state file is reopened on next use (the inherited descriptor shares the parent's flock, so
        it must never be used, nor unlocked)."""
        self._mutex = _thread.allocate_lock()
        sf, self._sf = self._sf, None
        self._proc = 0
        self._label_cache = (None, b"")
        self._watched = set()
        if sf is not None:
            try:
                sf.close()
            except OSError:
                pass
        self._waits = {}
        local, self._local = self._local, {}
        self._r_lease = None
        self._r_depth = 0
        return set(local)

    @staticmethod
    def mark_forked_leases_lost(held: dict[FileChannel, set[int]]) -> None:
        """The parent held grants when it forked: mark the child's copies of those Leases lost (without
        running callbacks in the fork handler). One scan of the heap, only in that rare case."""
        import gc

        for obj in gc.get_objects():
            if type(obj) is Lease and obj._state == 0:
                tokens = held.get(obj._channel)  # type: ignore[call-overload]
                if tokens is not None and obj.token in tokens:
                    obj._state = 2  # LOST
                    obj._lost_reason = "the process forked: the child does not hold its parent's grants"
                    obj._lost_callbacks = None
                    obj.backend_data = None

