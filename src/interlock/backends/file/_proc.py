"""A process's presence in a backend directory: proof of life, death notification, wake-up sockets.

* ``procs/<id>.live``: created under a temporary name, ``flock(LOCK_EX)``-ed, then renamed into place,
  and kept locked for the life of the process. The kernel drops the lock when the process dies (also on
  SIGKILL), so **a successful ``flock(LOCK_SH|LOCK_NB)`` by anyone else is proof of death**; a missing
  file is too (ids are 64 random bits, never reused). A PID is never trusted: PIDs are reused. The file
  also holds a JSON description (pid, host, command line) for ``interlock status``.
* ``procs/<id>.fifo``: a FIFO the process holds open read-write for its life. A watcher that opens it
  for reading gets ``POLLHUP`` when the last writer goes away, i.e. when the process dies: death is
  pushed to waiters, nobody polls. (Linux does not report the hang-up to a reader that opened the FIFO
  after the writer was already gone, so watchers check the ``.live`` lock right after opening.)
* Wake-ups. A waiting thread sleeps on a futex: a named POSIX semaphore ``/interlock-<id>-<n>`` (mode
  0600, created through the standard library's ``_multiprocessing.SemLock``, one per pooled thread
  slot), and the granter first writes the grant (waiter id, token, permits, mode) into slot ``n`` of the
  process's mailbox file ``procs/<id>.mbox``; ``sem_post``/``sem_wait`` order the two. An event loop
  (which needs a file descriptor) sleeps on a datagram socket ``procs/<id>-<n>.sock`` whose datagram
  carries the same grant. Where named semaphores are unavailable (not Linux), threads use sockets too.
  A waiter accepts a grant only if it names its own, never reused, waiter id; anything else (a stale or
  a "look again" wake-up) makes it re-read the state under the file lock.

The id is random, not the PID, so a forked child, which must get its own identity, never collides with
its parent.
"""

from __future__ import annotations

import fcntl
import json
import mmap
import os
import queue
import select
import shlex
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from ..._errors import BackendError
from ._paths import O_CLOEXEC, O_NOFOLLOW, O_NONBLOCK

_SemLock: Any = None
_sem_unlink: Any = None
_SEM_MAX = 0
try:  # named POSIX semaphores from the standard library (what multiprocessing uses to share them)
    import importlib

    _mp = importlib.import_module("_multiprocessing")
    _SemLock = _mp.SemLock
    _sem_unlink = _mp.sem_unlink
    _SEM_MAX = int(_SemLock.SEM_VALUE_MAX)
except (ImportError, AttributeError):  # pragma: no cover - platforms without sem_open
    _SemLock = None

SEM_FLAG = 0x80000000  # in a waiter record's socket field: a semaphore slot, not a socket
MBOX_SLOTS = 4096
MBOX_SLOT = 32
GRANT_LEN = 25  # struct GRANT in _state
# After the grant, a slot holds the head-of-queue hint of the C twin (see "spinning" in _fastfile.c):
BOX_POKE = 25  # set by a releaser whose handoff made this slot's waiter the head of its queue
BOX_SPINS = 26  # set while a C waiter (which takes pokes) uses the slot; cleared by a pure-Python waiter


def sem_name(proc: int, n: int) -> str:
    return f"/interlock-{proc_hex(proc)}-{n & ~SEM_FLAG}"


def _probe_semaphores() -> bool:
    """Named semaphores work here (Linux: sem_timedwait is a futex wait; elsewhere CPython may emulate
    timed waits by polling, so sockets are used instead)."""
    if _SemLock is None or not sys.platform.startswith("linux"):
        return False
    name = f"/interlock-probe-{os.getpid()}-{os.urandom(4).hex()}"
    try:
        a = _SemLock(1, 0, _SEM_MAX, name, 0)
        try:
            b = _SemLock._rebuild(0, 1, _SEM_MAX, name)
            b.release()
            ok = bool(a.acquire(True, 1.0))
            del b
        finally:
            _sem_unlink(name)
        del a
        return ok
    except Exception:
        return False


SEMAPHORES = _probe_semaphores()

_LOCK_EX = fcntl.LOCK_EX
_LOCK_SH = fcntl.LOCK_SH
_LOCK_NB = fcntl.LOCK_NB


