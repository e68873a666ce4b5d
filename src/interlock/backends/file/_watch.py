"""Push notification of peer deaths: one thread per backend directory per process, started on demand.

Waiters of this process tell the watcher which processes appear in the state they wait on (holders and
waiters ahead of them). For each such peer the watcher opens the peer's FIFO for reading and blocks in
``poll()``; the kernel reports ``POLLHUP`` when the peer's last write end closes, i.e. when it dies
(SIGKILL included). The watcher then proves the death (the peer's ``.live`` flock is free), removes the
peer's records from every state file concerned, which grants the freed permits to the next waiters in
FIFO order and wakes them, and deletes the peer's files. Nothing polls on a timer: an idle watcher
sleeps in the kernel.

In a fair queue the set of processes a waiter depends on only shrinks while it waits (grants go to
waiters ahead of it), so registering once per wait suffices; a barging grant (``fair=False``) wakes the
waiters so they register the new holder.

Fallback: if a FIFO hangs up while its process is provably alive (a process forked by C code that
closed its copy, say), the watcher stops trusting the FIFO and parks one helper thread in a blocking
``flock`` on that peer's ``.live`` file instead: still no polling.
"""

from __future__ import annotations

import os
import select
import signal
import threading
import weakref
from typing import TYPE_CHECKING

from ._paths import O_CLOEXEC, O_NOFOLLOW, O_NONBLOCK
from ._proc import locked_by_other, proc_hex, remove_files

if TYPE_CHECKING:
    from ._channel import FileChannel

_ASYNC_SIGNALS = {
    getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGCHLD",
                                 "SIGALRM", "SIGWINCH", "SIGPIPE", "SIGTSTP", "SIGCONT", "SIGTTIN", "SIGTTOU")
    if hasattr(signal, n)
}


def block_async_signals() -> None:
    """Helper threads must not take process-directed signals: the kernel would deliver them here, and
    the main thread, blocked in a system call, would not be interrupted (Python runs handlers there)."""
    if hasattr(signal, "pthread_sigmask"):
        try:
            signal.pthread_sigmask(signal.SIG_BLOCK, _ASYNC_SIGNALS)
        except (OSError, ValueError):
            pass


class _Peer:
    __slots__ = ("channels", "fifo_fd", "live_fd")

    def __init__(self, fifo_fd: int, live_fd: int) -> None:
        self.fifo_fd = fifo_fd
        self.live_fd = live_fd
        self.channels: weakref.WeakSet[FileChannel] = weakref.WeakSet()


