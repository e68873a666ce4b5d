"""``file://`` backend object: one directory, shared by the processes that name it."""

from __future__ import annotations

import asyncio
import atexit
import fcntl
import itertools
import os
import socket
import sys
import threading
import time
import weakref
from typing import Any

from ..._errors import BackendError
from ..._spi import Backend, HolderInfo, Statistics, WaiterInfo
from ..._validate import check_name
from . import _channel
from ._channel import FileChannel, Wait, handoff_yield_from_env, spin_limit_from_env
from ._paths import NAMES, O_CLOEXEC, O_NOFOLLOW, PROCS, name_file, open_base, open_subdir, parse_url
from ._proc import (
    MBOX_SLOTS,
    Addresser,
    ProcessRecord,
    SemSlot,
    Waker,
    WakeSocket,
    probe_alive,
    read_info,
    remove_files,
    sweep,
)
from ._state import GRANT, MODE_NAMES, PREV_DIED, Snapshot, StateFile, decode_label, read_file
from ._watch import Watcher

_backends: weakref.WeakSet[FileBackend] = weakref.WeakSet()


class LoopHub:
    """The wake-up socket of one event loop: every task of that loop waiting on this backend sleeps on
    a future; the loop's reader callback drains the socket and resolves the futures of the waiters that
    were granted (one locked look per primitive involved)."""

    def __init__(self, backend: FileBackend, loop: asyncio.AbstractEventLoop) -> None:
        self.backend = backend
        self.sock = backend.new_socket()
        self.waiters: dict[int, Wait] = {}
        loop.add_reader(self.sock.fd, self._on_readable)

    def add(self, w: Wait) -> None:
        self.waiters[w.wid] = w

    def remove(self, w: Wait) -> None:
        self.waiters.pop(w.wid, None)

    @staticmethod
    def _resolve(w: Wait) -> None:
        fut = w.fut
        if fut is not None and not fut.done():
            fut.set_result(None)

    def expire(self, w: Wait) -> None:
        w.timed_out = True
        self._resolve(w)

    def _on_readable(self) -> None:
        recv = self.sock.sock.recv
        waiters = self.waiters
        n = 0
        look = False
        while True:
            try:
                data = recv(64, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                look = True
                break
            n += 1
            if len(data) == GRANT.size:
                wid, token, permits, mode = GRANT.unpack(data)
                w = waiters.get(wid)
                if w is not None and w.grant is None and not w.done:
                    w.grant = (token, permits, mode & 0x7F, bool(mode & PREV_DIED))
                    self._resolve(w)
                continue
            look = True  # a refresh or a stray datagram
        # A full queue may have refused a datagram (its sender retries from a helper thread), and a
        # refresh asks for a look: then read the state for every waiter of this loop.
        if look or n >= 8:
            self._look()

    def _look(self) -> None:
        by_channel: dict[FileChannel, list[Wait]] = {}
        for w in self.waiters.values():
            if w.grant is None and not w.done:
                by_channel.setdefault(w.ch, []).append(w)
        for ch, waits in by_channel.items():
            try:
                got = ch.grants_for(waits)
            except Exception:  # the loop must survive; the waiters re-check when woken next
                continue
            for w in waits:
                g = got.get(w.wid)
                if g is not None:
                    w.grant = g
                    self._resolve(w)
            if not got:
                ch.rewatch()  # not a grant: a barging holder to watch, or a stray datagram

    def close(self) -> None:
        self.backend.drop_socket(self.sock)


def _close_hub(backend_ref: weakref.ref[FileBackend], sock: WakeSocket) -> None:
    backend = backend_ref()
    if backend is not None:
        backend.drop_socket(sock)
    else:
        sock.close()


class FileBackend(Backend):
    """Primitives shared by the processes of one host through a directory (``file:///path``, or
    ``file://`` for ``/tmp/interlock-<uid>``).

    Recovery: a process's permits return when the kernel releases its locks, i.e. at its death (SIGKILL
    included): the waiters' watcher threads are woken by the kernel and hand the permits to the next
    waiters in FIFO order. A thread or task that ends while holding a lock returns it as in
    ``memory://``. Fencing tokens strictly increase per name, across processes and restarts (the counter
    is in the state file, and starts at the wall-clock time in microseconds). See docs/file-backend.md.
    """

    schemes = ("file",)

    def __init__(self, url: str) -> None:
        path = parse_url(url)  # raises before any I/O
        spin = spin_limit_from_env()
        handoff_yield = handoff_yield_from_env()
        if _channel._native is not None:  # (process-wide settings, like the variables)
            if spin is not None:
                _channel._native.configure_spin(spin)
            if handoff_yield is not None:
                _channel._native.configure_yield(handoff_yield)
        super().__init__(url)
        self._lock = threading.Lock()
        self._base_fd, self.path = open_base(path)
        try:
            # systemd-tmpfiles skips directories that are flock'ed: keep ours from being aged away
            # while this process uses it.
            fcntl.flock(self._base_fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            pass
        mode = 0o700 if path is None else 0o777
        try:
            self._names_fd = open_subdir(self._base_fd, NAMES, mode, self.path)
            self._procs_fd = open_subdir(self._base_fd, PROCS, mode, self.path)
            self._addresser = Addresser(self._procs_fd, os.path.join(self.path, PROCS))
        except BaseException:
            os.close(self._base_fd)
            raise
        self.waker = Waker(self._addresser)
        self._proc: ProcessRecord | None = None
        self._channels: weakref.WeakValueDictionary[str, FileChannel] = weakref.WeakValueDictionary()
        self._pool: list[SemSlot | WakeSocket] = []
        self._sock_numbers = itertools.count(1)
        self._slot_numbers = itertools.count(0)
        self._watcher: Watcher | None = None
        self._hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopHub] = weakref.WeakKeyDictionary()
        self._infos: dict[int, dict[str, Any]] = {}
        _backends.add(self)

    # -- identity --------------------------------------------------------------------------------------
    def proc_id(self) -> int:
        """This process's id in the directory (registering it on first use)."""
        p = self._proc
        if p is None:
            with self._lock:
                p = self._proc
                if p is None:
                    p = self._proc = ProcessRecord(self._procs_fd)
                    sweep(self._procs_fd, p.id)
                    _exit_hook_for_multiprocessing(p.id)
        return p.id

    def sweep(self) -> None:
        """Remove the files (and named semaphores) of every process of this directory that is provably
        dead. Runs by itself when a process joins the directory; call it before deleting a directory
        that short-lived processes used, so that nothing of theirs is left in /dev/shm."""
        p = self._proc
        sweep(self._procs_fd, p.id if p is not None else 0, limit=1 << 30)

    def dead_among(self, procs: set[int]) -> set[int]:
        return {p for p in procs if not probe_alive(self._procs_fd, p)}

    def forget_dead(self, procs: set[int]) -> None:
        for p in procs:
            remove_files(self._procs_fd, p)
            self._infos.pop(p, None)

    def watcher(self) -> Watcher:
        w = self._watcher
        if w is None:
            with self._lock:
                w = self._watcher
                if w is None:
                    w = self._watcher = Watcher(self._procs_fd)
        return w

    # -- wake-up sockets ---------------------------------------------------------------------------------
    def new_socket(self) -> WakeSocket:
        return WakeSocket(self._addresser, self.proc_id(), next(self._sock_numbers))

    def take_slot(self) -> SemSlot | WakeSocket:
        """A wake-up slot for one waiting thread: a futex (named semaphore) where available, else a
        socket. Pooled: their number is the number of threads that wait at the same time.

        Called before the wait is queued (nobody can post to it for this wait yet), so stale posts of
        earlier waits are drained here rather than after a wake-up, where time counts."""
        try:
            ws = self._pool.pop()
        except IndexError:
            pass
        else:
            if type(ws) is SemSlot:
                ws.drain()  # a stale datagram on a socket only costs the next waiter one look
            return ws
        proc = self._proc
        if proc is None:
            self.proc_id()
            proc = self._proc
            assert proc is not None
        if proc.mbox is not None:
            index = next(self._slot_numbers)
            if index < MBOX_SLOTS:
                return SemSlot(proc, index)
        return self.new_socket()

    def give_slot(self, ws: SemSlot | WakeSocket) -> None:
        self._pool.append(ws)

    def drop_socket(self, ws: WakeSocket) -> None:
        ws.close()
        proc = self._proc
        if proc is not None:
            try:
                os.unlink(self._addresser.name(proc.id, ws.n), dir_fd=self._procs_fd)
            except OSError:
                pass

    def hub(self, loop: asyncio.AbstractEventLoop) -> LoopHub:
        hub = self._hubs.get(loop)
        if hub is None:
            hub = self._hubs[loop] = LoopHub(self, loop)
            weakref.finalize(loop, _close_hub, weakref.ref(self), hub.sock)
        return hub

    # -- channels ------------------------------------------------------------------------------------
    def open_state(self, name: str) -> StateFile:
        fn = name_file(name)
        try:
            fd = os.open(fn, os.O_RDWR | os.O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0o666, dir_fd=self._names_fd)
        except OSError as exc:
            raise BackendError(
                f"cannot open the state file of {name!r} in {self.path}/{NAMES}: {exc.strerror} "
                "(a symlink planted there is refused, not followed)", name=name, path=self.path,
            ) from None
        try:
            import stat

            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise BackendError(f"{self.path}/{NAMES}/{fn} is not a regular file; refusing it", name=name)
        except BaseException:
            os.close(fd)
            raise
        return StateFile(fd, f"{self.path}/{NAMES}/{fn}")

    def channel(self, name: str, kind: str, capacity: int, bounded: bool) -> FileChannel:
        with self._lock:
            ch = self._channels.get(name)
            if ch is None:
                ch = FileChannel(self, name, kind, capacity, bounded)
                self._channels[name] = ch
            else:
                ch.check_compatible(kind, capacity, bounded)
            return ch

    def owner_ended(self, owner: Any) -> None:
        with self._lock:
            chans = list(self._channels.values())
        for ch in chans:
            ch.reclaim_owner(owner)

    # -- inspection ----------------------------------------------------------------------------------
    def _info(self, proc: int) -> dict[str, Any]:
        info = self._infos.get(proc)
        if info is None:
            info = read_info(self._procs_fd, proc) or {}
            if info:
                if len(self._infos) > 1024:
                    self._infos.clear()
                self._infos[proc] = info
        return info

    def statistics_of(self, snap: Snapshot, path: str) -> Statistics:
        now = time.monotonic()
        procs = {r.proc for r in snap.holders} | {r.proc for r in snap.waiters}
        infos = {p: self._info(p) for p in procs}
        mine = self._proc.id if self._proc is not None else 0
        gone = {p for p in procs if p != mine and not probe_alive(self._procs_fd, p)}

        def who(proc: int, label: bytes) -> str:
            text = decode_label(label)
            return f"{text} [process gone; reclaimed at the next acquire]" if proc in gone else text

        holders = tuple(
            HolderInfo(
                owner=who(r.proc, r.label), permits=r.permits, token=r.key, mode=MODE_NAMES.get(r.mode & 0x7F, "?"),
                held_for=max(0.0, now - r.since), pid=infos[r.proc].get("pid"), host=infos[r.proc].get("host"),
                command=infos[r.proc].get("command"),
            )
            for r in snap.holders
        )
        waiters = tuple(
            WaiterInfo(
                owner=who(r.proc, r.label), permits=r.permits, mode=MODE_NAMES.get(r.mode & 0x7F, "?"),
                waiting_for=max(0.0, now - r.since), pid=infos[r.proc].get("pid"), host=infos[r.proc].get("host"),
                command=infos[r.proc].get("command"),
            )
            for r in snap.waiters
        )
        extra: dict[str, Any] = {"file": path}
        if any(r.mode & PREV_DIED for r in snap.holders):
            extra["previous_owner_died"] = True
        return Statistics(
            name=snap.name, kind=snap.kind, capacity=snap.capacity, available=snap.available, holders=holders,
            waiters=waiters, bounded=snap.bounded, last_token=snap.last_token, backend=self.display_url,
            extra=extra,
        )

    def status(self, name: str | None = None) -> list[Statistics]:
        if name is not None:
            files = [name_file(check_name(name))]
        else:
            try:
                files = sorted(n for n in os.listdir(self._names_fd) if n.endswith(".state"))
            except OSError as exc:
                raise BackendError(f"cannot list {self.path}/{NAMES}: {exc.strerror}", path=self.path) from None
        out = []
        for fn in files:
            snap = read_file(self._names_fd, fn)
            if snap is not None and (name is None or snap.name == name):
                out.append(self.statistics_of(snap, f"{self.path}/{NAMES}/{fn}"))
        out.sort(key=lambda s: s.name)
        return out

    # -- lifecycle -------------------------------------------------------------------------------------
    def after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.close_inherited()
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.close_inherited()
        pool, self._pool = self._pool, []
        for ws in pool:
            ws.close()  # the parent's slots: close our copies, never unlink the parent's names
        hubs = list(self._hubs.values())
        self._hubs = weakref.WeakKeyDictionary()
        for hub in hubs:
            hub.sock.close()
        self._infos = {}
        self.waker.after_fork_in_child()
        held = {}
        for ch in list(self._channels.values()):
            tokens = ch.after_fork_in_child()
            if tokens:
                held[ch] = tokens
        if held:
            FileChannel.mark_forked_leases_lost(held)

    def close(self) -> None:
        """Close sockets and idle resources of this process (held grants are not released)."""
        with self._lock:
            pool, self._pool = self._pool, []
        for ws in pool:
            if isinstance(ws, WakeSocket):
                self.drop_socket(ws)
            else:
                ws.close()


def _at_exit() -> None:
    # Named semaphores live outside the directory (/dev/shm): remove this process's at exit. (Its other
    # files stay: holders may still run in daemon threads; the next sweep proves the death and removes
    # them. A process that dies without exiting gets its semaphores removed by that sweep too.)
    from ._proc import unlink_semaphores

    for b in list(_backends):
        p = b._proc
        if p is not None:
            unlink_semaphores(p.id)


atexit.register(_at_exit)


def _exit_hook_for_multiprocessing(proc: int) -> None:
    """multiprocessing's children leave through os._exit (no atexit) but run its finalizers first."""
    util = sys.modules.get("multiprocessing.util")
    if util is not None:
        from ._proc import unlink_semaphores

        try:
            util.Finalize(None, unlink_semaphores, args=(proc,), exitpriority=0)
        except Exception:
            pass


def _after_fork_in_child() -> None:
    for b in list(_backends):
        b.after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