def proc_hex(proc: int) -> str:
    return f"{proc:016x}"


def _command_line() -> str:
    from ..._registry import redact_url

    argv = list(getattr(sys, "orig_argv", None) or sys.argv)
    # A URL on the command line may carry a password: never store it.
    safe = [redact_url(a) if "://" in a else a for a in argv]
    text = shlex.join(safe)
    return text if len(text) <= 1000 else text[:997] + "..."


def describe_self() -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "uid": os.getuid(),
        "command": _command_line(),
        "started": time.time(),
    }


class ProcessRecord:
    """This process's files in ``procs/`` (see the module docstring)."""

    def __init__(self, procs_fd: int) -> None:
        self.procs_fd = procs_fd
        self.id = int.from_bytes(os.urandom(8), "little") | 1
        self.hex = proc_hex(self.id)
        self.live_fd = -1
        self.fifo_fd = -1
        self.mbox: mmap.mmap | None = None
        try:
            if SEMAPHORES:
                fd = os.open(f"{self.hex}.mbox", os.O_RDWR | os.O_CREAT | os.O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                             0o600, dir_fd=procs_fd)
                try:
                    os.ftruncate(fd, MBOX_SLOTS * MBOX_SLOT)
                    self.mbox = mmap.mmap(fd, MBOX_SLOTS * MBOX_SLOT)
                finally:
                    os.close(fd)
            fifo = f"{self.hex}.fifo"
            os.mkfifo(fifo, 0o600, dir_fd=procs_fd)
            self.fifo_fd = os.open(fifo, os.O_RDWR | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC, dir_fd=procs_fd)
            tmp = f"tmp-{self.hex}"
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600,
                         dir_fd=procs_fd)
            self.live_fd = fd
            fcntl.flock(fd, _LOCK_EX | _LOCK_NB)
            os.write(fd, json.dumps(describe_self()).encode())
            os.rename(tmp, f"{self.hex}.live", src_dir_fd=procs_fd, dst_dir_fd=procs_fd)
        except OSError as exc:
            self.close_inherited()
            raise BackendError(f"cannot register this process in the lock directory: {exc.strerror}") from None

    def close_inherited(self) -> None:
        """Close (never unlock: the lock belongs to the open file, shared with the parent) after fork."""
        for fd in (self.live_fd, self.fifo_fd):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.live_fd = self.fifo_fd = -1
        if self.mbox is not None:
            self.mbox.close()
            self.mbox = None


def probe_alive(procs_fd: int, proc: int) -> bool:
    """True unless ``proc`` is provably dead (its ``.live`` lock is free or its file is gone)."""
    try:
        fd = os.open(f"{proc_hex(proc)}.live", os.O_RDONLY | O_NOFOLLOW | O_CLOEXEC, dir_fd=procs_fd)
    except FileNotFoundError:
        return False
    except OSError:
        return True  # cannot tell: assume alive (never reclaim on doubt)
    try:
        return locked_by_other(fd)
    finally:
        os.close(fd)