class Watcher:
    """See the module docstring. ``watch`` is called by waiters; everything else runs in the thread."""

    def __init__(self, procs_fd: int) -> None:
        self.procs_fd = procs_fd
        self._mutex = threading.Lock()
        # Invariant: every peer in _peers has open fifo/live fds; only the watcher thread closes them
        # (after dropping the peer), so poll() never sees a recycled fd number.
        self._peers: dict[int, _Peer] = {}
        self._closing: list[int] = []
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        self._rfd, self._wfd = r, w
        self._thread: threading.Thread | None = None
        self._stopped = False

    def watch(self, channel: FileChannel, peers: set[int]) -> set[int]:
        """Watch ``peers`` on behalf of ``channel``; returns those already provably dead (the caller
        reclaims them)."""
        dead: set[int] = set()
        added = False
        with self._mutex:
            for p in peers:
                peer = self._peers.get(p)
                if peer is not None:
                    peer.channels.add(channel)
                    continue
                opened = self._open_peer(p)
                if opened is None:
                    dead.add(p)
                    continue
                opened.channels.add(channel)
                self._peers[p] = opened
                added = True
            if added:
                self._ensure_thread()
                self._poke()
        return dead

    def _open_peer(self, p: int) -> _Peer | None:
        h = proc_hex(p)
        fd_fifo = fd_live = -1
        try:
            # FIFO first: if the peer dies after the liveness check below, the hang-up is reported to
            # this reader (it opened while a writer existed).
            fd_fifo = os.open(f"{h}.fifo", os.O_RDONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC,
                              dir_fd=self.procs_fd)
            fd_live = os.open(f"{h}.live", os.O_RDONLY | O_NOFOLLOW | O_CLOEXEC, dir_fd=self.procs_fd)
        except FileNotFoundError:
            for fd in (fd_fifo, fd_live):
                if fd >= 0:
                    os.close(fd)
            return None  # ids are never reused: no file means the process is gone
        except OSError:
            for fd in (fd_fifo, fd_live):
                if fd >= 0:
                    os.close(fd)
            return _Peer(-1, -1)  # cannot watch it; never declare it dead on doubt
        if not locked_by_other(fd_live):
            os.close(fd_fifo)
            os.close(fd_live)
            return None
        return _Peer(fd_fifo, fd_live)

    def _poke(self) -> None:
        try:
            os.write(self._wfd, b"x")
        except OSError:
            pass  # the pipe is full: the thread will look anyway

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="interlock-file-watcher", daemon=True)
            self._thread.start()

    # -- the thread ----------------------------------------------------------------------------------
    def _run(self) -> None:
        block_async_signals()
        poller = select.poll()
        poller.register(self._rfd, select.POLLIN)
        registered: dict[int, int] = {}  # fd -> peer
        while True:
            with self._mutex:
                if self._stopped:
                    return
                want = {peer.fifo_fd: p for p, peer in self._peers.items() if peer.fifo_fd >= 0}
            for fd in [fd for fd in registered if fd not in want or want[fd] != registered[fd]]:
                poller.unregister(fd)
                del registered[fd]
            for fd, p in want.items():
                if fd not in registered:
                    poller.register(fd, select.POLLIN)
                    registered[fd] = p
            self._close_dropped()
            try:
                events = poller.poll()
            except InterruptedError:
                continue
            hung: list[tuple[int, int]] = []
            for fd, ev in events:
                if fd == self._rfd:
                    try:
                        while os.read(self._rfd, 512):
                            pass
                    except OSError:
                        pass
                    continue
                peer_id = registered.get(fd)
                if peer_id is None:
                    continue
                if ev & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
                    hung.append((fd, peer_id))
                elif ev & select.POLLIN:
                    try:  # nobody writes to these FIFOs; drain junk so poll does not spin
                        os.read(fd, 4096)
                    except OSError:
                        pass
            for fd, p in hung:
                poller.unregister(fd)
                del registered[fd]
                self._peer_hung_up(p)

    def _peer_hung_up(self, p: int) -> None:
        with self._mutex:
            peer = self._peers.get(p)
        if peer is None:
            return
        if locked_by_other(peer.live_fd):
            # Alive although its FIFO hung up: stop polling the FIFO (it stays in _peers, so waiters
            # keep adding their channels to it) and park a thread in a blocking flock on its .live file.
            os.close(peer.fifo_fd)  # already unregistered from poll(): safe to close here
            with self._mutex:
                peer.fifo_fd = -1
            threading.Thread(target=self._flock_wait, args=(p, peer), name="interlock-file-watcher-flock",
                             daemon=True).start()
            return
        self._reclaim(p, peer)

    def _flock_wait(self, p: int, peer: _Peer) -> None:
        import fcntl

        block_async_signals()
        try:
            fcntl.flock(peer.live_fd, fcntl.LOCK_SH)  # returns when the peer's lock is gone: it died
        except OSError:
            return
        self._reclaim(p, peer)
        self._poke()  # let the watcher thread close the fds

    def _reclaim(self, p: int, peer: _Peer) -> None:
        # Drop the peer first: a waiter that registers it from now on opens it afresh, finds it dead
        # and reclaims by itself, so no channel can slip between this snapshot and the reclaim.
        with self._mutex:
            if self._peers.get(p) is peer:
                del self._peers[p]
            chans = list(peer.channels)
        for ch in chans:
            try:
                ch.reclaim_dead({p})
            except Exception:  # a closed channel, a vanished file: the others still need their permits
                pass
        remove_files(self.procs_fd, p)
        with self._mutex:
            self._closing.extend(fd for fd in (peer.fifo_fd, peer.live_fd) if fd >= 0)

    def _close_dropped(self) -> None:
        with self._mutex:
            fds, self._closing = self._closing, []
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass

    # -- lifecycle -------------------------------------------------------------------------------------
    def close_inherited(self) -> None:
        """After fork, in the child: the thread does not exist there; close the fds, never unlock."""
        fds = [self._rfd, self._wfd]
        for peer in self._peers.values():
            fds += [peer.fifo_fd, peer.live_fd]
        fds += self._closing
        for fd in fds:
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._peers.clear()
        self._closing = []
        self._stopped = True