def locked_by_other(live_fd: int) -> bool:
    try:
        fcntl.flock(live_fd, _LOCK_SH | _LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return True
    fcntl.flock(live_fd, fcntl.LOCK_UN)
    return False


def remove_files(procs_fd: int, proc: int) -> None:
    """Delete a dead process's files (only after proving its death)."""
    prefix = proc_hex(proc)
    try:
        names = os.listdir(procs_fd)
    except OSError:
        return
    for n in names:
        if n.startswith(prefix):
            try:
                os.unlink(n, dir_fd=procs_fd)
            except OSError:
                pass
    unlink_semaphores(proc)


def unlink_semaphores(proc: int) -> None:
    """Remove the named semaphores of a process (dead, or exiting): glibc keeps them in /dev/shm."""
    if _sem_unlink is None:
        return
    prefix = f"sem.interlock-{proc_hex(proc)}-"
    try:
        names = os.listdir("/dev/shm")
    except OSError:
        return
    for n in names:
        if n.startswith(prefix):
            try:
                _sem_unlink("/" + n[4:])
            except OSError:
                pass


def read_info(procs_fd: int, proc: int) -> dict[str, Any] | None:
    try:
        fd = os.open(f"{proc_hex(proc)}.live", os.O_RDONLY | O_NOFOLLOW | O_CLOEXEC, dir_fd=procs_fd)
    except OSError:
        return None
    try:
        data = os.pread(fd, 4096, 0)
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        info = json.loads(data.decode("utf-8", "replace"))
    except ValueError:
        return None
    return info if isinstance(info, dict) else None


def sweep(procs_fd: int, keep: int, limit: int = 256) -> None:
    """Remove the files of processes that died without cleaning up (kernel-proved)."""
    try:
        names = os.listdir(procs_fd)
    except OSError:
        return
    now = time.time()
    for n in names[: limit * 4]:
        if n.endswith(".live"):
            try:
                proc = int(n[:-5], 16)
            except ValueError:
                continue
            if proc != keep and not probe_alive(procs_fd, proc):
                remove_files(procs_fd, proc)
                limit -= 1
        elif n.startswith("tmp-"):
            # A registration that died between create and rename; leave young ones alone (the window
            # between O_EXCL create and flock).
            try:
                st = os.stat(n, dir_fd=procs_fd, follow_symlinks=False)
                fd = os.open(n, os.O_RDONLY | O_NOFOLLOW | O_CLOEXEC, dir_fd=procs_fd)
            except OSError:
                continue
            try:
                if now - st.st_mtime > 60 and not locked_by_other(fd):
                    os.unlink(n, dir_fd=procs_fd)
            except OSError:
                pass
            finally:
                os.close(fd)
        if limit <= 0:
            return


class Addresser:
    """Unix socket addresses of wake sockets in ``procs/``.

    On Linux the address goes through ``/proc/self/fd/<dirfd>/``, which keeps it short (sun_path holds
    108 bytes) whatever the directory's path; elsewhere the real path is used and must be short enough.
    """

    def __init__(self, procs_fd: int, procs_path: str) -> None:
        self.procs_fd = procs_fd
        via = f"/proc/self/fd/{procs_fd}"
        if os.path.isdir(via):
            self.prefix = via + "/"
        else:
            self.prefix = procs_path.rstrip("/") + "/"
            if len(self.prefix) + 40 > 104:
                raise BackendError(
                    f"the lock directory path {procs_path!r} is too long for Unix sockets on this system; "
                    "use a shorter file:// path", path=procs_path,
                )

    def name(self, proc: int, n: int) -> str:
        return f"{proc_hex(proc)}-{n}.sock"

    def addr(self, proc: int, n: int) -> str:
        return f"{self.prefix}{proc_hex(proc)}-{n}.sock"


class WakeSocket:
    """A bound datagram socket a waiter sleeps on: a thread blocks in ``recv()`` (or ``poll()`` with a
    timeout); an event loop watches it with ``add_reader`` and reads with ``MSG_DONTWAIT``."""

    __slots__ = ("fd", "n", "poller", "sock")

    def __init__(self, addresser: Addresser, proc: int, n: int) -> None:
        self.n = n
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            try:
                os.unlink(addresser.name(proc, n), dir_fd=addresser.procs_fd)
            except FileNotFoundError:
                pass
            self.sock.bind(addresser.addr(proc, n))
        except OSError as exc:
            self.sock.close()
            raise BackendError(f"cannot create a wake-up socket: {exc.strerror}") from None
        self.fd = self.sock.fileno()
        self.poller = select.poll()
        self.poller.register(self.fd, select.POLLIN)

    def wait(self, timeout: float | None) -> bytes | None:
        """Sleep until a datagram arrives: it (possibly empty), or None after ``timeout`` seconds."""
        if timeout is None:
            return self.sock.recv(64)  # blocks in the kernel (a blocking socket)
        if not self.poller.poll(int(timeout * 1000) + 1):
            return None
        try:
            return self.sock.recv(64, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return b""

    def close(self) -> None:
        self.sock.close()


class SemSlot:
    """A waiting thread's futex: a named semaphore plus slot ``index`` of this process's mailbox."""

    __slots__ = ("mbox", "n", "off", "sem")

    def __init__(self, record: ProcessRecord, index: int) -> None:
        assert _SemLock is not None and record.mbox is not None
        self.n = SEM_FLAG | index
        self.off = index * MBOX_SLOT
        self.mbox = record.mbox
        try:
            self.sem = _SemLock(1, 0, _SEM_MAX, sem_name(record.id, self.n), 0)
        except OSError as exc:
            raise BackendError(f"cannot create a wake-up semaphore: {exc.strerror}") from None

    def wait(self, timeout: float | None) -> bytes | None:
        """Sleep until posted: the mailbox slot's content, or None after ``timeout`` seconds."""
        if not self.sem.acquire(True, timeout):
            return None
        return self.mbox[self.off:self.off + GRANT_LEN]

    def drain(self) -> None:
        while self.sem.acquire(False):
            pass

    def close(self) -> None:
        self.sem = None  # sem_close when collected; the name is unlinked with the process's files


class Waker:
    """Sends wake-ups; one unbound socket per backend (``sendto`` is thread-safe).

    A receiver's queue holds only a few datagrams (``net.unix.max_dgram_qlen``). A send that finds it
    full is not dropped: it is handed to a helper thread that sends it blocking (the receiver drains its
    queue as soon as it runs). Receivers also re-read the state whenever a datagram is not a grant for
    them, so even a datagram that never arrives cannot strand a waiter whose queue had anything in it.
    """

    MAX_CONNECTED = 64

    def __init__(self, addresser: Addresser) -> None:
        self.addresser = addresser
        # One socket connected to each recent destination: sending on a connected socket skips the path
        # lookup, which costs more than the send itself when the caches are cold (a waiter that has
        # slept). Evicted sockets are not closed here (another thread may be sending on one): the
        # garbage collector closes them once unused.
        self._conns: dict[tuple[int, int], socket.socket] = {}
        self._sems: dict[tuple[int, int], Any] = {}
        # (process, semaphore slot) -> (mailbox, offset, bound sem_post, sem_t address): a handoff's
        # delivery is then one dict lookup, one 25-byte store and one futex wake (the hot path of every
        # contended grant). The C release calls sem_post on the address; the bound method keeps the
        # semaphore (and so the address) alive as long as the entry.
        self._posts: dict[tuple[int, int], tuple[mmap.mmap, int, Callable[[], Any], int]] = {}
        self._mboxes: dict[int, mmap.mmap] = {}
        self._deferred: queue.SimpleQueue[tuple[str, bytes]] | None = None

    def wake(self, proc: int, n: int, payload: bytes) -> None:
        """Deliver ``payload`` (a grant, or REFRESH) to wake slot ``n`` of process ``proc``. Never raises
        for a receiver that is gone."""
        if payload:
            t = self._posts.get((proc, n))
            if t is not None:
                self._deliver(t, payload)
                return
        if n & SEM_FLAG:
            self._post(proc, n, payload)
            return
        key = (proc, n)
        s = self._conns.get(key)
        if s is None:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            s.setblocking(False)
            try:
                s.connect(self.addresser.addr(proc, n))
            except OSError:
                # ECONNREFUSED/ENOENT: the waiter is gone. If its process died, whoever waits behind it
                # (or the next acquirer) proves the death and reclaims what it was given.
                s.close()
                return
            conns = self._conns
            if len(conns) >= self.MAX_CONNECTED:
                conns.pop(next(iter(conns)), None)
            conns[key] = s
        try:
            s.send(payload)
        except BlockingIOError:
            self._defer(self.addresser.addr(proc, n), payload)
        except OSError:
            self._conns.pop(key, None)  # the receiver closed: it is gone (see above)

    @staticmethod
    def _deliver(t: tuple[mmap.mmap, int, Callable[[], Any], int], payload: bytes) -> None:
        """Write a grant into a cached mailbox slot and post its semaphore."""
        mbox, off, post, _ = t
        # The grant first (sem_post orders it before the wake-up), its waiter id last: a thread woken
        # early by a stale post reads the id first, so it never takes a half-written grant.
        mbox[off + 8:off + GRANT_LEN] = payload[8:]
        mbox[off:off + 8] = payload[:8]
        try:
            post()
        except (OSError, ValueError):  # (ValueError: already posted to its maximum)
            pass

    def prime(self, proc: int, n: int) -> None:
        """Cache what a poke of semaphore slot ``n`` of process ``proc`` needs (its ``_posts`` entry),
        posting nothing. The C release calls this when it pokes a head of the queue it has never granted
        to (only deliveries fill the cache otherwise). Never raises for a waiter that is gone. A full
        cache is left alone: a poke is a hint, not worth evicting an entry a delivery will use (with
        more peers than the cache holds, priming would open files on every release)."""
        posts = self._posts
        if n & SEM_FLAG and (proc, n) not in posts and len(posts) < self.MAX_CONNECTED:
            self._entry(proc, n)

    def _entry(self, proc: int, n: int) -> Any:
        """The semaphore of slot ``n`` of ``proc`` (opened once), with its ``_posts`` entry cached when
        the mailbox can be opened; None if the waiter is gone."""
        key = (proc, n)
        sem = self._sems.get(key)
        if sem is None:
            try:
                sem = _SemLock._rebuild(0, 1, _SEM_MAX, sem_name(proc, n))
            except OSError:
                return None  # gone (see wake())
            sems = self._sems
            if len(sems) >= self.MAX_CONNECTED:
                sems.pop(next(iter(sems)), None)
            sems[key] = sem
        posts = self._posts
        if key not in posts:
            mbox = self._mboxes.get(proc)
            if mbox is None:
                mbox = self._open_mbox(proc)
            index = n & ~SEM_FLAG
            if mbox is not None and index < MBOX_SLOTS:
                if len(posts) >= self.MAX_CONNECTED:
                    posts.pop(next(iter(posts)), None)
                posts[key] = (mbox, index * MBOX_SLOT, sem.release, sem.handle)  # (the C release posts the handle)
        return sem

    def _post(self, proc: int, n: int, payload: bytes) -> None:
        """wake() for a semaphore slot not in the cache yet (or a REFRESH): open it, then deliver."""
        sem = self._entry(proc, n)
        if sem is None:
            return
        t = self._posts.get((proc, n)) if payload else None
        if t is not None:
            self._deliver(t, payload)
            return
        try:  # a REFRESH, or a grant whose mailbox cannot be opened (the waiter then reads the state)
            sem.release()
        except (OSError, ValueError):
            pass

    def _open_mbox(self, proc: int) -> mmap.mmap | None:
        try:
            fd = os.open(f"{proc_hex(proc)}.mbox", os.O_RDWR | O_NOFOLLOW | O_CLOEXEC,
                         dir_fd=self.addresser.procs_fd)
        except OSError:
            return None  # the waiter then finds its grant by reading the state
        try:
            if os.fstat(fd).st_size < MBOX_SLOTS * MBOX_SLOT:
                return None
            mbox = mmap.mmap(fd, MBOX_SLOTS * MBOX_SLOT)
        except OSError:
            return None
        finally:
            os.close(fd)
        boxes = self._mboxes
        if len(boxes) >= self.MAX_CONNECTED:
            boxes.pop(next(iter(boxes)), None)
        boxes[proc] = mbox
        return mbox

    def _defer(self, addr: str, payload: bytes) -> None:
        q = self._deferred
        if q is None:
            q = self._deferred = queue.SimpleQueue()
            threading.Thread(target=self._run, args=(q,), name="interlock-file-waker", daemon=True).start()
        q.put((addr, payload))

    @staticmethod
    def _run(q: queue.SimpleQueue[tuple[str, bytes]]) -> None:
        from ._watch import block_async_signals

        block_async_signals()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.settimeout(5.0)
        while True:
            addr, payload = q.get()
            try:
                s.sendto(payload, addr)
            except OSError:
                pass  # gone, or stuck for 5 s: it re-reads the state when it next wakes

    def after_fork_in_child(self) -> None:
        self._deferred = None  # the helper thread does not exist in the child
        conns, self._conns = self._conns, {}
        for c in conns.values():
            c.close()
        self._sems = {}
        self._mboxes = {}
        self._posts.clear()  # the same dict: channels hand it to the C release (FileChannel._posts)

    def close(self) -> None:
        for c in self._conns.values():
            c.close()
        self._conns = {}
